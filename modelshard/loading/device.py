"""Loading straight into device memory, and into a model without a second copy.

The pipeline (docs/architecture.md, "Loading onto a device"):

1. **Plan.** Each tensor (or its rows, or its pieces in several shards: :mod:`.plan`) gets a
   destination on the device: a view of one preallocated buffer per run of adjacent whole
   tensors of a shard (a whole load: one buffer per shard), or a buffer of its own (rows,
   split tensors, a cast), or the module's own tensor (:func:`fill_module`). The byte
   ranges to read, widened to whole CRC32C chunks, are cut into units of at most one slot
   of the pool, at chunk boundaries.
2. **Read and check.** ``workers`` threads each take a unit, a slot of the pool (pinned
   host memory on CUDA; ``pool_bytes`` bounds it) and read the unit into it (``pread`` of
   the local shard, an HDFS range read). Each chunk's checksum is checked in the slot by
   :class:`~modelshard.verified.VerifiedShard`, the one verified read path, so the bytes
   checked are the bytes that are copied. A preload-cache entry was checked whole in its
   memory map (:meth:`~modelshard.cache.preload.PreloadCache.map`); slots are filled from
   those pages.
3. **Copy.** The slot is copied asynchronously (one CUDA stream per thread) to its place on
   the device; the slot goes back to the pool with an event, and whoever takes it next
   waits for that copy first. So reading and checking on the host overlap the copies.
4. **Views.** Once every stream is done, tensors are typed views (dtype, shape) of their
   buffers.

``device="cpu"`` for a state dict needs no pool and no copy: the checked bytes are the
result (memory-mapped, zero-copy, as :meth:`ModelHandle.load_state_dict` always did); a
fresh buffer per shard measured 5x slower here (page faults and zeroing of new memory).
:func:`fill_module` takes the pipeline on every device: the module's tensors are the
destinations, and the host memory it adds is the pool. Into host memory, a shard mostly
wanted skips the pool: it is read front to back straight into its destinations
(:func:`_streamed`), as fast as a plain read loop.

>>> import numpy as np, torch, modelshard
>>> _ = modelshard.push({"w": np.ones((4, 3), np.float32)}, "dev", catalog="/tmp/devcat")
>>> with modelshard.open("dev", catalog="/tmp/devcat") as h:
...     sd = load_state_dict_to(h, [("w", (1, 3))], device=torch.device("cpu"))
>>> sd["w"].shape, sd["w"].dtype
(torch.Size([2, 3]), torch.float32)
"""

from __future__ import annotations

import bisect
import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from modelshard.catalog.manifest import ShardRecord
from modelshard.catalog.transfer import check_workers, run_all
from modelshard.errors import (
    IntegrityError,
    ModelShardError,
    NotFoundError,
    StorageError,
    UsageError,
)
from modelshard.fs.locality import replica_is_local
from modelshard.loading.plan import segments
from modelshard.shards.checksums import Checksums
from modelshard.shards.dtypes import DType
from modelshard.verified import (
    VerifiedShard,
    coalesce,
    damaged,
    expected_header,
    read_stream,
)

if TYPE_CHECKING:
    import torch

    from modelshard.loading.handle import ModelHandle

DEFAULT_POOL_BYTES = 256 << 20  # 32 slots of 8 MiB: two in flight per thread of 16
SLOT_BYTES = 8 << 20
STREAM_SHARE = 0.5  # a shard at least this much wanted is read in one stream (see _streamed)
_FLOATS = frozenset({"F64", "F32", "F16", "BF16"})


def resolve_device(device: Any, *, what: str = "device") -> torch.device:
    """A torch device from ``"cuda"``, ``"cuda:1"``, ``1``, ``"cpu"`` or a torch.device;
    UsageError for one this machine lacks, ``meta`` and ``disk``."""
    import torch

    try:
        d = torch.device(f"cuda:{device}" if isinstance(device, int) and not isinstance(
            device, bool) else device)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"{what}={device!r} is not a device; give 'cuda', 'cuda:N' or "
                         "'cpu'") from e
    if d.type == "meta":
        raise UsageError(f"{what}={device!r}: the meta device holds no data; give the device "
                         "the weights go to ('cuda:0', 'cpu')")
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{what}={device!r}: torch sees no CUDA device on this machine; "
                             "use 'cpu'")
        d = torch.device("cuda", torch.cuda.current_device() if d.index is None else d.index)
        if d.index >= torch.cuda.device_count():
            raise UsageError(f"{what}={device!r}: this machine has "
                             f"{torch.cuda.device_count()} CUDA devices")
    elif d.type != "cpu":
        raise UsageError(f"{what}={device!r}: modelshard loads onto 'cuda' devices and the "
                         "'cpu'")
    return d


def rank_rows(rows: int, *, rank: int, world_size: int) -> tuple[int, int]:
    """The ``(start, stop)`` rows that ``rank`` of ``world_size`` owns when ``rows`` are split
    evenly, the first ``rows % world_size`` ranks taking one more (tensor parallelism)::

        h.load_state_dict(["embed.weight"], device=f"cuda:{rank}",
                          rows={"embed.weight": rank_rows(32000, rank=rank, world_size=8)})
    """
    for name, v in (("rows", rows), ("rank", rank), ("world_size", world_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise UsageError(f"rank_rows: {name}={v!r}; give a whole number")
    if not 0 <= rank < world_size:
        raise UsageError(f"rank_rows: rank={rank} is not one of world_size={world_size} ranks")
    base, extra = divmod(rows, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


# -- the plan --------------------------------------------------------------------------
@dataclass
class _Want:
    """Bytes ``begin..end`` of ``shard`` go to ``dest`` (1-D) from element ``at``; they
    are ``dtype`` values (uint8 for a plain byte copy)."""

    shard: str
    begin: int
    end: int
    dest: Any
    at: int
    dtype: Any


@dataclass
class _Copy:
    dest: Any
    at: int
    src: int  # byte offset in the unit
    nbytes: int
    dtype: Any


@dataclass
class _Unit:
    shard: str
    lo: int
    hi: int
    copies: list[_Copy] = field(default_factory=list)


def _units(wants: Sequence[_Want], records: Mapping[str, ShardRecord], slot_bytes: int
           ) -> list[_Unit]:
    """The reads that serve ``wants``: runs of adjacent chunks cut at chunk boundaries into
    units of at most ``slot_bytes``, each with the copies it feeds."""
    by_shard: dict[str, list[_Want]] = {}
    for w in wants:
        if w.end > w.begin:
            by_shard.setdefault(w.shard, []).append(w)
    units = []
    for shard, ws in by_shard.items():
        c = records[shard].checksums
        if c is None:  # no chunks: one run per want, cut anywhere (at multiples of 8 bytes)
            runs = [(w.begin, w.end, [w]) for w in ws]
        else:
            at: dict[tuple[int, int], list[_Want]] = {}
            for w in ws:
                at.setdefault((w.begin, w.end), []).append(w)
            widened = [(c.chunk_range(c.chunks_over(b, e)[0])[0],
                        c.chunk_range(c.chunks_over(b, e)[-1])[1], b, e) for b, e in at]
            runs = [(lo, hi, [w for m in members for w in at[m]])
                    for lo, hi, members in coalesce(widened)]
        for lo, hi, members in runs:
            mine = [_Unit(shard, a, b) for a, b in _cut(c, lo, hi, slot_bytes, shard)]
            for u in mine:
                u.copies = _copies(u, members)
            units += mine
    return units


def _cut(c: Checksums | None, lo: int, hi: int, slot_bytes: int, shard: str
         ) -> list[tuple[int, int]]:
    """``lo..hi`` in pieces of at most ``slot_bytes``, cut at chunk ends (anywhere, at
    multiples of 8 bytes from ``lo``, without chunks)."""
    if c is None:
        return [(a, min(a + slot_bytes, hi)) for a in range(lo, hi, slot_bytes)]
    ends = c.ends[bisect.bisect_right(c.ends, lo):bisect.bisect_left(c.ends, hi)]
    pieces, start, last = [], lo, lo
    for end in [*ends, hi]:
        if end - last > slot_bytes:
            raise UsageError(
                f"pool_bytes: a slot of {slot_bytes} bytes is smaller than one checksum chunk "
                f"({end - last} bytes at {last} of {shard}); give pool_bytes of at least "
                f"{end - last}")
        if end - start > slot_bytes:
            pieces.append((start, last))
            start = last
        last = end
    return [*pieces, (start, hi)]


def _copies(u: _Unit, wants: Sequence[_Want]) -> list[_Copy]:
    """What unit ``u`` feeds, adjacent byte copies into one buffer merged into one."""
    out: list[_Copy] = []
    for w in sorted(wants, key=lambda w: w.begin):
        b, e = max(w.begin, u.lo), min(w.end, u.hi)
        if b >= e:
            continue
        c = _Copy(w.dest, w.at + (b - w.begin) // w.dtype.itemsize, b - u.lo, e - b, w.dtype)
        p = out[-1] if out else None
        if (p is not None and p.dest is c.dest and p.dtype is c.dtype and p.dtype.itemsize == 1
                and p.src + p.nbytes == c.src and p.at + p.nbytes == c.at):
            p.nbytes += c.nbytes
        else:
            out.append(c)
    return out


# -- reading ---------------------------------------------------------------------------
class _Reader:
    """One shard as the pipeline reads it: chosen source (the preload cache, a local file,
    HDFS range reads) opened once, header checked once, and every unit read into the
    caller's slot and checked there by :class:`VerifiedShard`."""

    def __init__(self, handle: ModelHandle, record: ShardRecord, closing: contextlib.ExitStack,
                 expected: dict[str, tuple[str, int, int]]) -> None:
        self._h, self.record, self._expected = handle, record, expected
        self._path = _shard_path(handle, record)
        self._closing = closing
        self._lock = threading.Lock()
        self._target = threading.local()
        self._fd: int | None = None
        self._mapped: Any = None  # a preload-cache entry, checked whole in this map
        self.shard: VerifiedShard | None = None
        self._failure: ModelShardError | None = None

    def read(self, lo: int, hi: int, into: memoryview) -> memoryview:
        """Bytes ``lo..hi``, checked, in ``into`` (the caller's slot)."""
        self._open()
        self._target.view = into
        try:
            return self.shard.read([(lo, hi)])[0]  # a view of ``into`` (see _pread)
        finally:
            self._target.view = None

    def _open(self) -> None:
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if self.shard is not None:
                return
            try:
                self._attach()
            except ModelShardError as e:
                self._failure = e
                raise

    def _attach(self) -> None:
        h, rec, fs = self._h, self.record, self._h.catalog.fs
        cache, trusted = h._cache, False
        if _through_cache(h, rec):
            # Checked whole in this map (a hit) or on its way into the cache (a miss): the
            # slots are filled from these very pages, which are not checked again.
            self._mapped = cache.map(fs, self._path, sha256=rec.sha256, size=rec.size,
                                     checksums=rec.checksums, model=h.key)
            self._closing.callback(_unmap, self._mapped)
            source, local, trusted = "cache", True, True
        elif (path := fs.local_path(self._path)) is not None:
            try:
                self._fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError as e:
                raise _missing(h, path) from e
            except OSError as e:
                raise StorageError(f"{path}: cannot read the shard ({e.strerror or e})") from e
            self._closing.callback(os.close, self._fd)
            source, local = "file", True
        else:
            source, local = "range", replica_is_local(fs, self._path)
        self.shard = VerifiedShard(
            rec, model=h.key, uri=fs.uri(self._path), pread=self._pread, buffer=None,
            stream=lambda: read_stream(fs, self._path, rec, model=h.key), checked=trusted,
            unverified_for_benchmarks=h._unverified)
        if not h._unverified:
            self.shard.header(self._expected)
        h._counters.source(source, local=local)

    def _pread(self, offset: int, n: int) -> Any:
        view = getattr(self._target, "view", None)
        if view is None or len(view) < n:  # the header, or a check of the whole shard
            view = memoryview(bytearray(n))
        view = view[:n]
        if self._mapped is not None:
            data = memoryview(self._mapped)[offset:offset + n]
            view[:len(data)] = data
            return view[:len(data)]
        if self._fd is None:
            data = self._h.catalog.fs.read_range(self._path, offset, n)
            view[:len(data)] = data
            return view[:len(data)]
        got = 0
        try:
            while got < n and (k := os.preadv(self._fd, [view[got:]], offset + got)):
                got += k
        except OSError as e:
            raise StorageError(f"{self._path}: cannot read the shard ({e.strerror or e})") from e
        return view[:got]


def _unmap(mapped: Any) -> None:
    with contextlib.suppress(BufferError, AttributeError):  # views still held; or b""
        mapped.close()


class _Pool:
    """``n`` slots of ``slot_bytes`` (pinned when ``pinned``), reused: a slot comes back with
    the events of the copies from it, and is handed out again once they are done."""

    def __init__(self, n: int, slot_bytes: int, *, pinned: bool) -> None:
        import torch

        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(n):
            self._free.put((torch.empty(slot_bytes, dtype=torch.uint8, pin_memory=pinned), []))

    @contextlib.contextmanager
    def slot(self) -> Iterator[tuple[Any, list]]:
        slot, events = self._free.get()
        for event in events:
            event.synchronize()
        after: list = []  # the caller adds the events of its copies
        try:
            yield slot, after
        finally:
            self._free.put((slot, after))


def _run(handle: ModelHandle, wants: Sequence[_Want], *, pool_bytes: int,
         workers: int | None) -> int:
    """Read, check and copy every want; the bytes served."""
    import torch

    if isinstance(pool_bytes, bool) or not isinstance(pool_bytes, int) or pool_bytes < 1:
        raise UsageError(f"pool_bytes={pool_bytes!r}: give a number of bytes")
    workers = check_workers(workers) if workers is not None else min(16, os.cpu_count() or 1)
    records = {s.path: s for s in handle.manifest.shards}
    slot_bytes = max(8, min(SLOT_BYTES, pool_bytes) // 8 * 8)
    streamed = _streamed(handle, wants, records)
    units = _units([w for w in wants if w.shard not in streamed], records, slot_bytes)
    if not units and not streamed:
        return 0
    n_slots = max(1, pool_bytes // slot_bytes)
    workers = min(workers, len(streamed) + min(n_slots, len(units)))
    gpus = sorted({w.dest.device for w in wants if w.dest.device.type == "cuda"}, key=str)
    pool = _Pool(min(n_slots, len(units)), slot_bytes, pinned=bool(gpus))
    streams = threading.local()  # this thread's stream on each GPU

    def copy(u: _Unit, data: Any, after: list) -> None:
        by_device: dict[Any, list[_Copy]] = {}
        for c in u.copies:
            by_device.setdefault(c.dest.device, []).append(c)
        for dev, copies in by_device.items():
            if dev.type != "cuda":
                _copy_all(copies, data)
                continue
            if not hasattr(streams, "by_device"):
                streams.by_device = {}
            mine = streams.by_device.get(dev)
            if mine is None:
                mine = streams.by_device[dev] = torch.cuda.Stream(dev)
            with torch.cuda.device(dev), torch.cuda.stream(mine):
                _copy_all(copies, data)
                event = torch.cuda.Event()
                event.record(mine)
            after.append(event)

    total = sum(u.hi - u.lo for u in units) + sum(records[p].size for p in streamed)
    with contextlib.ExitStack() as closing:
        expected = handle.manifest.shard_entries()
        readers = {p: _Reader(handle, records[p], closing, expected[p])
                   for p in {u.shard for u in units}}

        def run(task: _Unit | str, progress: Callable[[int], object]) -> None:
            if isinstance(task, str):
                _stream(handle, records[task], streamed[task], expected[task], progress)
                return
            with pool.slot() as (slot, after):
                got = readers[task.shard].read(task.lo, task.hi, memoryview(slot.numpy()))
                copy(task, slot[:len(got)], after)
            progress(task.hi - task.lo)

        try:
            run_all(run, [*streamed, *units], workers=workers, total=total,
                    desc=f"load {handle.key}")
        finally:
            for dev in gpus:  # the copies are done before any tensor is handed out
                torch.cuda.synchronize(dev)
            handle._add_counts(r.shard.counts for r in readers.values() if r.shard is not None)
    handle._counters.read({*readers, *streamed})
    return sum(w.end - w.begin for w in wants)


def _streamed(handle: ModelHandle, wants: Sequence[_Want], records: Mapping[str, ShardRecord]
              ) -> dict[str, list[_Want]]:
    """The shards read front to back in one stream straight into their destinations, no slot
    and no copy (``{shard: its wants}``): those at least ``STREAM_SHARE`` wanted, every want a
    plain byte copy into host memory, with chunk checksums, and not read through the preload
    cache (whose map is checked whole already). A whole model loaded into a CPU module reads
    as fast as a plain read loop so (docs/benchmarks.md, issue 9); sparse reads (a pipeline
    stage, a tensor-parallel rank's rows) stay with the units."""
    by_shard: dict[str, list[_Want]] = {}
    for w in wants:
        if w.end > w.begin:
            by_shard.setdefault(w.shard, []).append(w)
    out = {}
    for shard, ws in by_shard.items():
        rec = records[shard]
        if rec.checksums is None or _through_cache(handle, rec):
            continue
        if any(w.dest.device.type != "cpu" or not _byte_copy(w.dtype, w.dest) for w in ws):
            continue
        spans = sorted((w.begin, w.end) for w in ws)
        if all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)) and \
                sum(e - b for b, e in spans) >= STREAM_SHARE * rec.size:
            out[shard] = ws
    return out


def _stream(handle: ModelHandle, rec: ShardRecord, wants: Sequence[_Want],
            expected: dict[str, tuple[str, int, int]], progress: Callable[[int], object]) -> None:
    """Read shard ``rec`` front to back once, each want's bytes straight into its destination,
    checked as they arrive; its header checked to list ``expected``."""
    import torch

    fs, path = handle.catalog.fs, _shard_path(handle, rec)
    header = memoryview(bytearray(rec.checksums.data_start))
    into = [(0, header)]
    for w in wants:
        isz = w.dest.element_size()
        flat = memoryview(w.dest.view(torch.uint8).numpy())
        into.append((w.begin, flat[w.at * isz:w.at * isz + w.end - w.begin]))
    try:
        read_stream(fs, path, rec, model=handle.key, into=into, progress=progress,
                    unverified_for_benchmarks=handle._unverified)
    except NotFoundError as e:
        raise _missing(handle, fs.uri(path)) from e
    if not handle._unverified:
        try:
            expected_header(bytes(header[8:]), expected, size=rec.size, uri=fs.uri(path))
        except ValueError as e:
            raise damaged(handle.key, fs.uri(path), str(e)) from e
    handle._counters.source("file" if fs.local_path(path) is not None else "range",
                            local=replica_is_local(fs, path))
    handle._add_counts([{"range_reads": 1, "range_bytes": rec.size,
                         "verified_bytes": 0 if handle._unverified else rec.size}])


def _shard_path(handle: ModelHandle, rec: ShardRecord) -> str:
    return handle.catalog.version_dir(handle.manifest.name, handle.manifest.version) + "/" + rec.path


def _through_cache(handle: ModelHandle, rec: ShardRecord) -> bool:
    """Whether shard ``rec`` is read through the handle's preload cache (a hit, or a miss on
    its way in): its map is checked whole there."""
    cache = handle._cache
    return cache is not None and (handle._fill_cache or cache.contains(rec.sha256))


def _missing(handle: ModelHandle, where: str) -> NotFoundError:
    return NotFoundError(f"{handle.key}: shard {where} is missing; 'modelshard verify {handle.key}' "
                         "checks the version")


def _byte_copy(dtype: Any, dest: Any) -> bool:
    """Whether values of ``dtype`` go into ``dest`` as they are (no cast)."""
    return dtype.itemsize == 1 or dtype == dest.dtype


def _copy_all(copies: Sequence[_Copy], data: Any) -> None:
    import torch

    for c in copies:
        src = data[c.src:c.src + c.nbytes]
        if _byte_copy(c.dtype, c.dest):  # bytes: any alignment
            dest = c.dest.view(torch.uint8)
            isz = c.dest.element_size()
            dest[c.at * isz:c.at * isz + c.nbytes].copy_(src, non_blocking=True)
        else:  # a cast, element by element
            if c.src % c.dtype.itemsize:
                src = src.clone()
            n = c.nbytes // c.dtype.itemsize
            c.dest[c.at:c.at + n].copy_(src.view(c.dtype), non_blocking=True)


# -- the verbs' pipelines ----------------------------------------------------------------
def load_state_dict_to(handle: ModelHandle,
                       requests: Sequence[tuple[str, tuple[int, int] | None]], *,
                       device: torch.device, cast: DType | None = None,
                       pool_bytes: int = DEFAULT_POOL_BYTES, workers: int | None = None
                       ) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` on ``device`` through the pipeline (any device, the CPU too, where
    it is the staged path that accelerators take); ``requests``: ``(name, rows or None)``.
    Whole tensors of a shard share one buffer per run of adjacent ones (views of it)."""
    import torch

    wants: list[_Want] = []
    out: dict[str, Any] = {}
    whole: list[tuple[str, str, int, int]] = []
    for name, rows in requests:
        t = handle._tensor(name)
        shape, segs = segments(t, rows)
        target = cast if cast is not None and t.dtype.name in _FLOATS else t.dtype
        if rows is None and len(segs) == 1 and target is t.dtype:
            whole.append((name, *segs[0]))
            continue
        out[name] = torch.empty(shape, dtype=target.torch, device=device)
        at = 0
        for shard, b, e in segs:
            wants.append(_Want(shard, b, e, out[name].view(-1), at, t.dtype.torch))
            at += (e - b) // t.dtype.itemsize
    by_shard: dict[str, list[tuple[int, int, int, int]]] = {}
    for _, shard, b, e in whole:
        by_shard.setdefault(shard, []).append((b, e, b, e))
    place: dict[tuple[str, int, int], tuple[Any, int]] = {}
    for shard, ranges in by_shard.items():
        for lo, hi, members in coalesce(ranges):
            buf = torch.empty(hi - lo, dtype=torch.uint8, device=device)
            for b, e in members:
                place[(shard, b, e)] = (buf, b - lo)
                wants.append(_Want(shard, b, e, buf, b - lo, torch.uint8))
    served = _run(handle, wants, pool_bytes=pool_bytes, workers=workers)
    for name, shard, b, e in whole:
        t = handle.manifest.tensors[name]
        buf, at = place[(shard, b, e)]
        view = buf[at:at + e - b]
        if at % t.dtype.itemsize:  # packed after an odd-sized tensor: a copy of its own
            view = view.clone()
        out[name] = view.view(t.dtype.torch).view(t.shape)
    handle._counters.add(tensors=len(requests), bytes_served=served)
    return {name: out[name] for name, _ in requests}


@dataclass(frozen=True)
class FillReport:
    """What :func:`fill_module` did: the module's tensors filled from the version, those it
    has that the version lacks (``strict=False`` only), the version's tensors it has no
    place for (not read), the bytes read, and the tensors per device."""

    loaded: tuple[str, ...]
    missing_keys: tuple[str, ...]
    unexpected_keys: tuple[str, ...]
    bytes: int
    devices: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fill_module(handle: ModelHandle, module: Any, *, device: Any = None,
                device_map: Mapping[str, Any] | None = None, strict: bool = True,
                rows: Mapping[str, tuple[int, int]] | None = None,
                pool_bytes: int = DEFAULT_POOL_BYTES, workers: int | None = None) -> FillReport:
    """Fill ``module``'s parameters and persistent buffers from the version, each straight
    into its device memory (see :meth:`ModelHandle.load_into`)."""
    import torch

    if device is not None and device_map is not None:
        raise UsageError("load_into: give device= or device_map=, not both")
    targets = _device_of(device, device_map)
    own = module.state_dict(keep_vars=True)
    rows = dict(rows or {})
    for name in rows:
        if name not in own:
            raise UsageError(f"load_into: rows names {name!r}, which the module does not have")
    groups: dict[int, list[str]] = {}  # tied tensors: one read, every name gets it
    for name, tensor in own.items():
        groups.setdefault(id(tensor), []).append(name)
    missing, wants, done, replace = [], [], [], []
    per_device: dict[str, int] = {}
    for names in groups.values():
        name = next((n for n in names if n in handle.manifest.tensors), None)
        if name is None:
            missing += names
            continue
        old = own[name]
        t = handle.manifest.tensors[name]
        shape, segs = segments(t, handle._check_rows(name, *rows[name]) if name in rows
                               else None)
        if tuple(old.shape) != tuple(shape):
            raise UsageError(f"load_into {handle.key}: tensor {name!r} is {list(shape)} in the "
                             f"version{' (the rows asked for)' if name in rows else ''} but "
                             f"{list(old.shape)} in the module")
        if old.dtype != t.dtype.torch and not (t.dtype.name in _FLOATS
                                               and old.dtype.is_floating_point):
            raise UsageError(f"load_into {handle.key}: tensor {name!r} is {t.dtype.name} in the "
                             f"version but {old.dtype} in the module; only floating-point "
                             "tensors are cast")
        dev = targets(name, old)
        if old.device == dev and old.is_contiguous():
            dest = old.detach()
        else:
            dest = torch.empty(old.shape, dtype=old.dtype, device=dev)
            replace.append((names, old, dest))
        at = 0
        for shard, b, e in segs:
            wants.append(_Want(shard, b, e, dest.view(-1), at, t.dtype.torch))
            at += (e - b) // t.dtype.itemsize
        done.append(name)
        per_device[str(dev)] = per_device.get(str(dev), 0) + 1
    if missing and strict:
        raise UsageError(f"load_into {handle.key}: the module has {len(missing)} tensors the "
                         f"version lacks, e.g. {', '.join(missing[:5])}; pass strict=False to "
                         "load the others and leave these as they are")
    with torch.no_grad():
        try:
            served = _run(handle, wants, pool_bytes=pool_bytes, workers=workers)
        except IntegrityError as e:
            if len(replace) < len(done):  # some were filled in place
                raise IntegrityError(f"{e} (the module's tensors that were filled in place "
                                     "are partly overwritten: load them again)") from e
            raise
        for names, old, new in replace:
            value = torch.nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(
                old, torch.nn.Parameter) else new
            for n in names:
                owner, _, attr = n.rpartition(".")
                sub = module.get_submodule(owner)
                (sub._parameters if attr in sub._parameters else sub._buffers)[attr] = value
    handle._counters.add(tensors=len(done), bytes_served=served)
    # A trained version's optimizer state is not the model's: no module has a place for it.
    unexpected = tuple(sorted(set(handle.manifest.without_optimizer_state().tensors) - set(own)))
    return FillReport(tuple(done), tuple(missing), unexpected, served, per_device)


def _device_of(device: Any, device_map: Mapping[str, Any] | None
               ) -> Callable[[str, Any], torch.device]:
    """``(name, tensor) -> device``: ``device``, the longest module prefix of ``device_map``
    (``""``: everything else), or where the tensor is already."""
    if device_map is None:
        fixed = resolve_device(device) if device is not None else None

        def of(name: str, tensor: Any) -> torch.device:
            if fixed is not None:
                return fixed
            if tensor.device.type == "meta":
                raise UsageError(f"load_into: {name!r} is on the meta device; give device= or "
                                 "device_map= for the weights")
            return tensor.device
        return of
    devices = {prefix: resolve_device(d, what=f"device_map[{prefix!r}]")
               for prefix, d in device_map.items()}

    def of_map(name: str, tensor: Any) -> torch.device:
        parts = name.split(".")
        for i in range(len(parts), -1, -1):
            prefix = ".".join(parts[:i])
            if prefix in devices:
                return devices[prefix]
        raise UsageError(f"load_into: device_map has no entry for {name!r} or a module above "
                         "it; add one (\"\" covers everything else)")
    return of_map
