"""A node-local, content-addressed, size-bounded disk cache of shards.

Remote shards (HDFS, or any :class:`~modelshard.fs.base.FileSystem`) are copied once to the
local disk and found again by their sha256::

    <cache_dir>/sha256/ab/abcdef…      verified entries, named by their checksum
    <cache_dir>/tmp/<hex>.<pid>.<n>    fetches in flight (their size counts against the budget)
    <cache_dir>/locks/ab/<hex>.lock    one lock per entry, and ``evict.lock`` for eviction

Guarantees:

* an entry is visible only once its bytes match the manifest (temp file, fsync, rename);
* every later use checks the entry again (its CRC32C chunks, or its sha256 for a manifest
  without them; :mod:`modelshard.verified`) in the very memory map that serves it, so bytes
  damaged on disk are dropped and fetched again, never served, and each byte is read once;
* the bytes on disk (entries plus fetches in flight) never exceed ``max_bytes``: room is made
  by evicting the least recently used entries (the entry's mtime is its last use);
* several processes on one node can share one cache folder (file locks via ``filelock``).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import mmap
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from filelock import FileLock, Timeout

from modelshard.errors import IntegrityError, StorageError, UsageError
from modelshard.fs.base import FileSystem
from modelshard.shards.checksums import Checksums
from modelshard.verified import StreamCheck, read_stream

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"[0-9a-f]{64}")
# One count per process, not per PreloadCache: several instances over one folder in one
# process (the server opens one per model it builds) must never pick the same temp name; two
# that probed the folder as "probe.<pid>.0" at once removed each other's probe, and the second
# to remove it failed as if the folder could not be written.
_NAMES = itertools.count()
_TMP_NAME = re.compile(r"(?P<hex>[0-9a-f]{64})\.(?P<pid>\d+)\.\d+\.part")
_DEFAULT_CHUNK = 8 << 20


@dataclass(frozen=True)
class ShardRef:
    """The minimal description of one stored shard: where it is, its size and checksums,
    and the model version it belongs to (``name@version``, for error messages).

    Hashable (by path, size and sha256), so it also serves as a key for
    :class:`~modelshard.scheduler.ShardScheduler`.

    >>> ShardRef(path="/models/m/v1/shard-00001.safetensors", size=3, sha256="ab" * 32).size
    3
    """

    path: str
    size: int
    sha256: str
    checksums: Checksums | None = field(default=None, compare=False)
    model: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class CacheStats:
    """Counters of this process (hits … corrupt_dropped) and the folder's current content."""

    entries: int
    bytes_used: int  # entries plus fetches in flight, all processes
    max_bytes: int
    hits: int
    misses: int
    bytes_fetched: int
    evictions: int
    bytes_evicted: int
    corrupt_dropped: int


def _check_digest(sha256: str) -> str:
    digest = sha256.lower()
    if not _HEX64.fullmatch(digest):
        raise UsageError(
            f"{sha256!r}: not a sha256 digest; pass the 64 hex digits from the manifest"
        )
    return digest


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _map_entry(entry: str) -> Any:
    """A private copy-on-write map of the file ``entry`` (``b""`` if it is empty: nothing
    to map); FileNotFoundError if there is none."""
    try:
        with open(entry, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return b""
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise StorageError(f"{entry}: cannot read the cache entry ({e})") from e


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PreloadCache:
    """A shard cache on this node's disk, bounded to ``max_bytes``.

    Example::

        cache = PreloadCache("/var/cache/modelshard", max_bytes=50 << 30)
        fs, path = get_fs("hdfs:///models/m/v1/shard-00001.safetensors")
        local = cache.get(fs, path, sha256=digest, size=size)   # fetched once, then local
        header = cache.map(fs, path, sha256=digest, size=size)[:8]  # valid after eviction

    ``get`` returns a path: another process may evict it later, so open it promptly, or use
    :meth:`map` / :meth:`read`, whose results stay valid (a memory map survives eviction).
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str],
        *,
        max_bytes: int,
        chunk_bytes: int = _DEFAULT_CHUNK,
        lock_timeout_s: float = 600.0,
    ) -> None:
        if max_bytes <= 0:
            raise UsageError(f"max_bytes={max_bytes}: the cache budget must be positive")
        if chunk_bytes <= 0:
            raise UsageError(f"chunk_bytes={chunk_bytes}: the fetch chunk size must be positive")
        self.dir = os.path.abspath(os.fspath(cache_dir))
        self.max_bytes = max_bytes
        self.chunk_bytes = chunk_bytes
        self.lock_timeout_s = lock_timeout_s
        self._entries = os.path.join(self.dir, "sha256")
        self._tmp = os.path.join(self.dir, "tmp")
        self._locks = os.path.join(self.dir, "locks")
        self._stats_lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("hits", "misses", "bytes_fetched", "evictions", "bytes_evicted", "corrupt_dropped"), 0
        )
        self._prepare_dir()

    # -- public API --------------------------------------------------------------
    def get(self, fs: FileSystem, path: str, *, sha256: str, size: int,
            checksums: Checksums | None = None, model: str | None = None) -> str:
        """The local path of the verified copy of ``path``, fetching it if needed; checked by
        ``checksums`` (the manifest's CRC32C chunks) if given, else by ``sha256``; ``model``
        (``name@version``) is named in errors. Example::

            local = cache.get(fs, "/models/m/v1/shard-00001.safetensors", sha256=d, size=n)
        """
        self._map_verified(fs, ShardRef(path, size, _check_digest(sha256), checksums, model))
        return self.entry_path(sha256)

    def map(self, fs: FileSystem, path: str, *, sha256: str, size: int,
            checksums: Checksums | None = None, model: str | None = None) -> Any:
        """The verified copy of ``path`` as a private copy-on-write memory map (writes never
        reach the entry; ``b""`` for an empty file); options as for :meth:`get`. A hit is
        checked in these very pages, so what is served is what was checked, read once; the
        map stays valid if another process evicts the entry meanwhile::

            m = cache.map(fs, path, sha256=digest, size=size)
            header_len = int.from_bytes(m[:8], "little")
        """
        return self._map_verified(fs, ShardRef(path, size, _check_digest(sha256), checksums,
                                               model))

    def read(self, fs: FileSystem, path: str, *, sha256: str, size: int,
             checksums: Checksums | None = None, model: str | None = None) -> bytes:
        """The verified bytes of ``path`` (through the cache; options as for :meth:`get`)."""
        m = self.map(fs, path, sha256=sha256, size=size, checksums=checksums, model=model)
        try:
            return bytes(m)
        finally:
            if isinstance(m, mmap.mmap):
                m.close()

    def lookup(self, ref: ShardRef) -> Any:
        """The entry of ``ref`` mapped and checked as :meth:`map` does, or None if there is
        none (a damaged one is deleted, never served); nothing is fetched. For bytes that
        are not a file anywhere (:meth:`put`)."""
        return self._mapped(ref)

    def put(self, data: Any, ref: ShardRef) -> None:
        """Keep ``data`` (a buffer) as the entry of ``ref`` unless there is one, checked as
        written against ``ref.checksums``: bytes derived from checked shards that cost less
        to map again than to derive (a tensor split across shards, joined:
        :mod:`modelshard.serve.layout`), found again with :meth:`lookup`::

            cache.put(joined, ShardRef("bert@3:tensor:w", len(joined), digest, checksums))
        """
        view = memoryview(data).cast("B")

        def fill(sink: Callable[[memoryview], None]) -> None:
            check = StreamCheck(ref, model=ref.model, uri=f"{ref.path} (in memory)")
            for pos in range(0, len(view), self.chunk_bytes):
                check.update(view[pos:pos + self.chunk_bytes])
                sink(view[pos:pos + self.chunk_bytes])
            check.finish()

        entry = self.entry_path(_check_digest(ref.sha256))
        with self._entry_lock(ref.sha256):
            if not os.path.isfile(entry):  # one there is checked at its next use
                self._write_entry(ref, entry, fill)

    def contains(self, sha256: str) -> bool:
        """Whether an entry exists (not re-verified; :meth:`get` verifies on use)."""
        return os.path.isfile(self.entry_path(sha256))

    def entry_path(self, sha256: str) -> str:
        digest = _check_digest(sha256)
        return os.path.join(self._entries, digest[:2], digest)

    def evict_to(self, target_bytes: int) -> int:
        """Evict least recently used entries until at most ``target_bytes`` are used.

        Entries another process is using are skipped. Returns the bytes freed.
        """
        if target_bytes < 0:
            raise UsageError(f"target_bytes={target_bytes}: must be zero or more")
        with self._evict_lock():
            return self._evict_locked(target_bytes)

    def stats(self) -> CacheStats:
        entries = list(self._scan_entries())
        with self._stats_lock:
            counts = dict(self._counts)
        return CacheStats(
            entries=len(entries),
            bytes_used=sum(size for _, size, _ in entries) + self._inflight_bytes(),
            max_bytes=self.max_bytes,
            **counts,
        )

    # -- fetching and verifying ------------------------------------------------------
    def _map_verified(self, fs: FileSystem, ref: ShardRef) -> Any:
        path, size = ref.path, ref.size
        if size < 0:
            raise UsageError(f"{path}: size={size}; pass the shard size from the manifest")
        if size > self.max_bytes:
            raise UsageError(
                f"{path}: shard of {size} bytes is larger than the cache budget "
                f"max_bytes={self.max_bytes}; raise the cache budget"
            )
        return self._mapped(ref, make=lambda entry: self._fetch(fs, ref, entry))

    def _mapped(self, ref: ShardRef, *, make: Callable[[str], None] | None = None) -> Any:
        """The entry of ``ref`` mapped and checked; if there is none (or it is damaged), made
        by ``make(entry)``, or None without ``make``."""
        entry = self.entry_path(ref.sha256)
        # A hit takes no lock: an entry is never changed in place (it is written aside and
        # renamed in) and a map stays valid if the entry is evicted meanwhile. A miss, or an
        # entry that fails its check, is handled under the entry's lock.
        mapped = self._map_if_intact(entry, ref, drop_damaged=False)
        if mapped is None and (make is not None or os.path.isfile(entry)):
            with self._entry_lock(ref.sha256):
                mapped = self._map_if_intact(entry, ref)
                if mapped is None and make is not None:
                    self._count(misses=1)
                    make(entry)
                    # Not checked again: the entry holds the bytes checked on their way in.
                    return _map_entry(entry)
        self._count(**({"hits": 1} if mapped is not None else {"misses": 1}))
        return mapped

    def _map_if_intact(self, entry: str, ref: ShardRef, *, drop_damaged: bool = True) -> Any:
        """The entry mapped, if its bytes still match ``ref`` (checked in the map itself);
        None if there is none or it is damaged (then deleted, if ``drop_damaged``: only under
        the entry's lock, lest a good entry fetched meanwhile be deleted)."""
        try:
            mapped = _map_entry(entry)
        except FileNotFoundError:
            return None
        check = StreamCheck(ref, model=ref.model, uri=entry)
        with memoryview(mapped) as view:
            for pos in range(0, len(view), self.chunk_bytes):
                check.update(view[pos:pos + self.chunk_bytes])
        try:
            check.finish()
            self._touch(entry)
            return mapped
        except IntegrityError:
            pass
        if isinstance(mapped, mmap.mmap):
            mapped.close()
        if not drop_damaged:
            return None
        log.warning("%s: cache entry of %s damaged (checksum mismatch); fetching it again",
                    entry, ref.path)
        self._count(corrupt_dropped=1)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry)
        return None

    def _fetch(self, fs: FileSystem, ref: ShardRef, entry: str) -> None:
        self._write_entry(ref, entry, lambda sink: read_stream(
            fs, ref.path, ref, model=ref.model, sink=sink, chunk_bytes=self.chunk_bytes))
        self._count(bytes_fetched=ref.size)

    def _write_entry(self, ref: ShardRef, entry: str,
                     fill: Callable[[Callable[[memoryview], None]], None]) -> None:
        """Make ``entry``: ``fill(sink)`` gives ``sink`` its bytes, checked (it raises if they
        are not ``ref``'s), into a temp file made room for under the budget, renamed in."""
        path, size = ref.path, ref.size
        tmp = self._reserve(ref.sha256, size)
        try:
            with open(tmp, "r+b") as out:
                written = 0

                def sink(chunk: memoryview) -> None:
                    nonlocal written
                    written += len(chunk)
                    if written <= size:  # a longer file fails the check: never past the budget
                        _write_all(out.fileno(), chunk)

                fill(sink)
                # Checked are the bytes just written; fsync before the rename so that a
                # crash cannot leave a visible entry whose bytes never reached the disk.
                os.fsync(out.fileno())
            os.makedirs(os.path.dirname(entry), exist_ok=True)
            os.rename(tmp, entry)
            self._fsync_dir(os.path.dirname(entry))
        except OSError as e:
            self._discard(tmp)
            if e.errno == errno.ENOSPC:
                raise StorageError(
                    f"{self.dir}: disk full while caching {path}; free space there, lower the "
                    "cache budget, or pass another folder with --cache-dir"
                ) from e
            raise StorageError(f"{self.dir}: cannot cache {path} ({e.strerror or e})") from e
        except BaseException:
            self._discard(tmp)
            raise

    def _reserve(self, digest: str, size: int) -> str:
        """A temp file of ``size`` bytes in the cache, made room for under the budget.

        The temp file is sized before the eviction lock is released, so every process counts
        it as used: the budget holds for fetches in flight too.
        """
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            with self._evict_lock():
                self._evict_locked(self.max_bytes - size)
                if self._used_bytes() + size <= self.max_bytes:
                    tmp = os.path.join(
                        self._tmp, f"{digest}.{os.getpid()}.{next(_NAMES)}.part"
                    )
                    try:
                        with open(tmp, "wb") as f:
                            self._preallocate(f.fileno(), size)
                    except OSError as e:
                        self._discard(tmp)
                        if e.errno == errno.ENOSPC:
                            raise StorageError(
                                f"{self.dir}: no space for a {size}-byte shard; free disk space, "
                                "lower the cache budget, or pass another folder with --cache-dir"
                            ) from e
                        raise StorageError(f"{self.dir}: cannot write ({e.strerror or e})") from e
                    return tmp
            # Everything left is in use or being fetched by other processes: wait for them.
            if time.monotonic() > deadline:
                raise StorageError(
                    f"{self.dir}: no room for a {size}-byte shard within max_bytes="
                    f"{self.max_bytes}, all entries are in use; raise the cache budget"
                )
            time.sleep(0.05)

    @staticmethod
    def _preallocate(fd: int, size: int) -> None:
        # ftruncate makes the reservation visible (st_size); fallocate also claims the blocks,
        # so a full disk fails here instead of half way through the fetch.
        os.ftruncate(fd, size)
        if size and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise

    # -- eviction ----------------------------------------------------------------------
    def _evict_locked(self, target_bytes: int) -> int:
        self._clean_stale_tmp()
        entries = sorted(self._scan_entries(), key=lambda e: e[2])  # oldest use first
        used = sum(size for _, size, _ in entries) + self._inflight_bytes()
        freed = 0
        for digest, size, _ in entries:
            if used <= target_bytes:
                break
            lock = self._lock_for(digest)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # being read or fetched right now
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self._entries, digest[:2], digest))
                    used -= size
                    freed += size
                    self._count(evictions=1, bytes_evicted=size)
            finally:
                lock.release()
        return freed

    def _scan_entries(self) -> Iterator[tuple[str, int, float]]:
        """(digest, size, last use) of every entry."""
        try:
            subdirs = list(os.scandir(self._entries))
        except FileNotFoundError:
            return
        for sub in subdirs:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for e in os.scandir(sub.path):
                    with contextlib.suppress(FileNotFoundError):
                        st = e.stat()
                        if _HEX64.fullmatch(e.name):
                            yield e.name, st.st_size, st.st_mtime

    def _inflight_bytes(self) -> int:
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for e in os.scandir(self._tmp):
                with contextlib.suppress(FileNotFoundError):
                    total += e.stat().st_size
        return total

    def _used_bytes(self) -> int:
        return sum(size for _, size, _ in self._scan_entries()) + self._inflight_bytes()

    def _clean_stale_tmp(self) -> None:
        """Remove temp files left by processes that died mid-fetch (they would hold budget)."""
        with contextlib.suppress(FileNotFoundError):
            for e in os.scandir(self._tmp):
                m = _TMP_NAME.fullmatch(e.name)
                if m and not _pid_alive(int(m["pid"])):
                    self._discard(e.path)

    # -- locks and small helpers ---------------------------------------------------------
    def _lock_for(self, digest: str) -> FileLock:
        # Lock files are never deleted: unlinking a lock file another process waits on would
        # let two processes hold "the" lock. They are empty, one per shard ever cached.
        folder = os.path.join(self._locks, digest[:2])
        os.makedirs(folder, exist_ok=True)
        return FileLock(os.path.join(folder, digest + ".lock"))

    @contextlib.contextmanager
    def _entry_lock(self, digest: str) -> Iterator[None]:
        with self._acquired(self._lock_for(digest), f"entry {digest}"):
            yield

    @contextlib.contextmanager
    def _evict_lock(self) -> Iterator[None]:
        with self._acquired(FileLock(os.path.join(self._locks, "evict.lock")), "eviction"):
            yield

    @contextlib.contextmanager
    def _acquired(self, lock: FileLock, what: str) -> Iterator[None]:
        try:
            lock.acquire(timeout=self.lock_timeout_s)
        except Timeout as e:
            raise StorageError(
                f"{self.dir}: waited {self.lock_timeout_s:.0f} s for the {what} lock; another "
                "process holds it (a stuck fetch?); check the processes using this cache folder"
            ) from e
        try:
            yield
        finally:
            lock.release()

    def _prepare_dir(self) -> None:
        probe = os.path.join(self._tmp, f"probe.{os.getpid()}.{next(_NAMES)}")
        try:
            for folder in (self._entries, self._tmp, self._locks):
                os.makedirs(folder, exist_ok=True)
            with open(probe, "wb"):
                pass
            os.unlink(probe)
        except OSError as e:
            raise StorageError(
                f"{self.dir}: the preload cache folder cannot be written ({e.strerror or e}); "
                "pass a writable folder with --cache-dir or fix the folder's permissions"
            ) from e

    @staticmethod
    def _touch(entry: str) -> None:
        # The mtime is the entry's last use (atime is unreliable under noatime/relatime). An
        # explicit time: the kernel's own file timestamps are only jiffy-precise.
        now = time.time_ns()
        with contextlib.suppress(FileNotFoundError):
            os.utime(entry, ns=(now, now))

    @staticmethod
    def _discard(path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    @staticmethod
    def _fsync_dir(folder: str) -> None:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for k, v in deltas.items():
                self._counts[k] += v
