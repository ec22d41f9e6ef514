"""Many models in one process under one byte budget: :class:`ModelPool`.

One :class:`~modelshard.scheduler.ShardScheduler` holds the units of every version served
(its shards, and its tensors split across shards held joined: :mod:`modelshard.serve.layout`),
under one ``budget_bytes``. A batch of requests to one version:

1. is *admitted*: the versions in use or pinned, this one included, must fit the budget
   together (else the batch waits), so that the scheduler can always make room by evicting
   idle units and two batches can never deadlock holding half a model each;
2. acquires every unit of its version (fetched on demand, through the preload cache if
   one is configured, each shard checked whole as fetched; a shard's header is checked
   against the manifest at its first use) and holds them while it runs;
3. runs the model over tensors that are views of the held buffers (no copy, no join), with
   :func:`torch.func.functional_call` on a weightless copy of the module (meta tensors);
4. releases the units, which stay in memory until the cost-aware policy evicts them for
   another version's, or until ``idle_release_s`` without use.

A model whose bytes exceed the budget (less the pinned versions) is **refused** with a
:class:`TooLargeError`: a forward pass needs every weight at once, so streaming layers would
fetch the whole model per request. An alias is resolved again after ``alias_ttl_s``: the
next batch uses the new version (each batch uses one version only), and an old version no
longer named is dropped from memory once its last batch ends. A version whose bytes fail a
check is never served again (:class:`UnavailableError`), while the others keep serving.

>>> pool = ModelPool("/tmp/cat", budget_bytes=1 << 30)            # doctest: +SKIP
>>> version = pool.resolve("digits@prod")                         # doctest: +SKIP
>>> pool.predict(version, [{"x": [0.0] * 64}])                   # doctest: +SKIP
[('ok', 3)]
"""

from __future__ import annotations

import contextlib
import functools
import logging
import posixpath
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelshard.cache.preload import PreloadCache, ShardRef
from modelshard.catalog.catalog import Catalog
from modelshard.catalog.manifest import Manifest, TensorRecord
from modelshard.errors import IntegrityError, ModelShardError, StorageError, UsageError
from modelshard.loading.convert import convert
from modelshard.loading.sources import shard_ref
from modelshard.scheduler import Fetched, ShardScheduler, fetch_shard
from modelshard.serve.layout import Layout, PartRef
from modelshard.shards.checksums import ChunkWriter, fixed_chunk_ends
from modelshard.verified import VerifiedShard, fresh_pages

log = logging.getLogger(__name__)


class TooLargeError(UsageError):
    """A model larger than the budget left to it: it is refused, never half-served."""


class UnavailableError(ModelShardError):
    """A version that failed a check (or cannot be built): never served again."""


@dataclass(frozen=True)
class Held:
    """A version while a batch uses it: its key and its tensors (views of held shards)."""

    key: str
    tensors: dict[str, Any]


@dataclass
class _Version:
    key: str  # name@version
    manifest: Manifest
    refs: dict[str, ShardRef]  # by the manifest's shard path
    layout: Layout
    in_flight: int = 0
    pinned: int = 0  # pin() calls
    failure: ModelShardError | None = None
    last_used: float = field(default_factory=time.monotonic)
    headers_checked: set[str] = field(default_factory=set)
    kept: dict[str, ShardRef] = field(default_factory=dict)  # part label -> its cache entry
    requests: int = 0
    runner: Any = None  # the model, built at its first batch (modelshard.serve.runner)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def nbytes(self) -> int:
        return self.layout.nbytes

    @property
    def units(self) -> Iterable[ShardRef | PartRef]:
        return self.layout.units.values()

    @functools.cached_property
    def expected(self) -> dict[str, dict[str, tuple[str, int, int]]]:
        """What each shard's header must list (:meth:`Manifest.shard_entries`)."""
        return self.manifest.shard_entries()


class ModelPool:
    """The versions served by one process, under one byte budget (see the module docstring).

    Options (keyword-only): ``cache`` (a :class:`PreloadCache` shards are read through),
    ``policy`` (``"gdsf"``, cost-aware, default; ``"lru"``), ``alias_ttl_s`` (how long an
    alias's resolution is reused), ``idle_release_s`` (free shards unused that long; None:
    only when room is needed), ``max_models`` (keep the shards of at most this many versions
    and drop the least recently used version whole: the policy of Ray Serve's model
    multiplexing, for comparison; 0: fetch per batch), ``wait_timeout_s`` (how long a batch
    waits for room), ``fetch_workers`` (shards of a batch fetched at once), ``trust_code``
    (as for ``predict``)::

        with ModelPool("hdfs:///models", budget_bytes=8 << 30) as pool:
            pool.pin("bert@prod")
            pool.predict(pool.resolve("digits@prod"), [{"x": [0.0] * 64}])
    """

    def __init__(self, catalog: str | Catalog, *, budget_bytes: int,
                 cache: PreloadCache | None = None, policy: str = "gdsf",
                 alias_ttl_s: float = 2.0, idle_release_s: float | None = None,
                 max_models: int | None = None, wait_timeout_s: float = 60.0,
                 fetch_workers: int = 4, trust_code: bool = False) -> None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0:
            raise UsageError(f"budget_bytes={budget_bytes!r}: give a positive number of bytes")
        if max_models is not None and max_models < 0:
            raise UsageError(f"max_models={max_models}: give zero or more")
        self.catalog = catalog if isinstance(catalog, Catalog) else Catalog(catalog)
        self.budget_bytes = budget_bytes
        self.cache = cache
        self.alias_ttl_s = alias_ttl_s
        self.max_models = max_models
        self.wait_timeout_s = wait_timeout_s
        self.trust_code = trust_code
        self.scheduler: ShardScheduler[ShardRef | PartRef] = ShardScheduler(
            self._fetch_unit, {},
            budget_bytes=budget_bytes, policy=policy, prefetch_depth=0,
            idle_timeout_s=idle_release_s, wait_timeout_s=wait_timeout_s)
        self._cond = threading.Condition()
        self._versions: dict[str, _Version] = {}
        self._resolved: dict[str, tuple[str, float]] = {}  # key -> (name@version, when)
        self._pins: dict[str, str] = {}  # pinned key -> the version pinned for it
        self._closed = False
        self._fetcher = ThreadPoolExecutor(fetch_workers, thread_name_prefix="modelshard-fetch")

    # -- names -----------------------------------------------------------------------------
    def resolve(self, key: str) -> str:
        """``name@version`` that ``key`` (``name``, ``name@alias``, ``name@version``) means
        now; an alias is looked up again once its resolution is ``alias_ttl_s`` old. A pinned
        key whose alias moved gets the new version pinned in place of the old."""
        now = time.monotonic()
        hit = self.resolved(key)
        if hit is not None:
            return hit
        name, version = self.catalog.resolve(key)
        target = f"{name}@{version}"
        with self._cond:
            self._resolved[key] = (target, now)
        self._register(target)
        if key in self._pins and self._pins[key] != target:
            self._move_pin(key, target)
        self._retire()
        return target

    def resolved(self, key: str) -> str | None:
        """What :meth:`resolve` gives for ``key`` if that needs no lookup now, else None (it
        never waits on the catalog: the server calls it on its event loop)."""
        with self._cond:
            hit = self._resolved.get(key)
        return hit[0] if hit is not None and time.monotonic() - hit[1] < self.alias_ttl_s else None

    def _register(self, target: str) -> _Version:
        with self._cond:
            v = self._versions.get(target)
            if v is not None:
                return v
        name, version = target.split("@", 1)
        manifest = self.catalog.manifest(name, version)
        vdir = self.catalog.version_dir(name, version)
        refs = {s.path: shard_ref(s, posixpath.join(vdir, s.path), target) for s in manifest.shards}
        v = _Version(target, manifest, refs, Layout.of(manifest, refs, target))
        with self._cond:
            if target in self._versions:
                return self._versions[target]
            if v.nbytes <= self.budget_bytes:  # a larger one is refused at admission
                self.scheduler.add({u: u.size for u in v.units})
            self._versions[target] = v
        return v

    # -- pins ------------------------------------------------------------------------------
    def pin(self, key: str) -> str:
        """Hold every shard of the version ``key`` means in memory, now and after each move
        of its alias (``serve --pin``); returns that version. TooLargeError if the pinned
        versions would not fit the budget."""
        target = self.resolve(key)
        self._pin_version(target)
        with self._cond:
            self._pins[key] = target
        return target

    def refresh(self) -> None:
        """Look the pinned keys up again (the server calls it every second), so that a pinned
        alias that moved is pinned at its new version even when no request names it."""
        with self._cond:
            keys = list(self._pins)
        for key in keys:
            try:
                self.resolve(key)
            except ModelShardError as e:  # the catalog unreachable a moment: keep what is pinned
                log.warning("%s: cannot look it up again: %s", key, e)

    def _pin_version(self, target: str) -> None:
        with self._cond:
            v = self._versions[target]
            if not v.pinned:
                pinned = sum(x.nbytes for x in self._versions.values() if x.pinned)
                if pinned + v.nbytes > self.budget_bytes:
                    raise TooLargeError(
                        f"cannot pin {target} ({v.nbytes} bytes): {pinned} bytes are pinned "
                        f"already and the budget is {self.budget_bytes}; raise --budget or pin less")
            v.pinned += 1
        done = []
        try:
            for unit in v.units:
                self.scheduler.pin(unit)
                done.append(unit)
        except BaseException:
            for unit in done:
                self.scheduler.unpin(unit)
            with self._cond:
                v.pinned -= 1
            raise

    def _unpin_version(self, target: str) -> None:
        with self._cond:
            v = self._versions[target]
            for unit in v.units:
                self.scheduler.unpin(unit)
            v.pinned -= 1
            self._cond.notify_all()

    def _move_pin(self, key: str, target: str) -> None:
        with self._cond:
            old = self._pins.get(key)
            if old is None or old == target:
                return
            self._pins[key] = target
        try:
            self._pin_version(target)
        except TooLargeError:  # both do not fit: let go of the old one first
            self._unpin_version(old)
            self._pin_version(target)
        else:
            self._unpin_version(old)

    # -- batches ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def hold(self, target: str) -> Iterator[Held]:
        """Admit a batch on version ``target`` (``name@version``, from :meth:`resolve`) and
        hold its shards meanwhile; the value holds its tensors::

            with pool.hold("digits@3") as held:
                held.tensors["0.weight"].shape
        """
        v = self._admit(target)
        try:
            with contextlib.ExitStack() as stack:
                bufs = self._acquire_all(v, stack)
                try:
                    self._check_headers(v, bufs)
                    tensors = {name: _tensor(t, bufs, v.layout.where[name])
                               for name, t in v.manifest.tensors.items()}
                except IntegrityError as e:
                    self._fail(v, e)
                    raise UnavailableError(f"{target} failed verification and is not served: {e}") from e
                yield Held(target, tensors)
                del tensors
        except IntegrityError as e:  # a shard's bytes did not match as fetched
            self._fail(v, e)
            raise UnavailableError(f"{target} failed verification and is not served: {e}") from e
        finally:
            with self._cond:
                v.in_flight -= 1
                v.last_used = time.monotonic()
                if not v.in_flight:  # only then is there more room to admit another version
                    if v.failure is not None and not v.pinned:  # never served again: free it
                        self._drop_units(v)
                    self._cond.notify_all()
            self._trim()
            self._retire()

    def _acquire_all(self, v: _Version, stack: contextlib.ExitStack) -> dict[str, Any]:
        """Every unit of ``v`` (by label); the missing ones fetched in parallel
        (``fetch_workers`` and this thread, which takes those in memory itself: a hand-off to
        another thread per unit costs more than a hit). Each one acquired is released by
        ``stack``, also when another fails. Admission has made room, so no fetch waits for
        another batch's units."""
        leases = {label: self.scheduler.acquire(u) for label, u in v.layout.units.items()}
        missing = [label for label, u in v.layout.units.items() if not self.scheduler.contains(u)]
        futures = {label: self._fetcher.submit(leases[label].__enter__) for label in missing[1:]}
        bufs: dict[str, Any] = {}
        failure: BaseException | None = None

        def take(label: str, get: Callable[[], Any]) -> None:
            nonlocal failure
            try:
                bufs[label] = get()
            except BaseException as e:  # noqa: BLE001 - raised below, once all are accounted for
                failure = failure or e
                return
            stack.push(leases[label].__exit__)

        for label, lease in leases.items():
            if label not in futures and failure is None:
                take(label, lease.__enter__)
        for label, fut in futures.items():
            take(label, fut.result)
        if failure is not None:
            raise failure
        return bufs

    def in_memory(self, target: str) -> bool:
        """Whether every unit of version ``target`` is in memory now (it may not be a
        moment later)."""
        with self._cond:
            v = self._versions.get(target)
        return v is not None and all(self.scheduler.contains(u) for u in v.units)

    def predict(self, target: str, records: Sequence[dict], *, inputs: str = "features",
                output: str = "class") -> list[tuple[str, Any]]:
        """Run ``records`` (JSON objects as ``predict``'s JSON lines hold them) through version
        ``target``, as one batch; per record ``("ok", value)`` or ``("bad", reason)``."""
        with self.hold(target) as held:
            return self.run(held, records, inputs=inputs, output=output)

    def run(self, held: Held, records: Sequence[dict], *, inputs: str = "features",
            output: str = "class") -> list[tuple[str, Any]]:
        """Run ``records`` through the version that ``held`` (from :meth:`hold`) holds, as
        :meth:`predict` does."""
        from modelshard.serve.runner import runner_for

        return runner_for(self, self._versions[held.key]).run(held.tensors, records, inputs=inputs,
                                                              output=output)

    def _admit(self, target: str) -> _Version:
        deadline = time.monotonic() + self.wait_timeout_s
        while True:
            v = self._register(target)  # again if an alias moved away and it was retired
            with self._cond:
                if self._versions.get(target) is not v:
                    continue
                if self._closed:
                    raise UnavailableError("the server is shutting down")
                if v.failure is not None:
                    raise UnavailableError(f"{target} failed verification and is not served: {v.failure}")
                pinned = sum(x.nbytes for x in self._versions.values() if x.pinned and x is not v)
                if v.nbytes + pinned > self.budget_bytes:
                    raise TooLargeError(
                        f"{target} has {v.nbytes} bytes of weights; the memory budget is "
                        f"{self.budget_bytes} bytes, {pinned} of them pinned; raise --budget, pin "
                        "less, or reshard the model smaller (the server does not stream layers)")
                others = sum(x.nbytes for x in self._versions.values()
                             if (x.pinned or x.in_flight) and x is not v)
                if v.in_flight or v.pinned or others + v.nbytes <= self.budget_bytes:
                    v.in_flight += 1
                    v.requests += 1
                    return v
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise UnavailableError(f"{target}: no room within the budget after "
                                           f"{self.wait_timeout_s} s (other models in use)")
                self._cond.wait(remaining)

    def _check_headers(self, v: _Version, bufs: dict[str, Any]) -> None:
        for label, buf in bufs.items():
            if label in v.refs:  # a shard unit (a part's shards are checked as it is fetched)
                self._check_header(v, label, buf)

    def _check_header(self, v: _Version, path: str, buf: Any) -> None:
        """Check shard ``path``'s header in ``buf`` against the manifest, at its first use
        only: its bytes are checked whole at every fetch, so they cannot differ later."""
        if path in v.headers_checked:
            return
        record = next(s for s in v.manifest.shards if s.path == path)
        VerifiedShard.over_buffer(buf, record, model=v.key, uri=self.catalog.fs.uri(v.refs[path].path),
                                  checked=True).header(v.expected[path])
        with self._cond:
            v.headers_checked.add(path)

    def _fetch_unit(self, unit: ShardRef | PartRef) -> Fetched:
        """A unit's bytes, checked (called by the scheduler, from several threads): a shard
        as :func:`~modelshard.scheduler.fetch_shard` gives it; a part copied out of its
        shards, each fetched so (checked whole; its header at its first use), or, with a
        preload cache, mapped from the entry it was kept in the last time (:meth:`_keep`)."""
        if isinstance(unit, ShardRef):
            return fetch_shard(self.catalog.fs, unit, cache=self.cache, writable=True)
        with self._cond:
            v = self._versions[unit.model]
        kept = v.kept.get(unit.name)
        if kept is not None and (mapped := self.cache.lookup(kept)) is not None:
            return Fetched(memoryview(mapped), local=True)
        fetched = self._copy_part(v, unit)
        if self.cache is not None and 0 < unit.size <= self.cache.max_bytes:
            self._keep(v, unit, fetched.data)
        return fetched

    def _keep(self, v: _Version, unit: PartRef, data: memoryview) -> None:
        """Keep a part just copied as an entry of the preload cache, to be mapped from there
        the next times (a fifth of the cost of copying it again: docs/benchmarks.md, issue
        14). Its checksums are computed here, from bytes copied out of checked shards, and
        kept in memory only: an entry is served only if it matches them."""
        ref = v.kept.get(unit.name)
        if ref is None:
            sums = ChunkWriter(fixed_chunk_ends(unit.size), sha256=True)
            sums.update(data)
            ref = ShardRef(f"{v.key} {unit.name}", unit.size, sums.sha256(), sums.finish(), v.key)
        try:
            self.cache.put(data, ref)
        except StorageError as e:  # the copy in memory serves; it is copied again next time
            log.warning("%s: not kept in the preload cache: %s", ref.path, e)
            return
        with self._cond:
            v.kept[unit.name] = ref

    def _copy_part(self, v: _Version, unit: PartRef) -> Fetched:
        out = memoryview(fresh_pages(unit.size))
        local: bool | None = True
        for path, spans in v.layout.plans[unit.name].items():
            got = fetch_shard(self.catalog.fs, v.refs[path], cache=self.cache)
            self._check_header(v, path, got.data)
            for s in spans:
                out[s.at:s.at + s.end - s.begin] = got.data[s.begin:s.end]
            local = local and got.local
            del got
        return Fetched(out, local=local)

    def _fail(self, v: _Version, e: ModelShardError) -> None:
        log.error("%s: %s; the version is not served any more", v.key, e)
        with self._cond:
            v.failure = v.failure or e

    # -- memory ----------------------------------------------------------------------------
    def _trim(self) -> None:
        """Whole-model LRU (``max_models``): drop the least recently used idle versions."""
        if self.max_models is None:
            return
        with self._cond:
            resident = [v for v in self._versions.values()
                        if any(self.scheduler.contains(u) for u in v.units)]
            idle = sorted((v for v in resident if not v.in_flight and not v.pinned),
                          key=lambda v: v.last_used)
            for v in idle[:max(0, len(resident) - self.max_models)]:
                self._drop_units(v)

    def _drop_units(self, v: _Version) -> None:
        sizes = {u: u.size for u in v.units}
        self.scheduler.remove(sizes)
        self.scheduler.add(sizes)

    def _retire(self) -> None:
        """Forget versions that no key names any more and no batch uses (an alias moved)."""
        now = time.monotonic()
        with self._cond:
            named = {t for t, _ in self._resolved.values()} | set(self._pins.values())
            for key, v in list(self._versions.items()):
                # Recently used ones stay a while: a batch may be on its way to them.
                if key not in named and not v.in_flight and not v.pinned \
                        and now - v.last_used > self.alias_ttl_s:
                    self.scheduler.remove(v.units)
                    del self._versions[key]

    # -- reporting -------------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        """Per version known: its bytes, the bytes in memory now, pins, batches in flight and
        whether it failed (``GET /v1/models``). ``shards`` and ``resident_shards`` count its
        units (:mod:`modelshard.serve.layout`): its shards, save that the tensors of shards a
        split tensor crosses are held as parts."""
        with self._cond:
            names: dict[str, list[str]] = {}
            for key, (target, _) in self._resolved.items():
                names.setdefault(target, []).append(key)
            out = []
            for key, v in sorted(self._versions.items()):
                resident = [u for u in v.units if self.scheduler.contains(u)]
                out.append({
                    "model": key, "keys": sorted(names.get(key, [])), "bytes": v.nbytes,
                    "shards": len(v.layout.units), "resident_shards": len(resident),
                    "resident_bytes": sum(r.size for r in resident), "pinned": bool(v.pinned),
                    "in_flight": v.in_flight, "batches": v.requests,
                    "failed": str(v.failure) if v.failure else None})
        return out

    def close(self) -> None:
        """Refuse new batches and free every shard not in use."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._fetcher.shutdown(wait=True)
        self.scheduler.close()

    def __enter__(self) -> ModelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tensor(t: TensorRecord, bufs: dict[str, Any], where: tuple[str, int, int]) -> Any:
    """The torch tensor of ``t``: a view of the held buffer of its unit."""
    label, begin, end = where
    return convert(memoryview(bufs[label])[begin:end], t.dtype, t.shape, "torch", None)


def records_as_lines(records: Iterable[dict]) -> list[str]:
    """Records as the JSON lines a :class:`~modelshard.jobs.predict.task.Predictor` parses, each
    with its position as id (what the caller's id was is given back by position)."""
    return [orjson.dumps({**r, "id": i}).decode() if isinstance(r, dict) else orjson.dumps(r).decode()
            for i, r in enumerate(records)]
