"""Which tensor goes into which shard: shards balanced by bytes, big tensors split by rows.

The plan is LPT (longest processing time first): pieces sorted largest first go one by one
into the currently smallest of ``ceil(total / shard_size)`` shards (sizes count the bytes in
the file, header entries included), which keeps the largest
shard within 4/3 of the optimum, unlike filling shards greedily in key order. A tensor
larger than the shard size is cut along its first dimension into row ranges of nearly equal
size, stored as separate entries and reassembled on load. Equal input gives an equal plan.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from modelshard.errors import UsageError
from modelshard.shards.dtypes import DType
from modelshard.shards.format import nbytes_of

DEFAULT_SHARD_SIZE = 128 * 1024 * 1024  # one HDFS block
# JSON around a key in a header: '"":{"dtype":"BF16","shape":[4096,4096],"data_offsets":[..]},'
HEADER_ENTRY = 80


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype: DType
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.shape, self.dtype)


@dataclass(frozen=True)
class Piece:
    """A whole tensor (``rows`` None) or rows ``[rows[0], rows[1])`` of one, stored under
    ``key`` in a shard; ``offset`` is where its bytes start within the tensor's bytes."""

    name: str
    key: str
    dtype: DType
    shape: tuple[int, ...]
    rows: tuple[int, int] | None
    offset: int

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.shape, self.dtype)

    @property
    def cost(self) -> int:
        """Bytes in the shard file: the data and about its header entry."""
        return self.nbytes + len(self.key.encode("utf-8")) + HEADER_ENTRY


@dataclass(frozen=True)
class ShardPlan:
    filename: str
    pieces: tuple[Piece, ...]

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.pieces)


@dataclass(frozen=True)
class Spread:
    """How even the shard sizes are; ``imbalance`` is max / mean (1.0 is perfect)."""

    count: int
    min: int
    max: int
    mean: float
    imbalance: float

    @classmethod
    def of(cls, sizes: Sequence[int]) -> Spread:
        mean = sum(sizes) / len(sizes) if sizes else 0.0
        return cls(len(sizes), min(sizes, default=0), max(sizes, default=0), mean,
                   max(sizes) / mean if mean else 1.0)


def shard_filename(index: int, count: int) -> str:
    """Hugging Face's shard naming: ``model-00001-of-00003.safetensors``."""
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def piece_key(name: str, rows: tuple[int, int]) -> str:
    return f"{name}[{rows[0]}:{rows[1]}]"


def split(tensor: TensorMeta, shard_size: int) -> list[Piece]:
    """``tensor`` as one piece, or as row ranges of at most about ``shard_size`` bytes when it
    is larger and has at least two rows (a tensor of one row cannot be cut and stays whole)."""
    rows = tensor.shape[0] if tensor.shape else 0
    count = min(rows, math.ceil(tensor.nbytes / shard_size))
    if count < 2:
        return [Piece(tensor.name, tensor.name, tensor.dtype, tensor.shape, None, 0)]
    row_bytes = tensor.nbytes // rows
    base, extra = divmod(rows, count)
    pieces, start = [], 0
    for i in range(count):
        stop = start + base + (i < extra)
        pieces.append(Piece(tensor.name, piece_key(tensor.name, (start, stop)), tensor.dtype,
                            (stop - start, *tensor.shape[1:]), (start, stop), start * row_bytes))
        start = stop
    return pieces


def plan(tensors: Sequence[TensorMeta], shard_size: int = DEFAULT_SHARD_SIZE, *,
         count: int | None = None) -> list[ShardPlan]:
    """Balanced shards for ``tensors``: ``ceil(total / shard_size)`` of them, or exactly
    ``count`` (tensors are then split at ``shard_size``, and UsageError says so if there are
    fewer pieces than ``count``). Raises UsageError for a bad ``shard_size`` or a split piece
    whose key collides with a tensor name."""
    if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size <= 0:
        raise UsageError(f"shard_size={shard_size!r}: give a positive number of bytes")
    pieces = [p for t in tensors for p in split(t, shard_size)]
    keys: set[str] = set()
    for p in pieces:
        if p.key in keys:
            raise UsageError(f"tensor {p.name!r}: its split piece {p.key!r} has the name of "
                             "another tensor; rename that tensor or raise shard_size")
        keys.add(p.key)
    if count is not None and len(pieces) < count:
        raise UsageError(f"{count} shards asked for, but the model has only {len(pieces)} tensors "
                         f"(or pieces of split tensors) to place; ask for at most {len(pieces)}")
    total = sum(p.cost for p in pieces)
    # LPT puts the first ``count`` pieces into distinct empty bins, so none stays empty.
    bins: list[list[Piece]] = [[] for _ in range(count or max(1, math.ceil(total / shard_size)))]
    heap = [(0, i) for i in range(len(bins))]
    for p in sorted(pieces, key=lambda p: (-p.cost, p.name, p.offset)):
        load, i = heapq.heappop(heap)
        bins[i].append(p)
        heapq.heappush(heap, (load + p.cost, i))
    bins = [b for b in bins if b]
    # Larger items first keeps every tensor aligned to its itemsize (the data starts at a
    # multiple of 8), so readers can map the bytes without copying.
    return [ShardPlan(shard_filename(i, len(bins)),
                      tuple(sorted(b, key=lambda p: (-p.dtype.itemsize, p.name, p.offset))))
            for i, b in enumerate(bins)]
