"""How streaming tasks write safetensors files into a staged version (resharding's shards,
training's pieces and shards). No torch here: tasks that only move bytes do not pay for
importing it. Checksums are computed while writing; the driver checks what was stored.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

import numpy as np

from modelshard.catalog.commit import shard_block_size, shard_path
from modelshard.fs import get_fs
from modelshard.shards import dtypes
from modelshard.shards.format import ShardItem, Written, encode_header, write_shard


def array_items(arrays: Sequence[tuple[str, np.ndarray]]) -> list[ShardItem]:
    """Shard items that stream the bytes of in-memory arrays, stored under the given keys."""
    items = []
    for key, array in arrays:
        a = np.ascontiguousarray(array)
        raw = memoryview(a.reshape(-1).view(np.uint8)) if a.size else memoryview(b"")
        items.append(ShardItem(key, dtypes.of_numpy(a.dtype, where=f"tensor {key!r}"), a.shape,
                               lambda off, n, raw=raw: raw[off:off + n]))
    return items


def write_items(staging_uri: str, filename: str, items: Sequence[ShardItem], *, folder: str = "shards") -> Written:
    """Write one shard into ``folder`` of the staged version at ``staging_uri`` (one HDFS block)."""
    fs, staging = get_fs(staging_uri)
    size = len(encode_header(items)[0]) + sum(i.nbytes for i in items)
    path = shard_path(staging, filename) if folder == "shards" else posixpath.join(staging, folder, filename)
    with fs.open_write(path, block_size=shard_block_size(size)) as out:
        return write_shard(out, items)
