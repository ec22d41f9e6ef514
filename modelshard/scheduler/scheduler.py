"""Shards in memory under a hard byte budget, shared by many reader threads.

The one invariant: the bytes of the shards held (resident, or being fetched) never exceed
``budget_bytes``. Room is reserved *before* a fetch starts, so a fetch in flight counts too;
a reader that finds the budget full of shards in use (or pinned) waits until one is released.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

from modelshard.cache.preload import PreloadCache, ShardRef
from modelshard.errors import IntegrityError, NotFoundError, UsageError
from modelshard.fs.base import FileSystem
from modelshard.fs.locality import replica_is_local
from modelshard.scheduler.policies import EvictionPolicy, make_policy
from modelshard.verified import fresh_pages, read_stream

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Fetched:
    """What a fetcher may return instead of a bare buffer, to say where the bytes came from.

    ``data`` is anything with the buffer protocol (bytes, bytearray, a contiguous numpy
    array); ``local`` is True for a read from this node's disk (preload cache, local HDFS
    replica), False for a read over the network, None if unknown.
    """

    data: Any
    local: bool | None = None


@dataclass(frozen=True)
class SchedulerStats:
    """Counters since construction, and the bytes held now."""

    budget_bytes: int
    bytes_held: int  # resident plus being fetched
    peak_bytes_held: int
    pinned_bytes: int
    resident: int
    hits: int
    misses: int  # fetches for a reader (demand)
    waits: int  # readers that waited for another thread's fetch of the same shard
    room_waits: int  # readers that waited for room (the budget full of shards in use)
    bytes_fetched: int  # demand and prefetch
    evictions: int
    bytes_evicted: int
    prefetches: int  # prefetch fetches started
    prefetch_hits: int  # prefetched shards later used
    prefetch_skipped: int  # prefetches dropped for lack of idle room
    idle_releases: int
    local_reads: int
    remote_reads: int


class _Entry:
    __slots__ = ("size", "data", "ready", "refs", "pins", "last_used", "prefetched")

    def __init__(self, size: int, *, prefetched: bool) -> None:
        self.size = size
        self.data: Any = None
        self.ready = False
        self.refs = 0
        self.pins = 0
        self.last_used = time.monotonic()
        self.prefetched = prefetched


class _Lease(Generic[K]):
    """``with scheduler.acquire(key) as buf``: the shard stays in memory until the block ends."""

    def __init__(self, scheduler: ShardScheduler[K], key: K) -> None:
        self._scheduler = scheduler
        self._key = key
        self._data: Any = None

    def __enter__(self) -> Any:
        self._data = self._scheduler._acquire(self._key)
        return self._data

    def __exit__(self, *exc: object) -> None:
        # Drop our reference first, so that an eviction right after the release frees memory.
        self._data = None
        self._scheduler._release(self._key)


class ShardScheduler(Generic[K]):
    """Holds shards in memory within ``budget_bytes``; fetches on demand and ahead of use.

    Example::

        sizes = {r: r.size for r in refs}
        with ShardScheduler(lambda r: fs.read_bytes(r.path), sizes, budget_bytes=8 << 30,
                            policy="gdsf", prefetch_order=refs) as sched:
            with sched.acquire(refs[0]) as buf:      # fetched, kept while the block runs
                tensors = safetensors.numpy.load(bytes(buf))
            sched.pin(refs[1])                        # never evicted until unpinned

    Options (keyword-only):

    * ``policy``: ``"gdsf"`` (cost-aware, default), ``"lru"``, or an :class:`EvictionPolicy`;
    * ``latency_s``, ``bandwidth_bytes_per_s``: the fetch cost model, ``latency + size / bw``;
    * ``prefetch_order``, ``prefetch_depth``: after a shard is acquired, fetch the next
      ``prefetch_depth`` shards of this order in a background thread, using idle room only;
    * ``idle_timeout_s``: free shards unused for that long (checked in the background);
    * ``wait_timeout_s``: how long a reader waits for room before a UsageError.

    ``fetch(key)`` is called from several threads at once (never twice at once for one key);
    it returns a buffer of exactly ``sizes[key]`` bytes, or a :class:`Fetched`.

    Call :meth:`close` (or use ``with``) when done: the background thread, started by the
    first prefetch or by ``idle_timeout_s``, keeps the scheduler alive until then.
    """

    def __init__(
        self,
        fetch: Callable[[K], Any],
        sizes: Mapping[K, int],
        *,
        budget_bytes: int,
        policy: str | EvictionPolicy = "gdsf",
        latency_s: float = 0.01,
        bandwidth_bytes_per_s: float = 200e6,
        prefetch_order: Sequence[K] | None = None,
        prefetch_depth: int = 1,
        idle_timeout_s: float | None = None,
        wait_timeout_s: float | None = 600.0,
    ) -> None:
        if budget_bytes <= 0:
            raise UsageError(f"budget_bytes={budget_bytes}: the memory budget must be positive")
        _check_sizes(sizes, budget_bytes)
        if latency_s < 0 or bandwidth_bytes_per_s <= 0:
            raise UsageError("latency_s must be >= 0 and bandwidth_bytes_per_s > 0")
        if prefetch_depth < 0:
            raise UsageError(f"prefetch_depth={prefetch_depth}: must be zero or more")
        if idle_timeout_s is not None and idle_timeout_s <= 0:
            raise UsageError(f"idle_timeout_s={idle_timeout_s}: must be positive, or None")
        self._fetch = fetch
        self._sizes = dict(sizes)
        self.budget_bytes = budget_bytes
        self.policy = make_policy(policy)
        self.latency_s = latency_s
        self.bandwidth_bytes_per_s = bandwidth_bytes_per_s
        self._order = list(prefetch_order or ())
        unknown = [k for k in self._order if k not in self._sizes]
        if unknown:
            raise UsageError(f"prefetch_order names {unknown[0]!r}, which has no size in sizes")
        self._position = {k: i for i, k in enumerate(self._order)}
        self.prefetch_depth = prefetch_depth
        self.idle_timeout_s = idle_timeout_s
        self.wait_timeout_s = wait_timeout_s

        self._cond = threading.Condition()
        self._entries: dict[K, _Entry] = {}
        self._held = 0
        self._pinned = 0
        self._queue: deque[K] = deque()
        self._closed = False
        self._thread: threading.Thread | None = None
        gauges = ("budget_bytes", "bytes_held", "pinned_bytes", "resident")
        self._n = {f.name: 0 for f in fields(SchedulerStats) if f.name not in gauges}
        if idle_timeout_s is not None:
            self._start_thread()

    @classmethod
    def for_shards(
        cls,
        shards: Sequence[ShardRef],
        *,
        fs: FileSystem,
        budget_bytes: int,
        cache: PreloadCache | None = None,
        **options: Any,
    ) -> ShardScheduler[ShardRef]:
        """A scheduler over a model's shards, read from ``fs`` (through ``cache`` if given),
        checksummed, and prefetched in the given (manifest) order unless told otherwise::

            sched = ShardScheduler.for_shards(refs, fs=fs, budget_bytes=8 << 30, cache=cache)
        """
        options.setdefault("prefetch_order", list(shards))
        return cls(  # type: ignore[return-value]
            lambda ref: fetch_shard(fs, ref, cache=cache),
            {ref: ref.size for ref in shards},
            budget_bytes=budget_bytes,
            **options,
        )

    # -- public API ------------------------------------------------------------------
    def acquire(self, key: K) -> _Lease[K]:
        """A context manager whose value is the shard's buffer, held in memory meanwhile."""
        if key not in self._sizes:
            raise NotFoundError(f"shard {key!r}: not one of this scheduler's shards")
        return _Lease(self, key)

    def pin(self, key: K) -> None:
        """Load ``key`` and keep it in memory until :meth:`unpin` (pins nest)."""
        size = self._size(key)
        with self._cond:
            e = self._entries.get(key)
            if not (e and e.pins) and self._pinned + size > self.budget_bytes:
                raise self._pin_error(key, size)
        self._acquire(key)
        with self._cond:
            e = self._entries[key]
            if not e.pins:
                if self._pinned + size > self.budget_bytes:
                    self._release_locked(key)
                    raise self._pin_error(key, size)
                self._pinned += size
            e.pins += 1
            self._release_locked(key)

    def unpin(self, key: K) -> None:
        with self._cond:
            e = self._entries.get(key)
            if e is None or not e.pins:
                raise UsageError(f"shard {key!r}: not pinned; unpin only what pin() pinned")
            e.pins -= 1
            if not e.pins:
                self._pinned -= e.size
                self._cond.notify_all()

    def add(self, sizes: Mapping[K, int]) -> None:
        """Serve more shards from now on (a model, or a new version of one, added to a running
        process), checked as at construction::

            sched.add({ref: ref.size for ref in new_version_refs})
        """
        _check_sizes(sizes, self.budget_bytes)
        with self._cond:
            self._sizes.update(sizes)

    def remove(self, keys: Iterable[K]) -> int:
        """Stop serving ``keys`` (a version no longer served) and free those in memory; a
        key in use or pinned is a UsageError (nothing is removed). Returns the bytes freed."""
        keys = [k for k in keys if k in self._sizes]
        with self._cond:
            busy = [k for k in keys if (e := self._entries.get(k)) and (e.refs or e.pins or not e.ready)]
            if busy:
                raise UsageError(f"shard {busy[0]!r} is in use or pinned; release it before removing it")
            freed = 0
            for k in keys:
                if k in self._entries:
                    freed += self._entries[k].size
                    self._drop_locked(k, evicted=False)
                del self._sizes[k]
                with contextlib.suppress(ValueError):
                    self._queue.remove(k)
            self._cond.notify_all()
        return freed

    def prefetch(self, keys: Iterable[K]) -> None:
        """Fetch ``keys`` in the background, in this order, within idle room only."""
        keys = list(keys)
        for k in keys:
            self._size(k)
        with self._cond:
            self._queue.extend(keys)
            self._cond.notify_all()
        if keys:
            self._start_thread()

    def release_idle(self, max_idle_s: float | None = None) -> int:
        """Free shards not in use, not pinned and unused for ``max_idle_s`` (default:
        ``idle_timeout_s``, else 0). Returns the bytes freed."""
        limit = max_idle_s if max_idle_s is not None else (self.idle_timeout_s or 0.0)
        now = time.monotonic()
        freed = 0
        with self._cond:
            for key, e in list(self._entries.items()):
                if self._evictable(e) and now - e.last_used >= limit:
                    self._drop_locked(key, evicted=False)
                    self._n["idle_releases"] += 1
                    freed += e.size
            if freed:
                self._cond.notify_all()
        return freed

    def contains(self, key: K) -> bool:
        """Whether ``key`` is in memory now (fetched and not evicted)."""
        with self._cond:
            e = self._entries.get(key)
            return bool(e and e.ready)

    def stats(self) -> SchedulerStats:
        with self._cond:
            return SchedulerStats(
                budget_bytes=self.budget_bytes,
                bytes_held=self._held,
                pinned_bytes=self._pinned,
                resident=sum(e.ready for e in self._entries.values()),
                **self._n,
            )

    def close(self) -> None:
        """Stop the background thread and free every shard not in use."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._cond:
            for key, e in list(self._entries.items()):
                if e.ready and not e.refs:
                    self._drop_locked(key, evicted=False)

    def __enter__(self) -> ShardScheduler[K]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- acquiring and releasing -----------------------------------------------------
    def _acquire(self, key: K) -> Any:
        size = self._size(key)
        deadline = None if self.wait_timeout_s is None else time.monotonic() + self.wait_timeout_s
        with self._cond:
            waited = load = False
            while True:
                if self._closed:
                    raise UsageError("the shard scheduler is closed; create a new one")
                e = self._entries.get(key)
                if e is not None and e.ready:
                    e.refs += 1
                    self.policy.touch(key)
                    self._n["hits"] += 1
                    if e.prefetched:
                        e.prefetched = False
                        self._n["prefetch_hits"] += 1
                    data = e.data
                    break
                if e is None and self._reserve_locked(key, size, prefetch=False):
                    e = _Entry(size, prefetched=False)
                    e.refs = 1
                    self._entries[key] = e
                    self._n["misses"] += 1
                    load = True
                    break
                if not waited:
                    waited = True
                    self._n["waits" if e is not None else "room_waits"] += 1
                self._wait(deadline, key, size)
        if load:
            data = self._load(key, e)
        self._schedule_next(key)
        return data

    def _release(self, key: K) -> None:
        with self._cond:
            self._release_locked(key)

    def _release_locked(self, key: K) -> None:
        e = self._entries[key]
        e.refs -= 1
        e.last_used = time.monotonic()
        if not e.refs:  # only then can a waiter evict it; waking them all for nothing costs CPU
            self._cond.notify_all()

    def _load(self, key: K, e: _Entry) -> Any:
        """Fetch into a reserved entry (called without the lock); undo the reservation if
        the fetch fails."""
        try:
            result = self._fetch(key)
            data, local = result, None
            if isinstance(result, Fetched):
                data, local = result.data, result.local
            nbytes = memoryview(data).nbytes
            if nbytes != e.size:
                raise IntegrityError(
                    f"shard {key!r}: fetched {nbytes} bytes, expected {e.size}; the manifest "
                    "and the stored shard disagree: verify or re-upload the shard"
                )
        except BaseException:
            with self._cond:
                del self._entries[key]
                self._held -= e.size
                self._cond.notify_all()
            raise
        with self._cond:
            e.data = data
            e.ready = True
            e.last_used = time.monotonic()
            self.policy.admit(key, size=e.size, cost=self.fetch_cost(e.size))
            self._n["bytes_fetched"] += e.size
            if local is not None:
                self._n["local_reads" if local else "remote_reads"] += 1
            self._cond.notify_all()
        return data

    def fetch_cost(self, size: int) -> float:
        """Modelled seconds to fetch ``size`` bytes: latency + size / bandwidth."""
        return self.latency_s + size / self.bandwidth_bytes_per_s

    # -- budget ----------------------------------------------------------------------
    def _reserve_locked(self, key: K, size: int, *, prefetch: bool) -> bool:
        """Make room for ``size`` bytes and count them as held; False (nothing evicted) if
        the shards that may go do not free enough."""
        need = self._held + size - self.budget_bytes
        if need > 0:
            victims, freed = [], 0
            for v in self.policy.victims():
                e = self._entries[v]
                if self._evictable(e) and not (prefetch and (e.prefetched or v in self._queue)):
                    victims.append(v)
                    freed += e.size
                    if freed >= need:
                        break
            if freed < need:
                return False
            for v in victims:
                self._n["bytes_evicted"] += self._entries[v].size
                self._n["evictions"] += 1
                self._drop_locked(v, evicted=True)
        self._held += size
        self._n["peak_bytes_held"] = max(self._n["peak_bytes_held"], self._held)
        assert self._held <= self.budget_bytes
        return True

    @staticmethod
    def _evictable(e: _Entry) -> bool:
        return e.ready and not e.refs and not e.pins

    def _drop_locked(self, key: K, *, evicted: bool) -> None:
        e = self._entries.pop(key)
        e.data = None
        self._held -= e.size
        self.policy.remove(key, evicted=evicted)

    def _wait(self, deadline: float | None, key: K, size: int) -> None:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            in_use = sum(e.size for e in self._entries.values() if e.refs or not e.ready)
            raise UsageError(
                f"shard {key!r} ({size} bytes): no room within budget_bytes={self.budget_bytes} "
                f"after {self.wait_timeout_s} s: {self._pinned} bytes pinned, {in_use} in use; "
                "raise the budget, pin less, or hold fewer shards at once"
            )
        self._cond.wait(remaining)

    def _pin_error(self, key: K, size: int) -> UsageError:
        return UsageError(
            f"cannot pin shard {key!r} ({size} bytes): {self._pinned} bytes are pinned already "
            f"and the budget is {self.budget_bytes}; unpin shards or raise budget_bytes"
        )

    def _size(self, key: K) -> int:
        try:
            return self._sizes[key]
        except KeyError:
            raise NotFoundError(f"shard {key!r}: not one of this scheduler's shards") from None

    # -- background prefetch and idle release ------------------------------------------
    def _schedule_next(self, key: K) -> None:
        i = self._position.get(key)
        if i is None or not self.prefetch_depth:
            return
        nxt = self._order[i + 1 : i + 1 + self.prefetch_depth]
        with self._cond:
            nxt = [k for k in nxt if k not in self._entries and k not in self._queue]
        if nxt:
            self.prefetch(nxt)

    def _start_thread(self) -> None:
        with self._cond:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(
                target=self._background, name="modelshard-prefetch", daemon=True
            )
            self._thread.start()

    def _background(self) -> None:
        period = None if self.idle_timeout_s is None else max(self.idle_timeout_s / 4, 0.01)
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    if not self._cond.wait(period) and period is not None:
                        break  # time for an idle sweep
                if self._closed:
                    return
                key = self._queue.popleft() if self._queue else None
                e = None
                if key is not None and key not in self._entries:
                    if self._reserve_locked(key, self._sizes[key], prefetch=True):
                        e = self._entries[key] = _Entry(self._sizes[key], prefetched=True)
                        self._n["prefetches"] += 1
                    else:
                        self._n["prefetch_skipped"] += 1
            if e is not None:
                try:
                    self._load(key, e)
                except Exception as exc:  # a reader will fetch it again and see the error
                    log.warning("prefetch of shard %r failed: %s", key, exc)
            if self.idle_timeout_s is not None:
                self.release_idle()


def _check_sizes(sizes: Mapping[Any, int], budget_bytes: int) -> None:
    bad = [k for k, s in sizes.items() if s < 0]
    if bad:
        raise UsageError(f"shard {bad[0]!r}: negative size {sizes[bad[0]]}")
    if sizes:
        largest = max(sizes, key=sizes.__getitem__)
        if sizes[largest] > budget_bytes:
            raise UsageError(
                f"budget smaller than the largest shard: {largest!r} has {sizes[largest]} "
                f"bytes, budget_bytes={budget_bytes}; raise the budget to at least "
                f"{sizes[largest]} bytes or reshard the model into smaller shards"
            )


def fetch_shard(fs: FileSystem, ref: ShardRef, *, cache: PreloadCache | None = None,
                writable: bool = False) -> Fetched:
    """The checked bytes of one shard (:mod:`modelshard.verified`), through the preload cache
    if given (a private copy-on-write map of the entry), else read once straight into the
    buffer that is returned: read-only, unless ``writable`` (for torch tensors over it,
    which cannot be read-only; a write never reaches the cache entry).

    ``local`` says whether the bytes came from this node: a cache hit, a local filesystem,
    or an HDFS file whose blocks all have a replica here::

        header_len = fetch_shard(fs, ShardRef(path, size, sha256), cache=cache).data[:8]
    """
    if cache is not None:
        local = cache.contains(ref.sha256)
        data = cache.map(fs, ref.path, sha256=ref.sha256, size=ref.size,
                         checksums=ref.checksums, model=ref.model)
    else:
        data = fresh_pages(ref.size)
        read_stream(fs, ref.path, ref, model=ref.model, into=[(0, memoryview(data))])
        local = replica_is_local(fs, ref.path)
    view = memoryview(data)
    return Fetched(view if writable else view.toreadonly(), local=local)
