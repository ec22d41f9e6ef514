"""Statistics of one handle: what it served, read and checked, and from where.

>>> c = Counters(); c.add(tensors=2, bytes_served=96); c.source("mmap", local=True)
>>> c.snapshot(shard_counts={"range_reads": 0, "range_bytes": 0, "verified_bytes": 96},
...            cache=None, scheduler=None).sources
{'mmap': 1}
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

from modelshard.cache.preload import CacheStats
from modelshard.scheduler import SchedulerStats


@dataclass(frozen=True)
class HandleStats:
    """What one handle did: tensors served, bytes read by range (headers and the chunks
    widened for checking included), bytes checked (CRC32C chunks, or whole shards by sha256
    for a manifest without them), how each shard was opened, tensor reads per shard, shards
    with a local or a remote replica, and the cache's and scheduler's own counters."""

    tensors: int
    bytes_served: int
    range_reads: int
    range_bytes: int
    verified_bytes: int
    sources: dict[str, int]  # shards opened per source: scheduler, cache, mmap, range, file
    reads: dict[str, int]  # tensor reads per shard path (relative to the version)
    local_shards: int
    remote_shards: int
    cache: CacheStats | None
    scheduler: SchedulerStats | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Counters:
    """The handle's own counters, shared by its threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = {"tensors": 0, "bytes_served": 0, "local_shards": 0, "remote_shards": 0}
        self._sources: dict[str, int] = {}
        self._reads: dict[str, int] = {}

    def add(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                self._n[k] += v

    def source(self, source: str, *, local: bool) -> None:
        with self._lock:
            self._sources[source] = self._sources.get(source, 0) + 1
            self._n["local_shards" if local else "remote_shards"] += 1

    def read(self, shards: set[str]) -> None:
        with self._lock:
            for shard in shards:
                self._reads[shard] = self._reads.get(shard, 0) + 1

    def snapshot(self, *, shard_counts: dict[str, int], cache: CacheStats | None,
                 scheduler: SchedulerStats | None) -> HandleStats:
        with self._lock:
            return HandleStats(**self._n, **shard_counts, sources=dict(self._sources),
                               reads=dict(self._reads), cache=cache, scheduler=scheduler)
