"""The HDFS implementation of :class:`~modelshard.fs.base.FileSystem`, on pydoop.

pydoop wraps libhdfs, which runs the Hadoop Java client in a JVM inside this process: the
JVM options come from ``LIBHDFS_OPTS`` and the jars from ``$HADOOP_HOME/bin/hadoop classpath
--glob`` (run once, at the first use). Install pydoop with ``make pydoop``. Example::

    fs = HdfsFileSystem.for_netloc("")          # fs.defaultFS of the Hadoop configuration
    fs.write_bytes("/models/a/x.bin", b"0123456789", replication=2)
    assert fs.read_range("/models/a/x.bin", 4, 3) == b"456"
    fs.uri("/models/a/x.bin")                   # 'hdfs://127.0.0.1:9000/models/a/x.bin'

The Python error raised here names the path, says what happened (the Java exception behind
a failed call, which the patched libhdfs keeps instead of printing its stack trace: see
bin/pydoop-2.0.0.patch) and what to do. The HDFS client in this process logs nothing: its
log (a checksum error and a retry per replica, a stack trace, then an ERROR line, for one
damaged block) says on stderr what the error says in one line. ``LIBHDFS_OPTS="...
-Dhadoop.root.logger=INFO,console"`` and ``LIBHDFS_PRINT_EXCEPTIONS=1`` bring both back.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import posixpath
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO, ClassVar
from urllib.parse import urlsplit

from modelshard.errors import (
    AlreadyExistsError,
    ModelShardError,
    NotFoundError,
    StorageError,
    UnreadableError,
)
from modelshard.fs.base import BlockLocation, FileInfo, FileSystem, readinto_fully

_DEFAULT_PORT = 8020  # the NameNode RPC port when a URI names none, as in Hadoop
# The Java 17 flags that Hadoop's own launch scripts add, for the JVM that libhdfs starts
# inside this process (tasks on YARN get no hadoop-env.sh of the submitter's).
_JAVA17_OPENS = " ".join(f"--add-opens=java.base/{pkg}=ALL-UNNAMED" for pkg in (
    "java.lang", "java.lang.reflect", "java.io", "java.net", "java.nio", "java.util", "java.util.concurrent",
    "java.util.zip", "java.text", "java.math", "sun.nio.ch", "sun.net.util", "sun.security.util",
    "sun.security.x509"))


def hadoop_home() -> Path | None:
    """``$HADOOP_HOME``, else the install whose ``bin/hadoop`` is on ``PATH``, else None."""
    if home := os.environ.get("HADOOP_HOME"):
        return Path(home)
    if found := shutil.which("hadoop"):
        return Path(found).resolve().parent.parent
    return None


def hadoop_conf_dir() -> Path | None:
    """``$HADOOP_CONF_DIR``, else ``$HADOOP_HOME/etc/hadoop``, else ``/etc/hadoop/conf``."""
    if conf := os.environ.get("HADOOP_CONF_DIR"):
        return Path(conf)
    home = hadoop_home()
    for candidate in ([home / "etc" / "hadoop"] if home else []) + [Path("/etc/hadoop/conf")]:
        if candidate.is_dir():
            return candidate
    return None


def _pydoop_hdfs() -> ModuleType:
    """Import ``pydoop.hdfs`` with the Hadoop that :func:`hadoop_home` finds."""
    home = hadoop_home()
    if home is None:
        raise ModelShardError("HDFS needs a Hadoop install: set HADOOP_HOME (and HADOOP_CONF_DIR), or put "
                              "your Hadoop's bin/ on PATH")
    # pydoop finds `hadoop` through HADOOP_HOME (see bin/pydoop-2.0.0.patch).
    os.environ.setdefault("HADOOP_HOME", str(home))
    opts = os.environ.get("LIBHDFS_OPTS") or f"{_JAVA17_OPENS} -Xmx512m"
    if "-Dhadoop.root.logger=" not in opts:  # log4j.properties reads the level from it
        opts += " -Dhadoop.root.logger=OFF,console"
    os.environ["LIBHDFS_OPTS"] = opts
    os.environ.setdefault("LIBHDFS_PRINT_EXCEPTIONS", "0")  # errors carry the exception
    try:
        import pydoop.hdfs
    except ImportError as e:
        raise ModelShardError(
            f"HDFS needs pydoop, which this Python cannot import ({e}); build and install it "
            "with 'make pydoop' (bin/build-pydoop .venv/bin/python)"
        ) from e
    except (OSError, RuntimeError) as e:  # `hadoop classpath --glob` failed or is missing
        raise ModelShardError(
            f"pydoop could not get the Hadoop classpath from $HADOOP_HOME/bin/hadoop ({e}); "
            "run 'make hadoop' or set HADOOP_HOME to a Hadoop installation"
        ) from e
    return pydoop.hdfs


class HdfsFileSystem(FileSystem):
    """One HDFS namespace, through one cached libhdfs connection per NameNode.

    Prefer :meth:`for_netloc`; construct directly only for another ``user``::

        other = HdfsFileSystem("default", 0, user="alice")
    """

    scheme = "hdfs"
    _instances: ClassVar[dict[str, HdfsFileSystem]] = {}
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, host: str = "default", port: int = 0, *, user: str | None = None) -> None:
        hdfs = _pydoop_hdfs()
        where = "fs.defaultFS" if host == "default" else f"hdfs://{host}:{port}"
        try:
            self._handle = hdfs.hdfs(host, port, user=user)
        except (OSError, RuntimeError) as e:
            raise StorageError(
                f"{where}: cannot connect to HDFS ({e}); is the NameNode running "
                "(bin/modelshard-cluster start) and HADOOP_CONF_DIR right?"
            ) from e
        if not self._handle.host:
            raise StorageError(
                f"{where}: the Hadoop configuration names a local filesystem, not HDFS; "
                "set fs.defaultFS in core-site.xml or use an hdfs://host:port URI"
            )
        # The native handle: pydoop's wrapper around it adds RPCs (a stat per open) we avoid.
        # Threads share it freely: bin/pydoop-2.0.0.patch fixed pydoop's thread-unsafe
        # open_file (a crash under concurrent opens) and list_directory.
        self._fs: Any = self._handle.fs
        self.netloc = f"{self._handle.host}:{self._handle.port}"
        self.user: str = self._handle.user

    @classmethod
    def for_netloc(cls, netloc: str) -> HdfsFileSystem:
        """The shared filesystem for ``host:port``; ``''`` or ``'default'`` is fs.defaultFS.

        >>> HdfsFileSystem.for_netloc("") is HdfsFileSystem.for_netloc("127.0.0.1:9000")
        True
        """
        key = "" if netloc in ("", "default") else netloc
        with cls._instances_lock:
            fs = cls._instances.get(key)
            if fs is None:
                if key:
                    host, _, port = key.partition(":")
                    fs = cls(host, int(port) if port else _DEFAULT_PORT)
                else:
                    fs = cls()
                # '' and the NameNode's own host:port share one connection.
                fs = cls._instances.setdefault(fs.netloc, fs)
                cls._instances[key] = fs
            return fs

    def __repr__(self) -> str:
        return f"HdfsFileSystem({self.netloc!r}, user={self.user!r})"

    # -- errors ------------------------------------------------------------------
    def _error(self, path: str, action: str, e: Exception) -> ModelShardError:
        """The modelshard error for libhdfs's errno-style error ``e`` on ``path``."""
        where = self.uri(path)
        java = self._java_exception()  # taken whatever the error: none is left for the next
        if isinstance(e, FileNotFoundError):
            return NotFoundError(f"{where}: no such file or folder")
        if isinstance(e, FileExistsError):
            return AlreadyExistsError(f"{where}: already exists")
        if isinstance(e, PermissionError):
            return StorageError(
                f"{where}: permission denied to {action} for HDFS user {self.user!r}; "
                "check owner and mode with 'bin/hadoop fs -ls' and fix them with -chmod/-chown"
            )
        if isinstance(e, NotADirectoryError):
            return StorageError(f"{where}: a parent of this path is a file, not a folder")
        # libhdfs turns Java exceptions it has no errno for into 255; a pydoop built before
        # it kept them (bin/pydoop-2.0.0.patch) printed them instead.
        detail = java or ("the Java exception above on stderr says why" if _errno(e) == 255
                          else str(e))
        if action == "read" and self._namenode_answers(path):
            # HDFS checks every read against the CRC32C of each 512-byte chunk that the
            # DataNodes keep: a read that fails with the NameNode up found no good replica.
            block = m[0] if java and (m := re.search(r"blk_\d+(?:_\d+)?", java)) else "a block"
            what = (f"HDFS found no intact replica of {block} of this file: every replica it "
                    f"tried failed HDFS's own checksum or its DataNode is down ({detail})")
            return UnreadableError(
                f"{where}: {what}. 'hdfs fsck {where} -files -blocks -locations' lists the "
                "blocks and their replicas; HDFS re-replicates a block from any good replica "
                "left by itself; if none is left, push the model again or copy the version "
                "back from another catalog ('modelshard copy')", what)
        return StorageError(
            f"{where}: HDFS could not {action} ({detail}); if the NameNode is down, start it "
            "(bin/modelshard-cluster start)"
        )

    def _java_exception(self) -> str | None:
        """The Java exception behind this thread's latest failed libhdfs call (taking it
        clears it), or None with a pydoop built before the patch kept it."""
        take = getattr(self._fs, "take_last_exception", None)
        return take() if take else None

    def _namenode_answers(self, path: str) -> bool:
        try:
            self._fs.get_path_info(path)
        except (OSError, RuntimeError):
            return False
        return True

    @contextlib.contextmanager
    def _errors(self, path: str, action: str) -> Iterator[None]:
        try:
            yield
        except (OSError, RuntimeError) as e:
            raise self._error(path, action, e) from e

    def _file_info(self, path: str, action: str) -> FileInfo:
        info = self.stat(path)
        if info.is_dir:
            raise StorageError(f"{self.uri(path)}: is a folder; cannot {action} it, only its files")
        return info

    # -- reading -------------------------------------------------------------------
    def open_read(self, path: str) -> BinaryIO:
        self._file_info(path, "read")  # a clean NotFoundError: libhdfs's open would print a stack
        with self._errors(path, "open the file"):
            raw = self._fs.open_file(path, "r", 0, 0, 0)
        return io.BufferedReader(_RawFile(raw, path, self))  # type: ignore[return-value]

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        # The size bounds the read: libhdfs fails past the end rather than returning b"".
        out = bytearray(max(0, min(self._file_info(path, "read").size, offset + length) - offset))
        if not out:
            return b""
        with self._errors(path, "read"):
            raw = self._fs.open_file(path, "r", 0, 0, 0)
            try:
                # One seek, then sequential reads from one block reader: pydoop's pread seeks
                # back after every call, which made HDFS open a new DataNode connection per
                # 64 KiB packet (10x slower).
                raw.seek(offset)
                got = readinto_fully(raw.readinto, memoryview(out))
            finally:
                raw.close()
        return out if got == len(out) else out[:got]  # bytes-like, without a copy

    # -- writing -------------------------------------------------------------------
    def open_write(
        self, path: str, *, replication: int | None = None, block_size: int | None = None
    ) -> BinaryIO:
        try:
            raw = self._fs.open_file(path, "w", 0, replication or 0, block_size or 0)
        except FileExistsError as e:  # create() overwrites files, so this is a folder
            raise StorageError(f"{self.uri(path)}: is a folder; cannot write it as a file") from e
        except OSError as e:
            error = self._error(path, "create the file", e)
            if type(e) is OSError and (replication or block_size):  # no errno of its own
                raise StorageError(
                    f"{error}; check replication={replication} (at most dfs.replication.max) "
                    f"and block_size={block_size} (a multiple of 512, at least "
                    "dfs.namenode.fs-limits.min-block-size, 1 MiB by default)"
                ) from e
            raise error from e
        return io.BufferedWriter(_RawFile(raw, path, self))  # type: ignore[return-value]

    def create_exclusive(self, path: str, data: bytes) -> None:
        # libhdfs's create overwrites, but HDFS refuses to rename a file onto an existing
        # path: write a private temporary file, then rename it into place.
        if self.exists(path):
            raise AlreadyExistsError(f"{self.uri(path)}: already exists; pick another name")
        parent, name = posixpath.split(path)
        tmp = posixpath.join(parent, f".{name}.{uuid.uuid4().hex}.tmp")
        self.write_bytes(tmp, data)
        try:
            with self._errors(path, "rename a temporary file onto"):
                try:
                    self._fs.rename(tmp, path)
                except OSError as e:  # rename returned false: the usual cause is a winner
                    if self.exists(path):
                        raise FileExistsError(path) from e
                    raise
            # A folder created at `path` meanwhile would have swallowed the file.
            if self.stat(path).is_dir:
                self.delete(posixpath.join(path, posixpath.basename(tmp)))
                raise AlreadyExistsError(f"{self.uri(path)}: already exists as a folder")
        finally:
            self.delete(tmp)

    def touch(self, path: str) -> None:
        now = int(time.time())
        with self._errors(path, "set the modification time of"):
            self._fs.utime(path, now, now)

    def rename(self, src: str, dst: str) -> None:
        src_is_dir = self.stat(src).is_dir
        # HDFS would move a folder INSIDE an existing dst folder (and a file into one).
        # The check leaves a race with a concurrent creator of dst; for a file dst HDFS
        # itself refuses.
        if self.exists(dst):
            what = "folder" if src_is_dir else "file"
            raise AlreadyExistsError(
                f"{self.uri(dst)}: already exists; delete it first or rename the {what} "
                f"{src} elsewhere"
            )
        self.mkdirs(posixpath.dirname(dst) or "/")
        with self._errors(src, f"rename to {dst}"):
            try:
                self._fs.rename(src, dst)
            except OSError as e:  # rename returned false: find out which precondition broke
                if self.exists(dst):
                    raise AlreadyExistsError(f"{self.uri(dst)}: already exists") from e
                if not self.exists(src):
                    raise NotFoundError(f"{self.uri(src)}: no such file or folder") from e
                raise

    def mkdirs(self, path: str) -> None:
        with self._errors(path, "create the folder"):
            self._fs.create_directory(path)

    def delete(self, path: str, *, recursive: bool = False) -> None:
        try:
            info = self.stat(path)
        except NotFoundError:
            return
        with self._errors(path, "delete"):
            try:
                self._fs.delete(path, recursive)
            except OSError as e:
                if not self.exists(path):  # deleted meanwhile
                    return
                if info.is_dir and not recursive:
                    raise StorageError(
                        f"{self.uri(path)}: folder not empty; pass recursive=True to delete it "
                        "with its contents"
                    ) from e
                raise

    # -- metadata ------------------------------------------------------------------
    def stat(self, path: str) -> FileInfo:
        # Also the base class's exists(): libhdfs's hdfsExists says False on "permission denied".
        with self._errors(path, "stat"):
            return _info(path, self._fs.get_path_info(path))

    def ls(self, path: str) -> list[FileInfo]:
        # libhdfs lists a file as itself; the interface wants folders only.
        if not self.stat(path).is_dir:
            raise StorageError(f"{self.uri(path)}: is a file, not a folder; cannot list it")
        with self._errors(path, "list"):
            entries = self._fs.list_directory(path)
        infos = [
            _info(posixpath.join(path, posixpath.basename(urlsplit(e["name"]).path)), e)
            for e in entries
        ]
        return sorted(infos, key=lambda i: i.path)

    # -- placement -------------------------------------------------------------------
    def set_replication(self, path: str, replication: int) -> None:
        self._file_info(path, "set the replication of")
        with self._errors(path, f"set replication to {replication}"):
            self._fs.set_replication(path, replication)

    def block_hosts(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> list[BlockLocation]:
        """The blocks covering the range, with block-aligned offsets.

        >>> fs.block_hosts("/m/x.bin", 1 << 20, 10)        # doctest: +SKIP
        [BlockLocation(offset=1048576, length=1048576, hosts=('127.0.0.1',))]
        """
        info = self._file_info(path, "locate the blocks of")
        end = info.size if length is None else min(info.size, offset + length)
        if end <= offset:
            return []
        with self._errors(path, "locate blocks"):
            hosts = self._fs.get_hosts(path, offset, end - offset)
        # libhdfs gives hosts only, in block order; HDFS files have one block size (except
        # after append with NEW_BLOCK or concat, which modelshard does not use).
        bs, first = info.block_size, offset // info.block_size
        return [
            BlockLocation(offset=b * bs, length=min(bs, info.size - b * bs), hosts=tuple(h))
            for b, h in enumerate(hosts, start=first)
        ]

    def stored_crc32c(self, path: str) -> int | None:
        """HDFS's ``COMPOSITE_CRC`` file checksum: the CRC32C of the whole file, combined by
        the DataNodes from the CRC32C they keep of every chunk (one call, no file bytes
        sent). None with a pydoop built before bin/pydoop-2.0.0.patch had the call, or for a
        file whose chunks use another checksum type (dfs.checksum.type)."""
        call = getattr(self._fs, "get_file_crc32c", None)
        if call is None:
            return None
        try:
            return call(path)
        except OSError as e:
            if _errno(e) == errno.ENOTSUP:
                return None
            raise self._error(path, "get the checksum of", e) from e

    def uri(self, path: str) -> str:
        return f"hdfs://{self.netloc}{path}"


def _errno(e: Exception) -> int | None:
    # pydoop raises RuntimeError(errno, text) where it means OSError.
    if isinstance(e, OSError):
        return e.errno
    return e.args[0] if e.args and isinstance(e.args[0], int) else None


def _info(path: str, d: dict[str, Any]) -> FileInfo:
    return FileInfo(
        path=path,
        size=d["size"],
        is_dir=d["kind"] == "directory",
        mtime=float(d["last_mod"]),
        replication=d["replication"],
        block_size=d["block_size"],
    )


class _RawFile(io.RawIOBase):
    """A libhdfs file as a standard raw stream, so :mod:`io` buffers it and errors name the
    path. (pydoop's own file object lacks ``readall`` and ``read()`` without a size.)"""

    def __init__(self, raw: Any, path: str, fs: HdfsFileSystem) -> None:
        super().__init__()
        self._raw, self._path, self._fs = raw, path, fs
        self.name = path

    def readable(self) -> bool:
        return self._raw.mode == "r"

    def writable(self) -> bool:
        return self._raw.mode != "r"

    def seekable(self) -> bool:
        return self.readable()  # HDFS output streams cannot seek

    def readinto(self, buffer: Any) -> int:
        # Filled in one call: io.BufferedReader would call back once per 64 KiB packet.
        with self._fs._errors(self._path, "read"):
            return readinto_fully(self._raw.readinto, memoryview(buffer).cast("B"))

    def write(self, data: Any) -> int:
        # pydoop takes any contiguous buffer: no copy of a chunk on its way to the JVM.
        with self._fs._errors(self._path, "write"):
            return self._raw.write(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with self._fs._errors(self._path, "seek"):
            self._raw.seek(offset, whence)
            return self._raw.tell()

    def tell(self) -> int:
        with self._fs._errors(self._path, "tell"):
            return self._raw.tell()

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()
        finally:
            # Closing an output stream completes the file on the NameNode; failures show here.
            with self._fs._errors(self._path, "close (complete) the file"):
                self._raw.close()
