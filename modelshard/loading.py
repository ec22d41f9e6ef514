"""Lazy loading: a model handle whose tensors are read on first use, each by its own byte
range, and the preload of shards into the node-local cache.

>>> import numpy as np, modelshard
>>> _ = modelshard.push({"w": np.ones((4, 3), np.float32)}, "demo", catalog="/tmp/cat")
>>> with modelshard.open("demo", catalog="/tmp/cat") as h:
...     h.get_rows("w", 1, 3).shape
(2, 3)

Where each shard's bytes come from (decided at the shard's first use, data flowing
catalog -> shards -> cache -> scheduler):

* ``budget_bytes`` given: whole shards held in memory by a
  :class:`~modelshard.scheduler.ShardScheduler` (through the cache if one is given), never
  more than the budget; tensors are copied out, so what the caller keeps is its own memory;
* the shard is in the preload cache (or ``fill_cache=True``): the verified cache entry,
  memory-mapped;
* the catalog is on this machine's disk: the shard file, memory-mapped;
* otherwise (HDFS): one range read per run of adjacent tensors, nothing else of the shard.

Memory maps are private copy-on-write mappings: arrays are zero-copy and writable, and a
write never reaches the file. Arrays from range reads share the read buffer and are read-only
(numpy); torch tensors are always writable (a read-only buffer is copied for torch).

Integrity: a range read cannot check the shard's sha256, which covers the whole file. Every
shard that goes through the cache or the scheduler is hashed whole before any byte of it is
served. A shard read by ranges (or mapped from a local catalog) has its header checked
against the manifest (dtype and byte range of every piece) on first use, which catches a
replaced, truncated or reshuffled shard for the cost of the header; ``verify=True`` hashes
each shard fully on first use as well (reading it once more). A shard that failed a check
serves nothing for the rest of the handle's life.
"""

from __future__ import annotations

import builtins
import contextlib
import difflib
import hashlib
import logging
import mmap
import os
import posixpath
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from modelshard.api import _catalog
from modelshard.cache.preload import CacheStats, PreloadCache, ShardRef
from modelshard.catalog import access
from modelshard.catalog.catalog import Catalog
from modelshard.catalog.fetch import FRAMEWORKS
from modelshard.catalog.manifest import Manifest, ShardRecord, TensorRecord
from modelshard.catalog.transfer import DEFAULT_WORKERS, Progress, check_workers, run_all
from modelshard.errors import IntegrityError, ModelShardError, NotFoundError, StorageError, UsageError
from modelshard.fs.locality import replica_is_local
from modelshard.scheduler import SchedulerStats, ShardScheduler
from modelshard.shards import dtypes
from modelshard.shards.dtypes import DType
from modelshard.shards.format import parse_header, read_header

log = logging.getLogger(__name__)

CACHE_ENV = "MODELSHARD_CACHE"
DEFAULT_CACHE_BYTES = 64 << 30
_FLOATS = frozenset({"F64", "F32", "F16", "BF16"})


def default_cache_dir() -> str:
    """``$MODELSHARD_CACHE``, else ``~/.modelshard/cache``."""
    return os.environ.get(CACHE_ENV) or os.path.expanduser("~/.modelshard/cache")


def open_cache(cache_dir: str | os.PathLike | None, max_bytes: int | None) -> PreloadCache:
    """The preload cache in ``cache_dir`` (None: the default folder) bounded to ``max_bytes``
    (None: 64 GiB); StorageError if the folder cannot be written."""
    return PreloadCache(cache_dir if cache_dir is not None else default_cache_dir(),
                        max_bytes=max_bytes if max_bytes is not None else DEFAULT_CACHE_BYTES)


@dataclass(frozen=True)
class HandleStats:
    """What one handle did: tensors served, bytes read from the catalog's storage by range
    (headers included) or hashed for ``verify``, how each shard was opened, tensor reads per
    shard, shards with a local or a remote replica, and the cache's and scheduler's own
    counters (hits, misses, bytes fetched, evictions, local/remote reads) when used."""

    tensors: int
    bytes_served: int
    range_reads: int
    range_bytes: int
    verified_bytes: int
    sources: dict[str, int]  # shards opened per source: scheduler, cache, mmap, range
    reads: dict[str, int]  # tensor reads per shard path (relative to the version)
    local_shards: int
    remote_shards: int
    cache: CacheStats | None
    scheduler: SchedulerStats | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Shard:
    """One shard as this handle reads it; set up at first use under ``lock``."""

    record: ShardRecord
    path: str  # in the catalog's filesystem
    lock: threading.Lock = field(default_factory=threading.Lock)
    source: str | None = None
    mapped: mmap.mmap | None = None
    failure: ModelShardError | None = None


class ModelHandle:
    """A committed version, read tensor by tensor. Get one from :func:`open`; close it (or use
    ``with``) to release shards, memory maps and the scheduler and to record the access
    statistics. Example::

        with modelshard.open("bert@prod", budget_bytes=2 << 30) as h:
            emb = h.get_rows("embeddings.word_embeddings.weight", 0, 1000)
            sd = h.load_state_dict(dtype="float16", framework="torch")
            print(h.stats().scheduler.evictions)

    Threads may share a handle.
    """

    def __init__(self, catalog: Catalog, manifest: Manifest, *, cache: PreloadCache | None,
                 budget_bytes: int | None, policy: str, verify: bool, fill_cache: bool,
                 workers: int, record_stats: bool) -> None:
        self.catalog = catalog
        self.manifest = manifest
        self.key = f"{manifest.name}@{manifest.version}"
        self._fs = catalog.fs
        self._cache = cache
        self._verify = verify
        self._fill_cache = fill_cache
        self._workers = check_workers(workers)
        self._record_stats = record_stats
        vdir = catalog.version_dir(manifest.name, manifest.version)
        self._shards = {s.path: _Shard(s, posixpath.join(vdir, s.path)) for s in manifest.shards}
        self._expected = manifest.shard_entries()
        self._refs = {p: ShardRef(s.path, s.record.size, s.record.sha256)
                      for p, s in self._shards.items()}
        self._scheduler: ShardScheduler[ShardRef] | None = None
        if budget_bytes is not None:
            if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int):
                raise UsageError(f"budget_bytes={budget_bytes!r}: give a number of bytes")
            largest = max(manifest.shards, key=lambda s: s.size)
            if budget_bytes < largest.size:
                raise UsageError(f"budget smaller than the largest shard: budget_bytes="
                                 f"{budget_bytes}, but {self.key}'s {largest.path} has "
                                 f"{largest.size} bytes; raise the budget to at least that")
            # No prefetch: a handle reads what it is asked for, and no more.
            self._scheduler = ShardScheduler.for_shards(
                list(self._refs.values()), fs=self._fs, budget_bytes=budget_bytes, cache=cache,
                policy=policy, prefetch_order=[])
        self._lock = threading.Lock()
        self._n = {"tensors": 0, "bytes_served": 0, "range_reads": 0, "range_bytes": 0,
                   "verified_bytes": 0, "local_shards": 0, "remote_shards": 0}
        self._sources: dict[str, int] = {}
        self._reads: dict[str, int] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"ModelHandle({self.key!r}, catalog={self.catalog.uri!r})"

    # -- public API --------------------------------------------------------------------
    def names(self) -> list[str]:
        """The version's tensor names, sorted."""
        return list(self.manifest.tensors)

    def get(self, name: str, *, framework: str = "numpy") -> Any:
        """One tensor, read on first use (numpy array, or torch tensor)::

            h.get("lm_head.weight", framework="torch")
        """
        return self._fetch([(name, None)], framework=framework, cast=None)[name]

    def get_rows(self, name: str, start: int, stop: int, *, framework: str = "numpy") -> Any:
        """Rows ``start:stop`` of a tensor's first dimension, reading only those rows' bytes
        (from every piece of a tensor split across shards that holds some of them)::

            h.get_rows("embed.weight", 1000, 2000)      # shape (1000, hidden)
        """
        t = self._tensor(name)
        rows = t.shape[0] if t.shape else None
        if rows is None:
            raise UsageError(f"tensor {name!r} is 0-dimensional: it has no rows; use get()")
        for x in (start, stop):
            if isinstance(x, bool) or not isinstance(x, int):
                raise UsageError(f"get_rows({name!r}, {start!r}, {stop!r}): rows are integers")
        if not 0 <= start <= stop <= rows:
            raise UsageError(f"get_rows({name!r}, {start}, {stop}): the tensor has {rows} rows; "
                             f"give 0 <= start <= stop <= {rows}")
        return self._fetch([(name, (start, stop))], framework=framework, cast=None)[name]

    def load_state_dict(self, names: Iterable[str] | None = None, *, dtype: Any = None,
                        framework: str = "numpy") -> dict[str, Any]:
        """``{name: tensor}`` for ``names`` (None: all), shards read in parallel; ``dtype``
        (``"float16"``, ``"BF16"``, a numpy or torch dtype) converts the floating-point
        tensors only, as Hugging Face's ``torch_dtype`` does::

            sd = h.load_state_dict(["a", "b"], dtype="bfloat16", framework="torch")
        """
        wanted = self.names() if names is None else list(dict.fromkeys(names))
        cast = None if dtype is None else _dtype(dtype)
        return self._fetch([(n, None) for n in wanted], framework=framework, cast=cast)

    def stats(self) -> HandleStats:
        """Counters so far (see :class:`HandleStats`)."""
        with self._lock:
            n, sources, reads = dict(self._n), dict(self._sources), dict(self._reads)
        return HandleStats(**n, sources=sources, reads=reads,
                           cache=self._cache.stats() if self._cache else None,
                           scheduler=self._scheduler.stats() if self._scheduler else None)

    def close(self) -> None:
        """Release the scheduler and memory maps (arrays handed out stay valid) and add this
        session's tensor reads per shard to the catalog's access statistics."""
        if self._closed:
            return
        self._closed = True
        if self._scheduler is not None:
            self._scheduler.close()
        for shard in self._shards.values():
            if shard.mapped is not None:
                with contextlib.suppress(BufferError):  # arrays still use it: unmapped later
                    shard.mapped.close()
                shard.mapped = None
        s = self.stats()
        if self._record_stats and s.reads:
            try:
                access.record(self.catalog, self.manifest.name, self.manifest.version,
                              reads=s.reads, local=s.local_shards, remote=s.remote_shards)
            except ModelShardError as e:  # a read-only catalog still loads
                log.warning("%s: access statistics not recorded: %s", self.key, e)

    def __enter__(self) -> ModelHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------
    def _tensor(self, name: str) -> TensorRecord:
        t = self.manifest.tensors.get(name) if isinstance(name, str) else None
        if t is None:
            close = difflib.get_close_matches(str(name), self.manifest.tensors, n=5)
            hint = (f"close matches: {', '.join(close)}" if close
                    else "handle.names() lists them")
            raise NotFoundError(f"{self.key} has no tensor {name!r}; {hint}")
        return t

    def _fetch(self, requests: Sequence[tuple[str, tuple[int, int] | None]], *, framework: str,
               cast: DType | None) -> dict[str, Any]:
        if framework not in FRAMEWORKS:
            raise UsageError(f"framework={framework!r}: choose one of {', '.join(FRAMEWORKS)}")
        if self._closed:
            raise UsageError(f"the handle of {self.key} is closed; open the model again")
        plans = [(name, rows, *_segments(self._tensor(name), rows)) for name, rows in requests]
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for _, _, _, segments in plans:
            for shard, begin, end in segments:
                by_shard.setdefault(shard, []).append((begin, end))

        def read(shard: str, progress: Progress) -> dict[tuple[int, int], Any]:
            ranges = sorted(set(by_shard[shard]))
            got = dict(zip(ranges, self._read(self._shards[shard], ranges), strict=True))
            progress(sum(e - b for b, e in ranges))
            return got

        shards = list(by_shard)
        total = sum(e - b for r in by_shard.values() for b, e in r)
        parts = run_all(read, shards, workers=self._workers, total=total, desc=f"load {self.key}")
        got = dict(zip(shards, parts, strict=True))
        out = {}
        for name, _, shape, segments in plans:
            t = self.manifest.tensors[name]
            bufs = [got[shard][(b, e)] for shard, b, e in segments]
            raw = bufs[0] if len(bufs) == 1 else bytearray(b"".join(bufs))
            out[name] = _convert(raw, t.dtype, shape, framework, cast)
        with self._lock:
            self._n["tensors"] += len(plans)
            self._n["bytes_served"] += total
            for _, _, _, segments in plans:
                for shard in {s for s, _, _ in segments}:
                    self._reads[shard] = self._reads.get(shard, 0) + 1
        return out

    def _read(self, shard: _Shard, ranges: list[tuple[int, int]]) -> list[Any]:
        """The bytes of each ``(begin, end)`` range of ``shard``, from its source."""
        self._open_shard(shard)
        if shard.source == "scheduler":
            assert self._scheduler is not None
            with self._scheduler.acquire(self._refs[shard.record.path]) as buf:
                view = memoryview(buf)
                # Copied out: the scheduler may evict the shard once it is released, and the
                # budget must bound what it holds, not what the caller keeps.
                return [bytearray(view[b:e]) for b, e in ranges]
        if shard.mapped is not None:
            view = memoryview(shard.mapped)
            return [view[b:e] for b, e in ranges]
        out = []
        for lo, hi, members in _coalesce(ranges):
            data = self._fs.read_range(shard.path, lo, hi - lo)
            if len(data) != hi - lo:
                raise IntegrityError(f"{self._fs.uri(shard.path)}: {len(data)} bytes at offset "
                                     f"{lo}, expected {hi - lo}; the shard is truncated: "
                                     f"'modelshard verify {self.key}' says more")
            self._count(range_reads=1, range_bytes=hi - lo)
            view = memoryview(data)
            out += [view[b - lo:e - lo] for b, e in members]
        return out

    def _open_shard(self, shard: _Shard) -> None:
        """Choose the shard's source and check it, once; a failed check sticks."""
        with shard.lock:
            if shard.failure is not None:
                raise shard.failure
            if shard.source is not None:
                return
            try:
                source = self._attach(shard)
            except IntegrityError as e:
                shard.failure = e
                raise
            shard.source = source
        local = source in ("cache", "mmap") or replica_is_local(self._fs, shard.path)
        with self._lock:
            self._sources[source] = self._sources.get(source, 0) + 1
            self._n["local_shards" if local else "remote_shards"] += 1

    def _attach(self, shard: _Shard) -> str:
        rec = shard.record
        if self._scheduler is not None:
            return "scheduler"  # fetch_shard hashes every shard it fetches
        if self._cache is not None and (self._fill_cache or self._cache.contains(rec.sha256)):
            # The cache re-hashes the entry, drops it if damaged and fetches it again.
            with self._cache.open(self._fs, shard.path, sha256=rec.sha256, size=rec.size) as f:
                shard.mapped = _map(f.fileno(), f.name)
            return "cache"
        local = self._fs.local_path(shard.path)
        if local is not None:
            try:
                with builtins.open(local, "rb") as f:  # this module's open() is the verb
                    shard.mapped = _map(f.fileno(), local)
            except FileNotFoundError as e:
                raise NotFoundError(f"{local}: shard of {self.key} is missing; 'modelshard "
                                    f"verify {self.key}' checks the version") from e
            except OSError as e:
                raise StorageError(f"{local}: cannot read the shard ({e.strerror or e})") from e
        if self._verify:
            self._hash(shard)
        self._check_header(shard)
        return "mmap" if shard.mapped is not None else "range"

    def _hash(self, shard: _Shard) -> None:
        rec = shard.record
        if shard.mapped is not None:
            size, sha = len(shard.mapped), hashlib.sha256(shard.mapped).hexdigest()
        else:
            digest, size = hashlib.sha256(), 0
            with self._fs.open_read(shard.path) as f:
                while chunk := f.read(8 << 20):
                    digest.update(chunk)
                    size += len(chunk)
            sha = digest.hexdigest()
        self._count(verified_bytes=size)
        if (size, sha) != (rec.size, rec.sha256):
            self._unmap(shard)
            raise IntegrityError(f"{self._fs.uri(shard.path)}: {size} bytes with sha256 {sha} "
                                 f"where the manifest says {rec.size} bytes with {rec.sha256}; "
                                 "the shard is damaged: restore it or push the model again")

    def _check_header(self, shard: _Shard) -> None:
        where = self._fs.uri(shard.path)
        try:
            if shard.mapped is not None:
                n = int.from_bytes(shard.mapped[:8], "little")
                header = parse_header(shard.mapped[8:8 + n], file_size=len(shard.mapped),
                                      where=where)
            else:
                header = read_header(self._fs, shard.path)
                self._count(range_reads=2, range_bytes=header.data_start)
            found = {k: (e.dtype.name, e.begin, e.end) for k, e in header.entries.items()}
            ok = found == self._expected[shard.record.path]
        except ModelShardError as e:
            self._unmap(shard)
            raise IntegrityError(f"{where}: {e}") from e
        if not ok:
            self._unmap(shard)
            raise IntegrityError(f"{where}: the header does not list the tensors the manifest "
                                 f"places there; the shard was replaced or damaged: "
                                 f"'modelshard verify {self.key}' checks it")

    @staticmethod
    def _unmap(shard: _Shard) -> None:
        if shard.mapped is not None:
            shard.mapped.close()
            shard.mapped = None

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                self._n[k] += v


def _map(fd: int, where: str) -> mmap.mmap:
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as e:
        raise StorageError(f"{where}: cannot memory-map the shard ({e})") from e


def _segments(t: TensorRecord, rows: tuple[int, int] | None
              ) -> tuple[tuple[int, ...], list[tuple[str, int, int]]]:
    """The result's shape and the (shard, begin, end) byte ranges holding it, in order."""
    if rows is None and not t.is_split:
        p = t.pieces[0]
        return t.shape, [(p.shard, p.begin, p.end)]
    start, stop = rows if rows is not None else (0, t.shape[0])
    row_bytes = t.nbytes // t.shape[0] if t.shape[0] else 0
    out = []
    for p in t.pieces:
        r0, r1 = p.rows if p.rows is not None else (0, t.shape[0])
        lo, hi = max(r0, start), min(r1, stop)
        if lo < hi and row_bytes:
            out.append((p.shard, p.begin + (lo - r0) * row_bytes, p.begin + (hi - r0) * row_bytes))
    return (stop - start, *t.shape[1:]), out


def _coalesce(ranges: list[tuple[int, int]]
              ) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """Sorted ranges merged where they touch or overlap: one read per run of adjacent
    tensors, and never a byte that no tensor needs."""
    runs: list[tuple[int, int, list[tuple[int, int]]]] = []
    for b, e in ranges:
        if runs and b <= runs[-1][1]:
            lo, hi, members = runs[-1]
            runs[-1] = (lo, max(hi, e), [*members, (b, e)])
        else:
            runs.append((b, e, [(b, e)]))
    return runs


def _dtype(dtype: Any) -> DType:
    if isinstance(dtype, DType):
        return dtype
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        for d in dtypes.DTYPES.values():
            if name in (d.name, d.torch_name):
                return d
        raise UsageError(f"dtype={dtype!r}: use one of {dtypes.SUPPORTED} or its torch name "
                         "(float16, bfloat16, ...)")
    if "torch" in type(dtype).__module__:
        return dtypes.of_torch(dtype, where="dtype=")
    try:
        return dtypes.of_numpy(np.dtype(dtype), where="dtype=")
    except TypeError as e:
        raise UsageError(f"dtype={dtype!r}: not a dtype") from e


def _convert(raw: Any, dt: DType, shape: tuple[int, ...], framework: str,
             cast: DType | None) -> Any:
    target = cast if cast is not None and dt.name in _FLOATS else None
    if framework == "numpy":
        arr = np.frombuffer(raw, dtype=dt.numpy).reshape(shape)
        return arr if target is None else arr.astype(target.numpy)
    import torch

    if not memoryview(raw).nbytes:  # torch.frombuffer refuses an empty buffer
        tensor = torch.empty(shape, dtype=dt.torch)
    else:
        if memoryview(raw).readonly:  # torch has no read-only tensors
            raw = bytearray(raw)
        tensor = torch.frombuffer(raw, dtype=dt.torch).reshape(shape)
    return tensor if target is None else tensor.to(target.torch)


# -- verbs ---------------------------------------------------------------------------------
def open(key: str, *, catalog: str | os.PathLike | Catalog | None = None,
         cache_dir: str | os.PathLike | None = None, cache_max_bytes: int | None = None,
         fill_cache: bool = False, budget_bytes: int | None = None, policy: str = "gdsf",
         verify: bool = False, workers: int = DEFAULT_WORKERS,
         record_stats: bool = True) -> ModelHandle:
    """A lazy handle on ``key`` (``name``, ``name@version``, ``name@alias``). Nothing is read
    but the manifest until a tensor is asked for.

    ``cache_dir``: read shards found in this preload cache from it (``fill_cache=True``: put
    every shard used there first); ``budget_bytes``: hold whole shards in memory under this
    hard limit (``policy`` ``"gdsf"`` or ``"lru"``); ``verify``: hash every shard read by
    range fully on first use; ``workers``: shards read at once; ``record_stats``: add this
    session's reads per shard to the catalog on close (for ``replicate --hot``)::

        with modelshard.open("bert@prod", cache_dir="/local/cache") as h:
            h.get("pooler.dense.weight")
    """
    cat = _catalog(catalog)
    manifest = cat.manifest(*cat.resolve(key))
    cache = None
    if cache_dir is not None or fill_cache:
        cache = open_cache(cache_dir, cache_max_bytes)
    return ModelHandle(cat, manifest, cache=cache, budget_bytes=budget_bytes, policy=policy,
                       verify=verify, fill_cache=fill_cache, workers=workers,
                       record_stats=record_stats)


def load(key: str, *, names: Iterable[str] | None = None, dtype: Any = None,
         framework: str = "numpy", **options: Any) -> dict[str, Any]:
    """``open(key, **options).load_state_dict(names, dtype=, framework=)`` in one call::

        sd = modelshard.load("bert@prod", names=["pooler.dense.weight"], framework="torch")
    """
    with open(key, **options) as handle:
        return handle.load_state_dict(names, dtype=dtype, framework=framework)


@dataclass(frozen=True)
class PreloadReport:
    """What ``preload`` did: the shards now in the cache, and how many it had to fetch."""

    key: str
    cache_dir: str
    shards: int
    bytes: int
    fetched: int
    bytes_fetched: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def preload(key: str, *, tensors: Iterable[str] | None = None,
            catalog: str | os.PathLike | Catalog | None = None,
            cache_dir: str | os.PathLike | None = None, max_bytes: int | None = None,
            workers: int = DEFAULT_WORKERS) -> PreloadReport:
    """Copy a version's shards (or only those holding ``tensors``) into the preload cache,
    each verified by its sha256; shards already there are re-verified, not fetched. A failed
    copy (full disk, damaged shard) leaves no entry behind::

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
    total = sum(s.size for s in shards)
    if total > cache.max_bytes:
        raise UsageError(f"preload {handle_key}: {len(shards)} shards of {total} bytes do not fit "
                         f"the cache budget of {cache.max_bytes} bytes; raise --max-bytes or "
                         "preload fewer tensors (--tensors)")
    vdir = cat.version_dir(manifest.name, manifest.version)
    before = cache.stats()

    def get(shard: ShardRecord, progress: Progress) -> None:
        cache.get(cat.fs, posixpath.join(vdir, shard.path), sha256=shard.sha256, size=shard.size)
        progress(shard.size)

    run_all(get, shards, workers=workers, total=total, desc=f"preload {handle_key}")
    after = cache.stats()
    return PreloadReport(handle_key, cache.dir, len(shards), total,
                         after.misses - before.misses, after.bytes_fetched - before.bytes_fetched)


__all__ = ["HandleStats", "ModelHandle", "PreloadReport", "default_cache_dir", "load", "open",
           "preload"]
