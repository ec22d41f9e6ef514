"""How streaming tasks write shards into a staged version, and how the driver turns the
tasks' shard reports into a commit. No torch here: tasks that only move bytes (resharding)
do not pay for importing it.

A task writes its shard under a name that includes its attempt id, so a retried or
speculative attempt never overwrites a shard that another attempt reported; the driver
commits only the shards named in the job's (committed) output.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

import numpy as np
from mrjob.compat import jobconf_from_env

from modelshard.catalog.commit import shard_block_size, shard_path
from modelshard.errors import FormatError
from modelshard.fs import get_fs
from modelshard.shards import dtypes
from modelshard.shards.checksums import Checksums
from modelshard.shards.format import ShardItem, Written, encode_header, write_shard
from modelshard.shards.planner import Piece, ShardPlan


def array_items(arrays: Sequence[tuple[str, np.ndarray]]) -> list[ShardItem]:
    """Shard items that stream the bytes of in-memory arrays, stored under the given keys."""
    items = []
    for key, array in arrays:
        a = np.ascontiguousarray(array)
        raw = memoryview(a.reshape(-1).view(np.uint8)) if a.size else memoryview(b"")
        items.append(ShardItem(key, dtypes.of_numpy(a.dtype, where=f"tensor {key!r}"), a.shape,
                               lambda off, n, raw=raw: raw[off:off + n]))
    return items


def write_items(staging_uri: str, filename: str, items: Sequence[ShardItem]) -> Written:
    """Write one shard into the staged version at ``staging_uri`` (one HDFS block)."""
    fs, staging = get_fs(staging_uri)
    size = len(encode_header(items)[0]) + sum(i.nbytes for i in items)
    with fs.open_write(shard_path(staging, filename), block_size=shard_block_size(size)) as out:
        return write_shard(out, items)


def write_shard_file(staging_uri: str, prefix: str, tensors: Mapping[str, np.ndarray]) -> dict:
    """Write ``tensors`` as one shard named after this task attempt and return the report
    the driver commits from (see :func:`plans_from_reports`)."""
    attempt = jobconf_from_env("mapreduce.task.attempt.id") or uuid.uuid4().hex
    filename = f"{prefix}-{attempt}.safetensors"
    items = array_items(sorted(tensors.items()))
    w = write_items(staging_uri, filename, items)
    return {"file": filename, "size": w.size, "sha256": w.sha256, "checksums": w.checksums.to_json(),
            "tensors": {i.key: [i.dtype.name, list(i.shape), *w.offsets[i.key]] for i in items}}


def plans_from_reports(reports: Sequence[dict]) -> tuple[list[ShardPlan], list[Written]]:
    """The shard plans and write results of shards written by tasks, in file-name order."""
    plans, written = [], []
    for r in sorted(reports, key=lambda r: r["file"]):
        try:
            pieces = tuple(Piece(name, name, dtypes.get(d, where=r["file"]), tuple(shape), None, 0)
                           for name, (d, shape, _, _) in sorted(r["tensors"].items()))
            plans.append(ShardPlan(r["file"], pieces))
            written.append(Written(r["size"], r["sha256"],
                                   {name: (b, e) for name, (_, _, b, e) in r["tensors"].items()},
                                   Checksums.from_json(r["checksums"], size=r["size"])))
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"shard report {str(r)[:200]!r} is malformed: {e}") from e
    return plans, written
