"""Reading shard bytes and proving them right: the one module that does it.

Every byte modelshard hands out of a shard comes through here, from any source:

* :class:`VerifiedShard` serves byte ranges of one shard, read by range (HDFS, or any
  filesystem) or sliced from a buffer (a local memory map, a preload-cache entry, a shard the
  scheduler holds). With the manifest's CRC32C chunk checksums it checks exactly the chunks
  a read touches, in the bytes it returns (a range read is widened to whole chunks); a
  buffer's chunks are checked once. For a manifest from before them it falls back to the
  whole-shard sha256, once per shard, before serving anything.
* :func:`read_stream` reads a whole shard front to back, checking it as it goes, into
  caller-given buffers or a sink (pull, the cache, the scheduler, copy, verify, push's
  ``--paranoid`` read-back).

A mismatch raises IntegrityError naming the model, version and shard and saying what to do;
so does a read that the storage refuses because its own checksums found the damage first
(HDFS with no intact replica of a block: :class:`~modelshard.errors.UnreadableError`).
``unverified_for_benchmarks=True`` turns the checks off; it exists to measure what they
cost, never for use.

>>> import numpy as np, modelshard
>>> m = modelshard.push({"w": np.ones(4, np.float32)}, "doc", catalog="/tmp/vcat")
>>> from modelshard.catalog.catalog import Catalog
>>> cat = Catalog("/tmp/vcat"); rec = m.shards[0]
>>> path = cat.version_dir("doc", m.version) + "/" + rec.path
>>> shard = VerifiedShard.over_ranges(cat.fs, path, rec, model=f"doc@{m.version}")
>>> bytes(shard.read([(rec.size - 16, rec.size)])[0]) == np.ones(4, np.float32).tobytes()
True
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from crc32c import crc32c

from modelshard.catalog.manifest import ShardRecord
from modelshard.errors import IntegrityError, ModelShardError, UnreadableError
from modelshard.fs.base import FileSystem
from modelshard.shards.checksums import Checksums, ChunkWriter
from modelshard.shards.format import CHUNK, Header, parse_header

Ranges = Sequence[tuple[int, int]]


class Stored(Protocol):
    """What the manifest says of a shard (a ShardRecord, or the cache's ShardRef)."""

    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def checksums(self) -> Checksums | None: ...


def fresh_pages(size: int) -> mmap.mmap | bytearray:
    """``size`` bytes of new memory for shard bytes: private anonymous pages (base size),
    all of them allocated in one call, given back to the system when the last view goes.

    Not the allocator's heap: buffers of MiBs allocated and freed all day would fragment it
    (glibc raises its mmap threshold after the first large free and serves the next from the
    heap). Not page by page: filling 19 MiB of pages taken one fault at a time cost 14.7 ms
    on the development VM, populated at once 7.1 ms; numpy's transparent huge pages cost
    5-8 ms per MiB at their first write (docs/benchmarks.md, issues 9 and 14)::

        buf = fresh_pages(4 << 20)
    """
    if not size:
        return bytearray()
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0))


def damaged(model: str | None, uri: str, what: str, *, part: str = "shard") -> IntegrityError:
    """The error for a shard (or the manifest, ``part="manifest"``) whose bytes are not the
    manifest's, or that the storage could not read intact."""
    fsck = (f"; HDFS: 'hdfs fsck {uri} -files -blocks -locations' lists its replicas, and "
            "HDFS re-replicates a block from an intact one by itself" if uri.startswith("hdfs://")
            else "")
    if model is None:
        return IntegrityError(f"{uri}: {what}; the stored {part} is damaged: restore it or push "
                              f"the model again{fsck}")
    verify = f"'modelshard verify {model}' checks every shard; " if part == "shard" else ""
    return IntegrityError(
        f"{model}: {part} {uri}: {what}. The stored {part} is damaged: {verify}restore it by "
        f"pushing the model again or copying the version from another catalog ('modelshard "
        f"copy'){fsck}")


class StreamCheck:
    """Checks a shard streamed front to back through :meth:`update`: its CRC32C chunks (or
    its sha256 for a manifest without them; both with ``full=True``)."""

    def __init__(self, record: Stored, *, model: str | None, uri: str,
                 full: bool = False, sizes_only: bool = False) -> None:
        self.record, self._model, self._uri = record, model, uri
        c = record.checksums
        self._full = (full or c is None) and not sizes_only
        self._sums = None if sizes_only else ChunkWriter(list(c.ends) if c else None,
                                                         whole=False, sha256=self._full)
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        # past the manifest's size, finish() fails on the size alone
        if self._sums is not None and self.size < self.record.size:
            self._sums.update(memoryview(data)[:self.record.size - self.size])
        self.size += len(data)

    def finish(self) -> None:
        """Raise IntegrityError unless the bytes seen are exactly the manifest's."""
        rec = self.record
        if self.size != rec.size:
            raise damaged(self._model, self._uri, f"{self.size} bytes where the manifest says "
                                                  f"{rec.size}")
        if self._sums is None:
            return
        sums = self._sums.finish()
        got = sums.chunks if sums is not None else None
        if got is not None and got != rec.checksums.chunks:  # same size: as many chunks
            bad = next(i for i, (a, b) in enumerate(zip(got, rec.checksums.chunks, strict=True))
                       if a != b)
            lo, hi = rec.checksums.chunk_range(bad)
            raise damaged(self._model, self._uri, f"bytes {lo}..{hi} do not match their CRC32C")
        if self._full and (sha := self._sums.sha256()) != rec.sha256:
            raise damaged(self._model, self._uri, f"sha256 {sha} where the manifest says "
                                                  f"{rec.sha256}")


def read_stream(fs: FileSystem, path: str, record: Stored, *, model: str | None,
                into: Sequence[tuple[int, memoryview]] = (),
                sink: Callable[[memoryview], object] | None = None,
                progress: Callable[[int], object] | None = None, full: bool = False,
                chunk_bytes: int = CHUNK, unverified_for_benchmarks: bool = False) -> None:
    """Read the shard at ``path`` once, checking it as it goes: the bytes at each ``(offset,
    view)`` of ``into`` go straight into ``view``, the rest through a scratch buffer; every
    byte also goes to ``sink``, in pieces of at most ``chunk_bytes``. IntegrityError if it
    is not the manifest's (the views then hold damaged bytes: do not hand them out)::

        read_stream(fs, path, record, model="bert@3", sink=out.write)

    ``unverified_for_benchmarks=True`` checks only the size.
    """
    check = StreamCheck(record, model=model, uri=fs.uri(path), full=full,
                        sizes_only=unverified_for_benchmarks)
    # (offset, length, view) in file order; None: bytes that go nowhere in particular
    segments = sorted([*((offset, len(view), view) for offset, view in into),
                       *((lo, hi - lo, None) for lo, hi in uncovered(into, record.size))],
                      key=lambda s: s[0])
    # One scratch buffer for the bytes that go nowhere in particular, only if there are any.
    gap = max((n for _, n, view in segments if view is None), default=0)
    scratch = memoryview(bytearray(min(chunk_bytes, gap)))
    try:
        with fs.open_read(path) as f:
            for _, length, view in segments:
                for start in range(0, length, chunk_bytes):
                    want = min(chunk_bytes, length - start)
                    part = view[start:start + want] if view is not None else scratch[:want]
                    n = f.readinto(part)
                    check.update(part[:n])
                    if sink:
                        sink(part[:n])
                    if progress:
                        progress(n)
                    if n < len(part):  # shorter than the manifest says
                        check.finish()
            extra = memoryview(bytearray(1 << 16))
            while n := f.readinto(extra):  # longer than the manifest says
                check.update(extra[:n])
    except UnreadableError as e:  # the storage's own checksums found the damage first
        raise damaged(model, fs.uri(path), e.what) from e
    check.finish()


def expected_header(raw: bytes, expected: dict[str, tuple[str, int, int]], *, size: int,
                    uri: str) -> Header:
    """The header ``raw`` (its bytes after the 8-byte length) of a shard of ``size`` bytes,
    parsed and checked to list exactly ``expected`` (``{key: (dtype, begin, end)}``);
    ValueError saying what is wrong."""
    try:
        header = parse_header(raw, file_size=size, where=uri)
    except ModelShardError as e:
        raise ValueError(f"its header is damaged ({e})") from e
    found = {k: (e.dtype.name, e.begin, e.end) for k, e in header.entries.items()}
    if found != expected:
        raise ValueError("its header does not list the tensors the manifest places there")
    return header


def uncovered(into: Sequence[tuple[int, memoryview]], size: int) -> list[tuple[int, int]]:
    """The ``(begin, end)`` runs of ``0..size`` that no ``(offset, view)`` of ``into`` covers.

    >>> uncovered([(2, memoryview(b"ab")), (6, memoryview(b"c"))], 9)
    [(0, 2), (4, 6), (7, 9)]
    """
    runs, pos = [], 0
    for offset, view in sorted(into, key=lambda ov: ov[0]):
        if offset > pos:
            runs.append((pos, offset))
        pos = max(pos, offset + len(view))
    return runs + [(pos, size)] * (size > pos)


class VerifiedShard:
    """Byte ranges of one shard, each checked before it is returned. Build it with
    :meth:`over_ranges` or :meth:`over_buffer`; :meth:`header` checks the header against the
    manifest's ``expected`` entries; :meth:`read` serves ranges. A failed check sticks: the
    shard serves nothing more. Threads may share one.
    """

    def __init__(self, record: ShardRecord, *, model: str | None, uri: str,
                 pread: Callable[[int, int], Any] | None, buffer: Any,
                 stream: Callable[[], None] | None, checked: bool,
                 unverified_for_benchmarks: bool) -> None:
        self.record, self._model, self._uri = record, model, uri
        self._pread, self._buffer, self._stream = pread, buffer, stream
        self._trust = unverified_for_benchmarks or checked
        self._ok: set[int] = set()  # chunks of the buffer already checked
        self._whole_checked = False
        self._failure: ModelShardError | None = None
        self._lock = threading.Lock()  # the counts
        self._whole_lock = threading.Lock()  # one whole-shard check at a time
        self.counts = {"range_reads": 0, "range_bytes": 0, "verified_bytes": 0}

    @classmethod
    def over_ranges(cls, fs: FileSystem, path: str, record: ShardRecord, *, model: str | None,
                    unverified_for_benchmarks: bool = False) -> VerifiedShard:
        """Read by range from ``fs``; each read widened to the chunks it touches."""
        def stream() -> None:
            read_stream(fs, path, record, model=model)

        return cls(record, model=model, uri=fs.uri(path),
                   pread=lambda off, n: fs.read_range(path, off, n), buffer=None, stream=stream,
                   checked=False, unverified_for_benchmarks=unverified_for_benchmarks)

    @classmethod
    def over_buffer(cls, buffer: Any, record: ShardRecord, *, model: str | None, uri: str,
                    checked: bool = False, unverified_for_benchmarks: bool = False
                    ) -> VerifiedShard:
        """Slice ``buffer`` (memory map, bytes); ``checked``: it was verified whole already
        (a preload-cache entry, a shard fetched by the scheduler)."""
        return cls(record, model=model, uri=uri, pread=None, buffer=memoryview(buffer),
                   stream=None, checked=checked,
                   unverified_for_benchmarks=unverified_for_benchmarks)

    # -- serving ---------------------------------------------------------------------------
    def header(self, expected: dict[str, tuple[str, int, int]]) -> Header:
        """The shard's header, checked, and checked to list exactly ``expected``
        (``{key: (dtype, begin, end)}``, from :meth:`Manifest.shard_entries`)."""
        c = self.record.checksums
        end = c.data_start if c else None
        if end is None:  # a manifest without chunk checksums: the header says its length
            end = 8 + int.from_bytes(bytes(self.read([(0, 8)])[0]), "little")
            if end > self.record.size:
                raise self._fail(f"header length {end - 8} runs past the end of the shard")
        raw = self.read([(8, end)])[0]
        try:
            return expected_header(bytes(raw), expected, size=self.record.size, uri=self._uri)
        except ValueError as e:
            raise self._fail(str(e)) from e

    def read(self, ranges: Ranges) -> list[memoryview]:
        """The bytes of each ``(begin, end)`` range, checked."""
        if self._failure is not None:
            raise self._failure
        for b, e in ranges:
            if not 0 <= b <= e <= self.record.size:
                raise self._fail(f"bytes {b}..{e} lie outside the shard of {self.record.size} "
                                 "bytes the manifest records")
        if self.record.checksums is None and not self._trust:
            self._check_whole()
        if self._buffer is not None:
            return self._from_buffer(ranges)
        return self._from_ranges(ranges)

    def _from_buffer(self, ranges: Ranges) -> list[memoryview]:
        buf, c = self._buffer, self.record.checksums
        if len(buf) != self.record.size:
            raise self._fail(f"{len(buf)} bytes where the manifest says {self.record.size}")
        if c is not None and not self._trust:
            for b, e in ranges:
                for i in (c.chunks_over(b, e) if b < e else ()):
                    if i not in self._ok:
                        self._check_chunk(i, buf[slice(*c.chunk_range(i))])
                        self._ok.add(i)
        return [buf[b:e] for b, e in ranges]

    def _from_ranges(self, ranges: Ranges) -> list[memoryview]:
        c = self.record.checksums
        check = c is not None and not self._trust
        widen = (lambda b, e: (c.chunk_range(c.chunks_over(b, e)[0])[0],
                               c.chunk_range(c.chunks_over(b, e)[-1])[1])
                 ) if check else (lambda b, e: (b, e))
        wanted = sorted({r for r in ranges if r[0] < r[1]})
        out: dict[tuple[int, int], memoryview] = {}
        for lo, hi, members in coalesce([(*widen(b, e), b, e) for b, e in wanted]):
            try:
                data = memoryview(self._pread(lo, hi - lo))
            except UnreadableError as e:  # the storage's own checksums found the damage
                raise self._fail(e.what) from e
            self._count(range_reads=1, range_bytes=hi - lo)
            if len(data) != hi - lo:
                raise self._fail(f"{len(data)} bytes at offset {lo}, expected {hi - lo}: the "
                                 "shard is truncated")
            if check:
                for i in c.chunks_over(lo, hi):
                    cb, ce = c.chunk_range(i)
                    self._check_chunk(i, data[cb - lo:ce - lo])
            out.update({(b, e): data[b - lo:e - lo] for b, e in members})
        return [out.get((b, e), memoryview(b"")) for b, e in ranges]

    # -- checking --------------------------------------------------------------------------
    def _check_chunk(self, i: int, data: memoryview) -> None:
        self._count(verified_bytes=len(data))
        if crc32c(data) != self.record.checksums.chunks[i]:
            lo, hi = self.record.checksums.chunk_range(i)
            raise self._fail(f"bytes {lo}..{hi} do not match their CRC32C")

    def _check_whole(self) -> None:
        """The fallback for a manifest without chunk checksums: the whole-shard sha256, once."""
        with self._whole_lock:
            if self._whole_checked:
                return
            try:
                if self._buffer is not None:
                    check = StreamCheck(self.record, model=self._model, uri=self._uri)
                    check.update(self._buffer)
                    check.finish()
                else:
                    self._stream()
            except IntegrityError as e:
                self._failure = e
                raise
            self._count(verified_bytes=self.record.size)
            self._whole_checked = True

    def _fail(self, what: str) -> IntegrityError:
        self._failure = damaged(self._model, self._uri, what)
        return self._failure

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                self.counts[k] += v


def coalesce(ranges: Sequence[tuple[int, int, int, int]]
             ) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """``(lo, hi, begin, end)`` sorted by ``lo``: reads ``lo..hi`` serving ``begin..end``,
    merged where they touch or overlap: one read per run of adjacent tensors (or chunks),
    and never a byte that neither a tensor nor its check needs."""
    runs: list[tuple[int, int, list[tuple[int, int]]]] = []
    for lo, hi, b, e in sorted(ranges):
        if runs and lo <= runs[-1][1]:
            rlo, rhi, members = runs[-1]
            runs[-1] = (rlo, max(rhi, hi), [*members, (b, e)])
        else:
            runs.append((lo, hi, [(b, e)]))
    return runs
