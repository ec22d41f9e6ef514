"""Where each shard's bytes come from, decided at the shard's first use (data flowing
catalog -> shards -> cache -> scheduler), and checked there by :mod:`modelshard.verified`:

* a scheduler (``budget_bytes``): whole shards held in memory under the budget, each checked
  whole as it is fetched; tensors are copied out, so what the caller keeps is its own memory;
* the preload cache, when it holds the shard (or ``fill_cache``): the entry memory-mapped,
  checked whole in that map (a damaged entry is dropped and fetched again);
* a catalog on this machine's disk: the shard file, memory-mapped, each chunk checked the
  first time a read touches it;
* otherwise (HDFS): one range read per run of adjacent tensors, widened to whole chunks,
  every chunk checked in the bytes served.

Every shard's header is checked against the manifest at first use; a shard that failed a
check serves nothing for the rest of the handle's life. Memory maps are private
copy-on-write mappings: arrays are zero-copy and writable, and a write never reaches the
file.
"""

from __future__ import annotations

import builtins
import contextlib
import mmap
import posixpath
import threading
from dataclasses import dataclass, field
from typing import Any

from modelshard.cache.preload import PreloadCache, ShardRef
from modelshard.catalog.catalog import Catalog
from modelshard.catalog.manifest import Manifest, ShardRecord
from modelshard.errors import ModelShardError, NotFoundError, StorageError, UsageError
from modelshard.fs.locality import replica_is_local
from modelshard.loading.stats import Counters
from modelshard.scheduler import ShardScheduler
from modelshard.verified import VerifiedShard


@dataclass
class _Slot:
    """One shard as the handle reads it; set up at first use under ``lock``."""

    record: ShardRecord
    path: str  # in the catalog's filesystem
    lock: threading.Lock = field(default_factory=threading.Lock)
    source: str | None = None
    reader: VerifiedShard | None = None
    mapped: mmap.mmap | None = None
    failure: ModelShardError | None = None


class ShardSources:
    """The checked bytes of byte ranges of a version's shards, from the best source.

    >>> sources = ShardSources(cat, manifest, cache=None, fill_cache=False, budget_bytes=None,
    ...                        policy="gdsf", counters=Counters())      # doctest: +SKIP
    >>> sources.read("shards/model-00001-of-00001.safetensors", [(80, 96)])  # doctest: +SKIP
    """

    def __init__(self, catalog: Catalog, manifest: Manifest, *, cache: PreloadCache | None,
                 fill_cache: bool, budget_bytes: int | None, policy: str, counters: Counters,
                 unverified_for_benchmarks: bool = False) -> None:
        self._fs = catalog.fs
        self._model = f"{manifest.name}@{manifest.version}"
        self._cache, self._fill_cache = cache, fill_cache
        self._counters = counters
        self._unverified = unverified_for_benchmarks
        vdir = catalog.version_dir(manifest.name, manifest.version)
        self._slots = {s.path: _Slot(s, posixpath.join(vdir, s.path)) for s in manifest.shards}
        self.refs = {p: shard_ref(s.record, s.path, self._model) for p, s in self._slots.items()}
        self._expected = manifest.shard_entries()
        self.scheduler: ShardScheduler[ShardRef] | None = None
        if budget_bytes is not None:
            self.scheduler = self._new_scheduler(manifest, budget_bytes, policy)

    def _new_scheduler(self, manifest: Manifest, budget_bytes: int, policy: str
                       ) -> ShardScheduler[ShardRef]:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int):
            raise UsageError(f"budget_bytes={budget_bytes!r}: give a number of bytes")
        largest = max(manifest.shards, key=lambda s: s.size)
        if budget_bytes < largest.size:
            raise UsageError(f"budget smaller than the largest shard: budget_bytes="
                             f"{budget_bytes}, but {self._model}'s {largest.path} has "
                             f"{largest.size} bytes; raise the budget to at least that")
        # No prefetch: a handle reads what it is asked for, and no more.
        return ShardScheduler.for_shards(list(self.refs.values()), fs=self._fs,
                                         budget_bytes=budget_bytes, cache=self._cache,
                                         policy=policy, prefetch_order=[])

    def read(self, shard: str, ranges: list[tuple[int, int]]) -> list[Any]:
        """The checked bytes of each ``(begin, end)`` range of ``shard`` (its manifest path)."""
        slot = self._slots[shard]
        if self.scheduler is None:
            self._open(slot, held=None)
            return slot.reader.read(ranges)
        with self.scheduler.acquire(self.refs[shard]) as buf:
            reader = self._over(slot, buf)
            self._open(slot, held=reader)  # the first use checks this very buffer's header
            # Copied out: the scheduler may evict the shard once it is released, and the
            # budget must bound what it holds, not what the caller keeps.
            return [bytearray(v) for v in reader.read(ranges)]

    def counts(self) -> dict[str, int]:
        """Range reads, bytes read by range and bytes checked, over every shard."""
        total = {"range_reads": 0, "range_bytes": 0, "verified_bytes": 0}
        for slot in self._slots.values():
            for k in total:
                total[k] += slot.reader.counts[k] if slot.reader else 0
        return total

    def close(self) -> None:
        """Release the scheduler and unmap the memory maps (arrays handed out keep them alive
        until they go)."""
        if self.scheduler is not None:
            self.scheduler.close()
        for slot in self._slots.values():
            if slot.mapped is not None:
                with contextlib.suppress(BufferError):
                    slot.mapped.close()
                slot.mapped = None

    # -- choosing and checking a source, once per shard --------------------------------
    def _open(self, slot: _Slot, *, held: VerifiedShard | None) -> None:
        """Choose the shard's source and check it, once; ``held``: the shard as the
        scheduler holds it now."""
        with slot.lock:
            if slot.failure is not None:
                raise slot.failure
            if slot.source is not None:
                return
            try:
                source = self._attach(slot, held)
            except ModelShardError as e:
                slot.failure, slot.reader = e, None
                if slot.mapped is not None:
                    with contextlib.suppress(BufferError):  # the traceback may view it
                        slot.mapped.close()
                    slot.mapped = None
                raise
            slot.source = source
        local = source in ("cache", "mmap") or replica_is_local(self._fs, slot.path)
        self._counters.source(source, local=local)

    def _attach(self, slot: _Slot, held: VerifiedShard | None) -> str:
        rec, uri = slot.record, self._fs.uri(slot.path)
        if held is not None:
            self._check_header(held)
            return "scheduler"
        if self._cache is not None and (self._fill_cache or self._cache.contains(rec.sha256)):
            # Checked in this very map (a hit), or on its way into the cache (a miss).
            slot.mapped = self._cache.map(self._fs, slot.path, sha256=rec.sha256, size=rec.size,
                                          checksums=rec.checksums, model=self._model)
            slot.reader = VerifiedShard.over_buffer(slot.mapped, rec, model=self._model, uri=uri,
                                                    checked=True)
            source = "cache"
        elif (local := self._fs.local_path(slot.path)) is not None:
            try:
                with builtins.open(local, "rb") as f:
                    slot.mapped = _map(f.fileno(), local)
            except FileNotFoundError as e:
                raise NotFoundError(f"{self._model}: shard {local} is missing; 'modelshard "
                                    f"verify {self._model}' checks the version") from e
            except OSError as e:
                raise StorageError(f"{local}: cannot read the shard ({e.strerror or e})") from e
            slot.reader = VerifiedShard.over_buffer(
                slot.mapped, rec, model=self._model, uri=uri,
                unverified_for_benchmarks=self._unverified)
            source = "mmap"
        else:
            slot.reader = VerifiedShard.over_ranges(
                self._fs, slot.path, rec, model=self._model,
                unverified_for_benchmarks=self._unverified)
            source = "range"
        self._check_header(slot.reader)
        return source

    def _over(self, slot: _Slot, buf: Any) -> VerifiedShard:
        # The scheduler checked the shard whole when it fetched it: nothing to count here.
        return VerifiedShard.over_buffer(buf, slot.record, model=self._model,
                                         uri=self._fs.uri(slot.path), checked=True)

    def _check_header(self, reader: VerifiedShard) -> None:
        if not self._unverified:
            reader.header(self._expected[reader.record.path])


def shard_ref(record: ShardRecord, path: str, model: str) -> ShardRef:
    """The cache's and scheduler's description of a shard at ``path``."""
    return ShardRef(path, record.size, record.sha256, checksums=record.checksums, model=model)


def _map(fd: int, where: str) -> mmap.mmap:
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as e:
        raise StorageError(f"{where}: cannot memory-map the shard ({e})") from e
