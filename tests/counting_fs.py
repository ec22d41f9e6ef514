"""A FileSystem wrapper that counts the bytes read through it, for tests and benchmarks that
prove a loader reads only what it needs (unit: around a local disk; integration: HDFS)."""

from __future__ import annotations

import threading
from typing import Any, BinaryIO

from modelshard.fs.base import BlockLocation, FileInfo, FileSystem


class CountingFileSystem(FileSystem):
    """Forwards every call to ``inner`` and counts ``bytes_read`` (range reads and streams)
    and ``range_reads``. ``mappable=False`` hides local paths, so a local catalog is read by
    range like a remote one::

        fs = CountingFileSystem(LocalFileSystem(), mappable=False)
    """

    def __init__(self, inner: FileSystem, *, mappable: bool = True) -> None:
        self.inner, self.mappable = inner, mappable
        self.scheme = inner.scheme
        self.bytes_read = self.range_reads = 0
        self._lock = threading.Lock()

    def _add(self, n: int, *, ranges: int = 0) -> None:
        with self._lock:
            self.bytes_read += n
            self.range_reads += ranges

    def reset(self) -> None:
        with self._lock:
            self.bytes_read = self.range_reads = 0

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        data = self.inner.read_range(path, offset, length)
        self._add(len(data), ranges=1)
        return data

    def open_read(self, path: str) -> BinaryIO:
        f, outer = self.inner.open_read(path), self

        class Counted:
            def read(self, n: int = -1) -> bytes:
                chunk = f.read(n)
                outer._add(len(chunk))
                return chunk

            def readinto(self, buffer: Any) -> int:
                n = f.readinto(buffer)
                outer._add(n)
                return n

            def __getattr__(self, name: str) -> Any:
                return getattr(f, name)

            def __enter__(self) -> Counted:
                return self

            def __exit__(self, *exc: object) -> None:
                f.close()

        return Counted()  # type: ignore[return-value]

    def open_write(self, path: str, **kw: Any) -> BinaryIO:
        return self.inner.open_write(path, **kw)

    def touch(self, path: str) -> None:
        self.inner.touch(path)

    def create_exclusive(self, path: str, data: bytes) -> None:
        self.inner.create_exclusive(path, data)

    def rename(self, src: str, dst: str) -> None:
        self.inner.rename(src, dst)

    def mkdirs(self, path: str) -> None:
        self.inner.mkdirs(path)

    def delete(self, path: str, *, recursive: bool = False) -> None:
        self.inner.delete(path, recursive=recursive)

    def stat(self, path: str) -> FileInfo:
        return self.inner.stat(path)

    def ls(self, path: str) -> list[FileInfo]:
        return self.inner.ls(path)

    def set_replication(self, path: str, replication: int) -> None:
        self.inner.set_replication(path, replication)

    def block_hosts(self, path: str, offset: int = 0, length: int | None = None
                    ) -> list[BlockLocation]:
        return self.inner.block_hosts(path, offset, length)

    def stored_crc32c(self, path: str) -> int | None:
        return self.inner.stored_crc32c(path)

    def sync(self, path: str) -> bool:
        return self.inner.sync(path)

    def local_path(self, path: str) -> str | None:
        return self.inner.local_path(path) if self.mappable else None

    def uri(self, path: str) -> str:
        return self.inner.uri(path)
