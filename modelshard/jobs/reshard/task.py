"""Resharding logic: the plan of the new shards, and the task side that writes one planned
shard from the source version (read by rows through a lazy handle that checks every
chunk it serves). The driver is :mod:`modelshard.jobs.reshard.driver`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from modelshard.catalog.manifest import Manifest
from modelshard.errors import FormatError, UsageError
from modelshard.jobs.shardio import array_items, write_items
from modelshard.loading import ModelHandle
from modelshard.shards import dtypes, planner
from modelshard.shards.planner import Piece, ShardPlan, TensorMeta

MIN_SHARD_SIZE = 1 << 20  # HDFS's smallest block (dfs.namenode.fs-limits.min-block-size)
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
# Each task pays a Python start-up; a few tasks keep a small cluster busy without thrashing.
DEFAULT_TASKS = 4


def target_dtype(source: dtypes.DType, cast: str | None) -> dtypes.DType:
    """Floating-point tensors take ``cast``; integer and bool tensors keep their dtype."""
    return dtypes.get(cast, where="--dtype") if cast and source.name in FLOAT_DTYPES else source


def plan_reshard(manifest: Manifest, *, shard_size: int | None, shard_count: int | None,
                 dtype: str | None) -> tuple[int, list[ShardPlan]]:
    """The new shard size and the plans of the new shards."""
    if (shard_size is None) == (shard_count is None):
        raise UsageError("give exactly one of shard_size (--shard-size) and shard_count (--shards)")
    if dtype is not None and dtypes.get(dtype, where="--dtype").name not in FLOAT_DTYPES:
        raise UsageError(f"--dtype {dtype}: cast only to a floating-point type ({', '.join(sorted(FLOAT_DTYPES))})")
    metas = [TensorMeta(name, target_dtype(t.dtype, dtype), t.shape) for name, t in manifest.tensors.items()]
    if shard_count is not None:
        if isinstance(shard_count, bool) or not isinstance(shard_count, int) or shard_count < 1:
            raise UsageError(f"--shards {shard_count}: ask for a whole number of shards, at least one")
        # Exactly that many shards: the planner's bin count is fixed, the size only says where
        # big tensors are cut (a shard below 1 MiB still gets a whole 1 MiB block).
        shard_size = max(1, math.ceil(sum(m.nbytes for m in metas) / shard_count))
        return shard_size, planner.plan(metas, shard_size, count=shard_count)
    if shard_size < MIN_SHARD_SIZE:
        raise UsageError(f"shard size {shard_size} bytes is below 1 MiB ({MIN_SHARD_SIZE}), HDFS's smallest "
                         "block: choose a larger --shard-size")
    return shard_size, planner.plan(metas, shard_size)


def plan_to_json(plan: ShardPlan) -> dict:
    return {"filename": plan.filename, "pieces": [
        [p.name, p.key, p.dtype.name, list(p.shape), list(p.rows) if p.rows else None, p.offset]
        for p in plan.pieces]}


def _plan_from_json(doc: dict) -> ShardPlan:
    try:
        return ShardPlan(doc["filename"], tuple(
            Piece(name, key, dtypes.get(d, where=key), tuple(shape), tuple(rows) if rows else None, offset)
            for name, key, d, shape, rows, offset in doc["pieces"]))
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"reshard plan {str(doc)[:200]!r} is malformed: {e}") from e


def write_planned_shard(source: ModelHandle, staging_uri: str, plan_doc: dict) -> dict:
    """Task side: build one planned shard from the ``source`` handle (opened once per task,
    so a source shard is verified once however many new shards draw on it) and write it
    into the staged version; returns ``{"size", "sha256", "checksums", "offsets"}``."""
    plan = _plan_from_json(plan_doc)
    arrays = [(source.get(p.name) if p.rows is None else source.get_rows(p.name, *p.rows))
              .astype(p.dtype.numpy, copy=False) for p in plan.pieces]
    items = array_items([(p.key, a) for p, a in zip(plan.pieces, arrays, strict=True)])
    w = write_items(staging_uri, plan.filename, items)
    return {"size": w.size, "sha256": w.sha256, "checksums": w.checksums.to_json(),
            "offsets": {k: list(v) for k, v in w.offsets.items()}}


def task_plans(plans: Sequence[ShardPlan], *, tasks: int) -> list[list[dict]]:
    """The plans of each task's input, dealt round-robin to at most ``tasks`` tasks."""
    n = max(1, min(len(plans), tasks))
    return [[plan_to_json(p) for p in plans[i::n]] for i in range(n)]
