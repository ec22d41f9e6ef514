"""Parameter averaging without weights in the shuffle, and the outer optimizer (no torch
here: reducers only move and add bytes).

Every epoch of training plans the next version's shards like any version
(:func:`train_plans`). Each mapper writes its trained parameters as *pieces*: one
safetensors file per planned shard, holding exactly that shard's tensors (or row ranges),
into the epoch's staging folder (:func:`write_pieces`), and emits only a small report per
piece (shard, path, example count, checksums). The reducer of a shard reads the pieces of
every split chunk by chunk, each chunk checked against its CRC32C (:class:`VerifiedShard`),
averages them weighted by example count, applies the outer optimizer and streams the
result into the version's shard (:func:`reduce_shard`): it holds a few chunks, not a shard.

The splits' SGD momentum buffers are averaged the same way and kept in the version, as
tensors named :data:`INNER` + parameter name: each split starts the next epoch with them
instead of from zero (an epoch is a few SGD steps per split; restarting the momentum each
epoch is what cost averaging most of its lag behind single-process training,
docs/benchmarks.md). The outer optimizer is Nesterov momentum on the averaged update, as
local SGD and DiLoCo (Douillard et al. 2023) do: with ``delta = old - average``,
``m = momentum * m + delta`` and ``new = old - lr * (delta + momentum * m)``; its state
``m`` is kept as tensors named :data:`MOMENTUM` + parameter name. ``lr=1, momentum=0``
(the default) is plain averaging and keeps no ``m``. Both states are planned into the same
shard as their parameter, so a run resumed from any version continues exactly.
"""

from __future__ import annotations

import posixpath
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from mrjob.compat import jobconf_from_env

from modelshard.catalog.manifest import INNER_MOMENTUM, OUTER_MOMENTUM, Manifest, ShardRecord, is_optimizer_state
from modelshard.errors import FormatError, UsageError
from modelshard.fs import get_fs
from modelshard.jobs.shardio import array_items, write_items
from modelshard.loading import ModelHandle
from modelshard.shards import planner
from modelshard.shards.checksums import Checksums
from modelshard.shards.format import CHUNK, ShardItem
from modelshard.shards.planner import Piece, ShardPlan, TensorMeta
from modelshard.verified import VerifiedShard

INNER, MOMENTUM = INNER_MOMENTUM, OUTER_MOMENTUM
PIECES_DIR = "pieces"
FLOATS = {"F64", "F32", "F16", "BF16"}


@dataclass(frozen=True)
class Outer:
    """The outer optimizer: Nesterov momentum on the averaged update (see the module)."""

    lr: float = 1.0
    momentum: float = 0.0

    def __post_init__(self) -> None:
        if not (0 < self.lr <= 2 and 0 <= self.momentum < 1):
            raise UsageError(f"outer optimizer lr={self.lr} momentum={self.momentum}: give "
                             "0 < outer lr <= 2 and 0 <= outer momentum < 1")

    def step(self, old: np.ndarray, average: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The new parameters and momentum, in float64, from ``old``, the ``average`` of the
        splits' parameters and the momentum ``m``::

            Outer(lr=1, momentum=0).step(old, avg, m)[0]   # == avg
        """
        delta = old - average
        m = self.momentum * m + delta
        return old - self.lr * (delta + self.momentum * m), m


def train_plans(manifest: Manifest, *, outer: Outer) -> list[ShardPlan]:
    """The shards of the version that an epoch from ``manifest`` makes: its model tensors
    planned at its shard size, each floating-point one with its inner momentum (and outer
    momentum, if ``outer`` has one) in the same shard (parameters planned at a half or a
    third of the size then, so shards keep about the planned size). Every task computes the
    same plan from the same manifest."""
    metas = [TensorMeta(n, t.dtype, t.shape) for n, t in manifest.tensors.items() if not is_optimizer_state(n)]
    prefixes = (INNER, MOMENTUM) if outer.momentum > 0 else (INNER,)
    plans = planner.plan(metas, max(1, manifest.shard_size // (1 + len(prefixes))))
    out = []
    for plan in plans:
        state = [Piece(prefix + p.name, prefix + p.key, p.dtype, p.shape, p.rows, p.offset)
                 for prefix in prefixes for p in plan.pieces if p.dtype.name in FLOATS]
        # Stable: within a dtype the parameters come first (the outer momentum last), so a
        # shard is written in one pass.
        pieces = sorted((*plan.pieces, *state), key=lambda p: -p.dtype.itemsize)
        out.append(ShardPlan(plan.filename, tuple(pieces)))
    return out


def java_text_hash(data: bytes) -> int:
    """``org.apache.hadoop.io.Text.hashCode`` of ``data``, which Hadoop's HashPartitioner takes."""
    h = 1
    for b in data:
        h = (31 * h + (b - 256 if b > 127 else b)) & 0xFFFFFFFF
    return h


def shard_key(index: int, reducers: int) -> str:
    """The shuffle key of planned shard ``index``: salted so that Hadoop's HashPartitioner
    sends shard ``i`` of ``reducers`` to reducer ``i % reducers`` (one shard per reducer);
    the key as the streaming protocol writes it is its JSON string."""
    salt = 0
    while (java_text_hash(f'"{index}:{salt}"'.encode()) & 0x7FFFFFFF) % reducers != index % reducers:
        salt += 1
    return f"{index}:{salt}"


def shard_index(key: str) -> int:
    return int(key.split(":", 1)[0])


def from_splits(name: str) -> bool:
    """Whether the splits write tensor ``name`` (the model's and the inner momentum, which
    the reducers average), rather than the reducer making it (the outer momentum)."""
    return not name.startswith(MOMENTUM)


# -- task side: mappers ---------------------------------------------------------------------
def write_pieces(state: Mapping[str, np.ndarray], momentum: Mapping[str, np.ndarray], plans: Sequence[ShardPlan],
                 staging_uri: str, *, split: int, count: int) -> list[dict]:
    """Write this split's trained parameters ``state`` and its SGD ``momentum`` buffers (by
    parameter name; zeros for a tensor without one) as one piece per planned shard into the
    staging folder, under a name with this task attempt (a retried attempt never overwrites
    a piece another attempt reported); the reports, one per shard."""
    attempt = jobconf_from_env("mapreduce.task.attempt.id") or uuid.uuid4().hex

    def tensor(name: str) -> np.ndarray:
        if not name.startswith(INNER):
            return state[name]
        base = name.removeprefix(INNER)
        return np.asarray(momentum[base]) if base in momentum else np.zeros_like(state[base])

    reports = []
    for plan in plans:
        arrays = [(p.key, tensor(p.name) if p.rows is None else tensor(p.name)[p.rows[0]:p.rows[1]])
                  for p in plan.pieces if from_splits(p.name)]
        path = posixpath.join(PIECES_DIR, f"{split:05d}-{attempt}", plan.filename)
        w = write_items(staging_uri, path, array_items(arrays), folder="")
        reports.append({"shard": plan.filename, "split": split, "count": count, "path": path,
                        "size": w.size, "sha256": w.sha256, "checksums": w.checksums.to_json(),
                        "offsets": {k: list(v) for k, v in w.offsets.items()}})
    return reports


# -- task side: reducers ---------------------------------------------------------------------
class _Piece:
    """One split's piece of a shard, read by range, every chunk checked."""

    def __init__(self, staging_uri: str, report: dict, plan: ShardPlan, model: str) -> None:
        try:
            self.split, self.count = int(report["split"]), int(report["count"])
            path, size = report["path"], int(report["size"])
            record = ShardRecord(path, size, report["sha256"], Checksums.from_json(report["checksums"], size=size))
            self.offsets = {k: (int(b), int(e)) for k, (b, e) in report["offsets"].items()}
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"piece report {str(report)[:200]!r} is malformed: {e}") from e
        want = {p.key: p.nbytes for p in plan.pieces if from_splits(p.name)}
        if {k: e - b for k, (b, e) in self.offsets.items()} != want:
            raise FormatError(f"piece {path} of split {self.split} does not hold the tensors that shard "
                              f"{plan.filename} plans; were the splits trained from another version?")
        fs, staging = get_fs(staging_uri)
        self.shard = VerifiedShard.over_ranges(fs, posixpath.join(staging, path), record,
                                               model=f"{model} (piece of split {self.split})")

    def read(self, key: str, begin: int, end: int) -> memoryview:
        base = self.offsets[key][0]
        return self.shard.read([(base + begin, base + end)])[0]


class _Parent:
    """Elements of the parent version's tensors by flat range, a block of rows at a time."""

    def __init__(self, handle: ModelHandle) -> None:
        self.handle, self.names = handle, set(handle.names())
        self._block: tuple[str, int, int, np.ndarray] | None = None

    def elements(self, piece: Piece, name: str, start: int, stop: int) -> np.ndarray | None:
        """Elements ``[start, stop)`` of the piece's rows of ``name``, flat; None if the
        parent has no such tensor (momentum of a version trained without it)."""
        if name not in self.names:
            return None
        if not piece.shape:
            return np.asarray(self.handle.get(name)).reshape(-1)[start:stop]
        row = max(1, int(np.prod(piece.shape[1:])))
        first = (piece.rows[0] if piece.rows else 0)
        r0, r1 = first + start // row, first + -(-stop // row)
        b = self._block
        if not (b and b[0] == name and b[1] <= r0 and r1 <= b[2]):
            hi = min(first + piece.shape[0], max(r1, r0 + max(1, CHUNK // (row * piece.dtype.itemsize))))
            b = self._block = (name, r0, hi, np.asarray(self.handle.get_rows(name, r0, hi)).reshape(-1))
        off = (r0 - b[1]) * row + start % row
        return b[3][off:off + stop - start]


def reduce_shard(plan: ShardPlan, reports: Sequence[dict], *, splits: int, parent: ModelHandle,
                 staging_uri: str, outer: Outer, model: str) -> dict:
    """Reducer side: average the ``splits`` pieces of ``plan`` (``reports`` from the
    mappers), apply ``outer`` against the ``parent`` version, and write the shard into the
    staged version; returns its report (file, plan, size, checksums, offsets). Memory: a
    few chunks; the new momentum waits in a local temporary file until its turn in the shard.
    """
    pieces = sorted((_Piece(staging_uri, r, plan, model) for r in reports), key=lambda p: p.split)
    got = [p.split for p in pieces]
    if got != list(range(splits)):
        raise FormatError(f"shard {plan.filename}: pieces of splits {got[:10]} arrived, expected one from "
                          f"each of the {splits} splits; the job lost or duplicated a piece")
    total = sum(p.count for p in pieces)
    weights = [p.count / total for p in pieces]
    old = _Parent(parent)
    keys = {p.key for p in plan.pieces}
    spill = tempfile.TemporaryFile(prefix="modelshard-momentum-", dir=".")  # noqa: SIM115 (closed below)
    spilled: dict[str, int] = {}

    def new_values(piece: Piece):
        dtype, size = piece.dtype.numpy, piece.dtype.itemsize
        momentum = MOMENTUM + piece.key if MOMENTUM + piece.key in keys else None

        def read(offset: int, n: int) -> bytes:
            if momentum and offset == 0:
                spilled[momentum] = spill.seek(0, 2)
            acc = np.zeros(n // size, np.float64)
            for w, p in zip(weights, pieces, strict=True):
                # float64 before the weight: a float32 array times a Python float stays float32.
                acc += np.frombuffer(p.read(piece.key, offset, offset + n), dtype).astype(np.float64) * w
            if piece.dtype.name not in FLOATS or piece.name.startswith(INNER):  # averaged, no outer step
                return acc.astype(dtype).tobytes()
            a, b = offset // size, (offset + n) // size
            before = old.elements(piece, piece.name, a, b)
            if before is None:
                raise FormatError(f"{model}: the parent version has no tensor {piece.name!r}")
            m = old.elements(piece, MOMENTUM + piece.name, a, b)
            new, m = outer.step(before.astype(np.float64), acc,
                                np.zeros_like(acc) if m is None else m.astype(np.float64))
            if momentum:
                spill.seek(0, 2)
                spill.write(m.astype(dtype).tobytes())
            return new.astype(dtype).tobytes()
        return read

    def spilled_values(piece: Piece):
        def read(offset: int, n: int) -> bytes:
            spill.seek(spilled[piece.key] + offset)
            return spill.read(n)
        return read

    items = [ShardItem(p.key, p.dtype, p.shape, new_values(p) if from_splits(p.name) else spilled_values(p))
             for p in plan.pieces]
    attempt = jobconf_from_env("mapreduce.task.attempt.id") or uuid.uuid4().hex
    filename = f"{plan.filename.removesuffix('.safetensors')}-{attempt}.safetensors"
    with spill:
        w = write_items(staging_uri, filename, items)
    return {"plan": plan.filename, "file": filename, "size": w.size, "sha256": w.sha256,
            "checksums": w.checksums.to_json(), "offsets": {k: list(v) for k, v in w.offsets.items()}}
