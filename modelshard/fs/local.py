"""The local-disk implementation of :class:`~modelshard.fs.base.FileSystem`."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from modelshard.errors import AlreadyExistsError, NotFoundError, StorageError
from modelshard.fs.base import BlockLocation, FileInfo, FileSystem, read_fully


@contextlib.contextmanager
def _os_errors(path: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError as e:
        raise NotFoundError(f"{path}: no such file or folder") from e
    except FileExistsError as e:
        raise AlreadyExistsError(f"{path}: already exists") from e
    except PermissionError as e:
        raise StorageError(
            f"{path}: permission denied; check the owner and mode of the folder"
        ) from e
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise StorageError(f"{path}: no space left on device; free disk space and retry") from e
        raise StorageError(f"{path}: {e.strerror or e}") from e


def _ignore_vanished(func: Callable[..., object], path: str, exc_info: tuple) -> None:
    """``shutil.rmtree``'s error hook: an entry a concurrent deleter removed first is fine."""
    if not issubclass(exc_info[0], FileNotFoundError):
        raise exc_info[1]


class _WriteFile(io.RawIOBase):
    """A file opened for writing whose write and close errors (a full disk shows at either)
    are modelshard errors naming the path."""

    def __init__(self, raw: io.FileIO, path: str) -> None:
        super().__init__()
        self._raw, self._path = raw, path
        self.name = path

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        with _os_errors(self._path):
            return self._raw.write(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()
        finally:
            with _os_errors(self._path):
                self._raw.close()


class LocalFileSystem(FileSystem):
    """A folder tree on this machine. Example::

        fs = LocalFileSystem()
        fs.write_bytes("/tmp/a/b.bin", b"xyz")
        assert fs.read_range("/tmp/a/b.bin", 1, 2) == b"yz"
    """

    scheme = "file"

    def open_read(self, path: str) -> BinaryIO:
        with _os_errors(path):
            if os.path.isdir(path):
                raise IsADirectoryError(errno.EISDIR, "is a folder", path)
            return open(path, "rb")

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        with _os_errors(path):
            fd = os.open(path, os.O_RDONLY)
            try:
                return read_fully(lambda pos, n: os.pread(fd, n, pos), offset, length)
            finally:
                os.close(fd)

    def open_write(
        self, path: str, *, replication: int | None = None, block_size: int | None = None
    ) -> BinaryIO:
        with _os_errors(path):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            raw = io.FileIO(path, "wb")
        return io.BufferedWriter(_WriteFile(raw, path))  # type: ignore[return-value]

    def create_exclusive(self, path: str, data: bytes) -> None:
        # Write a private file, then link(2) it into place: the link fails if `path` exists,
        # and a reader never sees `path` empty or half written (as with HDFS's rename).
        parent, name = os.path.split(path)
        tmp = os.path.join(parent, f".{name}.{uuid.uuid4().hex}.tmp")
        with _os_errors(path):
            os.makedirs(parent or ".", exist_ok=True)
            try:
                with open(tmp, "xb") as f:
                    f.write(data)
                os.link(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def touch(self, path: str) -> None:
        with _os_errors(path):
            os.utime(path)

    def rename(self, src: str, dst: str) -> None:
        if os.path.lexists(dst):
            raise AlreadyExistsError(f"{dst}: already exists; delete it first or pick another name")
        with _os_errors(src):
            os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
            # rename(2) would silently replace an empty folder or a file that appeared since.
            os.rename(src, dst)

    def mkdirs(self, path: str) -> None:
        with _os_errors(path):
            os.makedirs(path, exist_ok=True)

    def delete(self, path: str, *, recursive: bool = False) -> None:
        # A concurrent caller may delete the same path (or part of the tree) first: what
        # is already gone counts as deleted, as on HDFS.
        with contextlib.suppress(NotFoundError), _os_errors(path):
            if os.path.isdir(path) and not os.path.islink(path):
                if recursive:
                    shutil.rmtree(path, onerror=_ignore_vanished)
                else:
                    os.rmdir(path)
            elif os.path.lexists(path):
                os.unlink(path)

    def stat(self, path: str) -> FileInfo:
        with _os_errors(path):
            st = os.stat(path)
        is_dir = os.path.isdir(path)
        size = 0 if is_dir else st.st_size
        return FileInfo(path=path, size=size, is_dir=is_dir, mtime=st.st_mtime)

    def ls(self, path: str) -> list[FileInfo]:
        with _os_errors(path):
            names = sorted(os.listdir(path))
        infos = []
        for name in names:
            # An entry deleted between listing and stat is skipped: the listing is as of
            # some moment, as HDFS's one-RPC listing is.
            with contextlib.suppress(NotFoundError):
                infos.append(self.stat(os.path.join(path, name)))
        return infos

    def _file_size(self, path: str, action: str) -> int:
        info = self.stat(path)
        if info.is_dir:  # as on HDFS, which only places files
            raise StorageError(f"{path}: is a folder; cannot {action} it, only its files")
        return info.size

    def set_replication(self, path: str, replication: int) -> None:
        # A local disk keeps one copy; only check that the file exists.
        self._file_size(path, "set the replication of")

    def block_hosts(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> list[BlockLocation]:
        size = self._file_size(path, "locate the blocks of")
        end = size if length is None else min(size, offset + length)
        return [BlockLocation(offset=offset, length=max(0, end - offset), hosts=("localhost",))]

    def sync(self, path: str) -> bool:
        with _os_errors(path):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)  # flushes the file's dirty pages, whoever wrote them
            finally:
                os.close(fd)
        return True

    def local_path(self, path: str) -> str | None:
        return path

    def uri(self, path: str) -> str:
        return "file://" + path
