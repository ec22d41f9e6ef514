"""The one small filesystem interface that the catalog, loaders and jobs use.

Two implementations: :class:`~modelshard.fs.local.LocalFileSystem` and
:class:`~modelshard.fs.hdfs.HdfsFileSystem` (pydoop). ``tests/contract/`` runs one suite
against both. Paths are plain strings in the filesystem's own namespace (``/models/a``);
:func:`modelshard.fs.get_fs` turns a URI into a filesystem and a path.

Errors: a missing path raises :class:`~modelshard.errors.NotFoundError`, an exclusive create
of an existing path :class:`~modelshard.errors.AlreadyExistsError`, anything else the
storage refuses (permissions, full disk) :class:`~modelshard.errors.StorageError`; every
message names the path.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO


def read_fully(pread: Callable[[int, int], bytes], offset: int, length: int) -> bytes:
    """``length`` bytes from ``offset`` by repeated ``pread(position, n)``: one call may stop
    short (at an HDFS block boundary, or as the OS likes); fewer only at the end of file."""
    chunks, done = [], 0
    while done < length:
        chunk = pread(offset + done, length - done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def readinto_fully(readinto: Callable[[memoryview], int | None], view: memoryview) -> int:
    """Fill ``view`` by repeated ``readinto``, as one call may stop short (an HDFS read
    returns one 64 KiB packet); returns the bytes read, fewer only at the end of the file."""
    got = 0
    while got < len(view):
        n = readinto(view[got:])
        if not n:
            break
        got += n
    return got


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    is_dir: bool
    mtime: float  # seconds since the epoch
    replication: int = 1
    block_size: int = 0


@dataclass(frozen=True)
class BlockLocation:
    offset: int
    length: int
    hosts: tuple[str, ...]


class FileSystem(abc.ABC):
    """Filesystem operations modelshard needs, and no more.

    Writes are whole-file and not visible under their final name until they complete:
    callers write to a temporary name and :meth:`rename` it, or use :meth:`create_exclusive`.
    """

    scheme: str = ""

    # -- reading ---------------------------------------------------------------
    @abc.abstractmethod
    def open_read(self, path: str) -> BinaryIO:
        """A seekable binary stream of the file; close it (use ``with``)."""

    @abc.abstractmethod
    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes from ``offset``; fewer only at the end of the file."""

    def read_bytes(self, path: str) -> bytes:
        with self.open_read(path) as f:
            return f.read()

    # -- writing ---------------------------------------------------------------
    @abc.abstractmethod
    def open_write(
        self, path: str, *, replication: int | None = None, block_size: int | None = None
    ) -> BinaryIO:
        """A new file (replacing any file of that name); parent folders are created."""

    def write_bytes(self, path: str, data: bytes, **kwargs) -> None:
        with self.open_write(path, **kwargs) as f:
            f.write(data)

    @abc.abstractmethod
    def create_exclusive(self, path: str, data: bytes) -> None:
        """Create ``path`` holding ``data``, atomically failing with AlreadyExistsError if it
        exists: of two concurrent callers exactly one succeeds."""

    @abc.abstractmethod
    def touch(self, path: str) -> None:
        """Set the modification time of an existing file to now (this machine's clock, whole
        seconds at least); NotFoundError if it does not exist. Leases are kept alive so."""

    @abc.abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Atomically move ``src`` (file or folder) to ``dst``, which must not exist."""

    @abc.abstractmethod
    def mkdirs(self, path: str) -> None:
        """Create a folder and its parents; no error if it exists."""

    @abc.abstractmethod
    def delete(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file or folder; no error if it does not exist."""

    # -- metadata --------------------------------------------------------------
    @abc.abstractmethod
    def stat(self, path: str) -> FileInfo:
        """Raises NotFoundError if ``path`` does not exist."""

    @abc.abstractmethod
    def ls(self, path: str) -> list[FileInfo]:
        """Entries of a folder, sorted by path. Raises NotFoundError if it does not exist."""

    def exists(self, path: str) -> bool:
        from modelshard.errors import NotFoundError

        try:
            self.stat(path)
        except NotFoundError:
            return False
        return True

    def walk_files(self, path: str) -> Iterator[FileInfo]:
        """Every file below ``path``, depth first, sorted."""
        for info in self.ls(path):
            if info.is_dir:
                yield from self.walk_files(info.path)
            else:
                yield info

    # -- placement (meaningful on HDFS; trivial on a local disk) -----------------
    @abc.abstractmethod
    def set_replication(self, path: str, replication: int) -> None:
        """Ask for ``replication`` copies of a file's blocks."""

    @abc.abstractmethod
    def block_hosts(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> list[BlockLocation]:
        """The blocks covering ``[offset, offset + length)`` and the hosts holding each."""

    # -- checking a write without reading it back ------------------------------
    def stored_crc32c(self, path: str) -> int | None:
        """The CRC32C of the whole stored file as the storage computes it from what it
        keeps, without sending the file's bytes; None where the storage cannot."""
        return None

    def sync(self, path: str) -> bool:
        """Flush the written file to disk; True if that leaves the bytes just written on
        this machine's disk (nothing to gain by reading them back), False where the storage
        keeps its own copies and checksums."""
        return False

    def local_path(self, path: str) -> str | None:
        """A path on this machine's disk where the bytes can be memory-mapped, or None."""
        return None

    def uri(self, path: str) -> str:
        """The URI that :func:`modelshard.fs.get_fs` turns back into (self, path)."""
        return path
