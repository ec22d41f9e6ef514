"""Filesystems: one interface (:mod:`.base`), a local and an HDFS implementation.

>>> fs, path = get_fs("file:///tmp/catalog")
>>> path
'/tmp/catalog'
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from modelshard.errors import UsageError
from modelshard.fs.base import BlockLocation, FileInfo, FileSystem
from modelshard.fs.local import LocalFileSystem

__all__ = ["BlockLocation", "FileInfo", "FileSystem", "LocalFileSystem", "get_fs"]


def get_fs(uri: str) -> tuple[FileSystem, str]:
    """The filesystem for ``uri`` and the path inside it.

    ``/a/b``, ``a/b`` and ``file:///a/b`` are local; ``hdfs://host:port/a`` and ``hdfs:///a``
    (the configured default NameNode) are HDFS.
    """
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        return LocalFileSystem(), os.path.abspath(parts.path if parts.scheme else uri)
    if parts.scheme == "hdfs":
        from modelshard.fs.hdfs import HdfsFileSystem

        return HdfsFileSystem.for_netloc(parts.netloc), parts.path or "/"
    raise UsageError(
        f"{uri}: unknown filesystem scheme {parts.scheme!r}; use a local path, file:// or hdfs://"
    )
