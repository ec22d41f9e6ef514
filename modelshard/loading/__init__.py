"""Lazy loading: a model handle whose tensors are read on first use, each by its own byte
range, and the preload of shards into the node-local cache.

>>> import numpy as np, modelshard
>>> _ = modelshard.push({"w": np.ones((4, 3), np.float32)}, "demo", catalog="/tmp/cat")
>>> with modelshard.open("demo", catalog="/tmp/cat") as h:
...     h.get_rows("w", 1, 3).shape
(2, 3)

The handle's parts, each in its own module: where each shard's bytes come from and how they
are checked (:mod:`.sources`, on :mod:`modelshard.verified`), what to read for a tensor
(:mod:`.plan`), conversion to numpy or torch (:mod:`.convert`), statistics (:mod:`.stats`),
and the handle itself (:mod:`.handle`). Every byte served is checked against the manifest
(CRC32C chunks; a manifest from before them: the whole-shard sha256, once per shard).
"""

from __future__ import annotations

import difflib
import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from modelshard.api import _catalog
from modelshard.cache.preload import PreloadCache
from modelshard.catalog.catalog import Catalog
from modelshard.catalog.manifest import AssetRecord, ShardRecord
from modelshard.catalog.transfer import DEFAULT_WORKERS, Progress, check_workers, run_all
from modelshard.errors import NotFoundError, UsageError
from modelshard.loading.device import DEFAULT_POOL_BYTES, FillReport, rank_rows
from modelshard.loading.handle import ModelHandle
from modelshard.loading.stats import HandleStats

CACHE_ENV = "MODELSHARD_CACHE"
DEFAULT_CACHE_BYTES = 64 << 30


def default_cache_dir() -> str:
    """``$MODELSHARD_CACHE``, else ``~/.modelshard/cache``."""
    return os.environ.get(CACHE_ENV) or os.path.expanduser("~/.modelshard/cache")


def open_cache(cache_dir: str | os.PathLike | None, max_bytes: int | None) -> PreloadCache:
    """The preload cache in ``cache_dir`` (None: the default folder) bounded to ``max_bytes``
    (None: 64 GiB); StorageError if the folder cannot be written."""
    return PreloadCache(cache_dir if cache_dir is not None else default_cache_dir(),
                        max_bytes=max_bytes if max_bytes is not None else DEFAULT_CACHE_BYTES)


# -- verbs ---------------------------------------------------------------------------------
def open(key: str, *, catalog: str | os.PathLike | Catalog | None = None,
         cache_dir: str | os.PathLike | None = None, cache_max_bytes: int | None = None,
         fill_cache: bool = False, budget_bytes: int | None = None, policy: str = "gdsf",
         workers: int = DEFAULT_WORKERS, record_stats: bool = True,
         unverified_for_benchmarks: bool = False) -> ModelHandle:
    """A lazy handle on ``key`` (``name``, ``name@version``, ``name@alias``). Nothing is read
    but the manifest until a tensor is asked for.

    ``cache_dir``: read shards found in this preload cache from it (``fill_cache=True``: put
    every shard used there first); ``budget_bytes``: hold whole shards in memory under this
    hard limit (``policy`` ``"gdsf"`` or ``"lru"``); ``workers``: shards read at once;
    ``record_stats``: add this session's reads per shard to the catalog on close (for
    ``replicate --hot``). Every byte served is checked (see :mod:`modelshard.verified`);
    ``unverified_for_benchmarks=True`` skips the checks of range reads and memory maps, only
    to measure what they cost::

        with modelshard.open("bert@prod", cache_dir="/local/cache") as h:
            h.get("pooler.dense.weight")
    """
    cat = _catalog(catalog)
    manifest = cat.manifest(*cat.resolve(key))
    cache = None
    if cache_dir is not None or fill_cache:
        cache = open_cache(cache_dir, cache_max_bytes)
    return ModelHandle(cat, manifest, cache=cache, budget_bytes=budget_bytes, policy=policy,
                       fill_cache=fill_cache, workers=workers, record_stats=record_stats,
                       unverified_for_benchmarks=unverified_for_benchmarks)


def load(key: str, *, names: Iterable[str] | None = None, dtype: Any = None,
         framework: str | None = None, device: Any = None,
         rows: Mapping[str, tuple[int, int]] | None = None,
         pool_bytes: int = DEFAULT_POOL_BYTES, **options: Any) -> dict[str, Any]:
    """``open(key, **options).load_state_dict(names, dtype=, framework=, device=, rows=,
    pool_bytes=)`` in one call (see :meth:`ModelHandle.load_state_dict`)::

        sd = modelshard.load("bert@prod", names=["pooler.dense.weight"], framework="torch")
        sd = modelshard.load("llama@prod", device="cuda:0")
    """
    with open(key, **options) as handle:
        return handle.load_state_dict(names, dtype=dtype, framework=framework, device=device,
                                      rows=rows, pool_bytes=pool_bytes,
                                      workers=options.get("workers"))


def load_into(module: Any, key: str, *, device: Any = None,
              device_map: Mapping[str, Any] | None = None, strict: bool = True,
              rows: Mapping[str, tuple[int, int]] | None = None,
              pool_bytes: int = DEFAULT_POOL_BYTES, **options: Any) -> FillReport:
    """``open(key, **options).load_into(module, device=, ...)`` in one call (see
    :meth:`ModelHandle.load_into`): a torch module, built on the meta device or not, filled
    straight in device memory::

        with torch.device("meta"):
            model = MyModel()
        modelshard.load_into(model, "mine@prod", device="cuda:0")
    """
    with open(key, **options) as handle:
        return handle.load_into(module, device=device, device_map=device_map, strict=strict,
                                rows=rows, pool_bytes=pool_bytes,
                                workers=options.get("workers"))


@dataclass(frozen=True)
class PreloadReport:
    """What ``preload`` did: the shards now in the cache, and how many it had to fetch."""

    key: str
    cache_dir: str
    shards: int
    bytes: int
    fetched: int
    bytes_fetched: int
    assets: int = 0  # the version's non-tensor files (config, tokenizer...), cached too

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def preload(key: str, *, tensors: Iterable[str] | None = None,
            catalog: str | os.PathLike | Catalog | None = None,
            cache_dir: str | os.PathLike | None = None, max_bytes: int | None = None,
            workers: int = DEFAULT_WORKERS) -> PreloadReport:
    """Copy a version's shards (or only those holding ``tensors``) and its assets into the
    preload cache, each checked as it is copied; files already there are checked again, not
    fetched. A failed copy (full disk, damaged shard) leaves no entry behind::

        preload("bert@prod", cache_dir="/local/cache", max_bytes=20 << 30)
    """
    check_workers(workers)
    cat = _catalog(catalog)
    manifest = cat.manifest(*cat.resolve(key))
    cache = open_cache(cache_dir, max_bytes)
    handle_key = f"{manifest.name}@{manifest.version}"
    if tensors is None:
        shards = list(manifest.shards)
    else:
        wanted: set[str] = set()
        for name in tensors:
            t = manifest.tensors.get(name)
            if t is None:
                close = difflib.get_close_matches(name, manifest.tensors, n=5)
                raise NotFoundError(f"{handle_key} has no tensor {name!r}; " + (
                    f"close matches: {', '.join(close)}" if close
                    else f"'modelshard show {handle_key} --tensors' lists them"))
            wanted.update(p.shard for p in t.pieces)
        shards = [s for s in manifest.shards if s.path in wanted]
    files = [*shards, *manifest.assets.values()]
    total = sum(s.size for s in files)
    if total > cache.max_bytes:
        raise UsageError(f"preload {handle_key}: {len(shards)} shards of {total} bytes do not fit "
                         f"the cache budget of {cache.max_bytes} bytes; raise --max-bytes or "
                         "preload fewer tensors (--tensors)")
    vdir = cat.version_dir(manifest.name, manifest.version)
    before = cache.stats()

    def get(file: ShardRecord | AssetRecord, progress: Progress) -> None:
        cache.get(cat.fs, posixpath.join(vdir, file.path), sha256=file.sha256, size=file.size,
                  checksums=file.checksums, model=handle_key)
        progress(file.size)

    run_all(get, files, workers=workers, total=total, desc=f"preload {handle_key}")
    after = cache.stats()
    return PreloadReport(handle_key, cache.dir, len(shards), total,
                         after.misses - before.misses, after.bytes_fetched - before.bytes_fetched,
                         len(manifest.assets))


__all__ = ["FillReport", "HandleStats", "ModelHandle", "PreloadReport", "default_cache_dir",
           "load", "load_into", "open", "preload", "rank_rows"]
