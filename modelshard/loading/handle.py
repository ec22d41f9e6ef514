"""The model handle: a committed version read tensor by tensor, each tensor's bytes read on
first use by its own byte ranges (:mod:`.plan`), from the shard's source (:mod:`.sources`,
which checks every byte it serves), converted (:mod:`.convert`) and counted (:mod:`.stats`).
"""

from __future__ import annotations

import difflib
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from modelshard.cache.preload import PreloadCache
from modelshard.catalog import access
from modelshard.catalog.catalog import Catalog
from modelshard.catalog.fetch import FRAMEWORKS, read_asset
from modelshard.catalog.manifest import Manifest, TensorRecord
from modelshard.catalog.transfer import Progress, check_workers, run_all
from modelshard.errors import ModelShardError, NotFoundError, UsageError
from modelshard.loading.convert import as_dtype, convert
from modelshard.loading.device import (
    DEFAULT_POOL_BYTES,
    FillReport,
    fill_module,
    load_state_dict_to,
    resolve_device,
)
from modelshard.loading.plan import segments
from modelshard.loading.sources import ShardSources
from modelshard.loading.stats import Counters, HandleStats
from modelshard.shards.dtypes import DType

log = logging.getLogger(__name__)


class ModelHandle:
    """A committed version, read tensor by tensor. Get one from :func:`modelshard.open`;
    close it (or use ``with``) to release shards, memory maps and the scheduler and to record
    the access statistics. Example::

        with modelshard.open("bert@prod", budget_bytes=2 << 30) as h:
            emb = h.get_rows("embeddings.word_embeddings.weight", 0, 1000)
            sd = h.load_state_dict(dtype="float16", framework="torch")
            print(h.stats().scheduler.evictions)

    Threads may share a handle.
    """

    def __init__(self, catalog: Catalog, manifest: Manifest, *, cache: PreloadCache | None,
                 budget_bytes: int | None, policy: str, fill_cache: bool, workers: int,
                 record_stats: bool, unverified_for_benchmarks: bool = False) -> None:
        self.catalog = catalog
        self.manifest = manifest
        self.key = f"{manifest.name}@{manifest.version}"
        self._cache = cache
        self._workers = check_workers(workers)
        self._record_stats = record_stats
        self._counters = Counters()
        self._sources = ShardSources(catalog, manifest, cache=cache, fill_cache=fill_cache,
                                     budget_bytes=budget_bytes, policy=policy,
                                     counters=self._counters,
                                     unverified_for_benchmarks=unverified_for_benchmarks)
        self._scheduler = self._sources.scheduler
        self._fill_cache, self._unverified = fill_cache, unverified_for_benchmarks
        self._device_counts: dict[str, int] = {}  # reads of loads onto a device (.device)
        self._device_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"ModelHandle({self.key!r}, catalog={self.catalog.uri!r})"

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
        (and the rest of the chunks that check them)::

            h.get_rows("embed.weight", 1000, 2000)      # shape (1000, hidden)
        """
        rows = self._check_rows(name, start, stop)
        return self._fetch([(name, rows)], framework=framework, cast=None)[name]

    def load_state_dict(self, names: Iterable[str] | None = None, *, dtype: Any = None,
                        framework: str | None = None, device: Any = None,
                        rows: Mapping[str, tuple[int, int]] | None = None,
                        pool_bytes: int = DEFAULT_POOL_BYTES, workers: int | None = None
                        ) -> dict[str, Any]:
        """``{name: tensor}`` for ``names`` (None: the model's tensors, all but a trained
        version's optimizer state, ``inner_momentum:*``, ``outer_momentum:*``, which is read only by name: a
        strict torch ``load_state_dict`` takes the result), shards read in parallel; ``dtype``
        (``"float16"``, ``"BF16"``, a numpy or torch dtype) converts the floating-point
        tensors only, as Hugging Face's ``torch_dtype`` does; ``rows``: ``{name: (start,
        stop)}`` reads only those rows of those tensors (a tensor-parallel rank's part, see
        :func:`~modelshard.loading.device.rank_rows`). ``framework``: ``"numpy"`` (the
        default) or ``"torch"``.

        ``device`` (``"cuda"``, ``"cuda:1"``, ``"cpu"``; torch tensors): straight into that
        device's memory through a pool of at most ``pool_bytes`` of pinned host memory and
        ``workers`` threads (default: up to 16), each chunk checked on the host
        (:mod:`modelshard.loading.device`); ``"cpu"`` is zero-copy as without a device::

            sd = h.load_state_dict(["a", "b"], dtype="bfloat16", framework="torch")
            sd = h.load_state_dict(device="cuda:0")
        """
        wanted = (list(self.manifest.without_optimizer_state().tensors) if names is None
                  else list(dict.fromkeys(names)))
        cast = None if dtype is None else as_dtype(dtype)
        rows = dict(rows or {})
        for name in rows:
            if name not in wanted:
                raise UsageError(f"rows names {name!r}, which is not among the tensors asked for")
        requests = [(n, self._check_rows(n, *rows[n]) if n in rows else None) for n in wanted]
        if device is None:
            return self._fetch(requests, framework=framework or "numpy", cast=cast)
        if framework not in (None, "torch"):
            raise UsageError(f"framework={framework!r} with device={device!r}: devices hold "
                             "torch tensors; leave framework out")
        target = resolve_device(device)
        if target.type == "cpu":  # the checked bytes are the tensors: no copy to make
            return self._fetch(requests, framework="torch", cast=cast)
        if self._closed:
            raise UsageError(f"the handle of {self.key} is closed; open the model again")
        return load_state_dict_to(self, requests, device=target, cast=cast,
                                  pool_bytes=pool_bytes, workers=workers)

    def load_into(self, module: Any, *, device: Any = None,
                  device_map: Mapping[str, Any] | None = None, strict: bool = True,
                  rows: Mapping[str, tuple[int, int]] | None = None,
                  pool_bytes: int = DEFAULT_POOL_BYTES, workers: int | None = None
                  ) -> FillReport:
        """Fill a torch ``module``'s parameters and persistent buffers (by their
        ``state_dict`` names) straight into their device memory, tensor by tensor, without
        a copy of the model on the host: the host memory added is the pool
        (``pool_bytes``). A module built on the ``meta`` device gets its tensors on
        ``device``, or per module prefix by an accelerate-style ``device_map``
        (``{"model.layers.0": "cuda:0", "lm_head": "cpu", "": "cuda:1"}``); a tensor
        already on its device is filled in place. Floating-point tensors are cast to the
        module's dtype. Tied tensors are read once. ``strict``: every tensor of the module
        must be in the version; the version's other tensors are not read (a pipeline
        stage's module reads its own). ``rows``: ``{name: (start, stop)}`` for a
        tensor-parallel rank whose tensors hold those rows. If a check fails, a module on
        the meta device is left as it was, one filled in place is partly overwritten::

            with torch.device("meta"):
                model = MyModel()
            h.load_into(model, device="cuda:0")
        """
        if self._closed:
            raise UsageError(f"the handle of {self.key} is closed; open the model again")
        return fill_module(self, module, device=device, device_map=device_map, strict=strict,
                           rows=rows, pool_bytes=pool_bytes, workers=workers)

    def asset(self, name: str) -> bytes:
        """The bytes of one of the version's non-tensor files (``manifest.assets``), checked;
        through the handle's preload cache if it has one::

            config = json.loads(h.asset("config.json"))
        """
        return read_asset(self.catalog, self.manifest, name, cache=self._cache)

    def stats(self) -> HandleStats:
        """Counters so far (see :class:`~modelshard.loading.stats.HandleStats`)."""
        counts = self._sources.counts()
        with self._device_lock:
            counts = {k: v + self._device_counts.get(k, 0) for k, v in counts.items()}
        return self._counters.snapshot(
            shard_counts=counts,
            cache=self._cache.stats() if self._cache else None,
            scheduler=self._scheduler.stats() if self._scheduler else None)

    def close(self) -> None:
        """Release the scheduler and memory maps (arrays handed out stay valid) and add this
        session's tensor reads per shard to the catalog's access statistics."""
        if self._closed:
            return
        self._closed = True
        self._sources.close()
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

    def _add_counts(self, counts: Iterable[dict[str, int]]) -> None:
        with self._device_lock:
            for c in counts:
                for k, v in c.items():
                    self._device_counts[k] = self._device_counts.get(k, 0) + v

    def _check_rows(self, name: str, start: Any, stop: Any) -> tuple[int, int]:
        """``(start, stop)``, checked to be rows of tensor ``name``."""
        t = self._tensor(name)
        if not t.shape:
            raise UsageError(f"tensor {name!r} is 0-dimensional: it has no rows; use get()")
        for x in (start, stop):
            if isinstance(x, bool) or not isinstance(x, int):
                raise UsageError(f"get_rows({name!r}, {start!r}, {stop!r}): rows are integers")
        if not 0 <= start <= stop <= t.shape[0]:
            raise UsageError(f"get_rows({name!r}, {start}, {stop}): the tensor has {t.shape[0]} "
                             f"rows; give 0 <= start <= stop <= {t.shape[0]}")
        return start, stop

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
        plans = [(name, *segments(self._tensor(name), rows)) for name, rows in requests]
        by_shard: dict[str, set[tuple[int, int]]] = {}
        for _, _, segs in plans:
            for shard, begin, end in segs:
                by_shard.setdefault(shard, set()).add((begin, end))

        def read(shard: str, progress: Progress) -> dict[tuple[int, int], Any]:
            ranges = sorted(by_shard[shard])
            got = dict(zip(ranges, self._sources.read(shard, ranges), strict=True))
            progress(sum(e - b for b, e in ranges))
            return got

        shards = list(by_shard)
        total = sum(e - b for r in by_shard.values() for b, e in r)
        parts = run_all(read, shards, workers=self._workers, total=total, desc=f"load {self.key}")
        got = dict(zip(shards, parts, strict=True))
        out = {}
        for name, shape, segs in plans:
            t = self.manifest.tensors[name]
            bufs = [got[shard][(b, e)] for shard, b, e in segs]
            raw = bufs[0] if len(bufs) == 1 else bytearray(b"".join(bufs))
            out[name] = convert(raw, t.dtype, shape, framework, cast)
        self._counters.add(tensors=len(plans), bytes_served=total)
        for _, _, segs in plans:
            self._counters.read({s for s, _, _ in segs})
        return out
