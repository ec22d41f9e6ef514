"""CRC32C checksums of shards: chunks that follow the tensors, any way the bytes arrive."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from crc32c import crc32c

from modelshard.jobs.shardio import array_items
from modelshard.shards.checksums import CHUNK_BYTES, Checksums, ChunkWriter, chunk_ends
from modelshard.shards.format import write_shard


def test_chunks_follow_the_tensors_and_cut_large_ones():
    ends = chunk_ends(data_start=64, spans=[(64, 64), (64, 100), (100, 100 + 3 * CHUNK_BYTES)],
                      size=100 + 3 * CHUNK_BYTES)
    assert ends == [64, 100, 100 + CHUNK_BYTES, 100 + 2 * CHUNK_BYTES, 100 + 3 * CHUNK_BYTES]
    assert chunk_ends(data_start=8, spans=[(10, 12)], size=20) == [8, 10, 12, 20]  # gaps too


@pytest.mark.parametrize("piece", [1, 7, 4096, 1 << 20])
def test_the_checksums_do_not_depend_on_how_the_bytes_arrive(piece):
    data = os.urandom(3 * 4096 + 5)
    ends = chunk_ends(data_start=16, spans=[(16, 3000), (3000, len(data))], size=len(data),
                      chunk_bytes=4096)
    w = ChunkWriter(ends)
    for i in range(0, len(data), piece):
        w.update(data[i:i + piece])
    c = w.finish()
    assert c.crc32c == crc32c(data)
    assert c.chunks == tuple(crc32c(data[slice(*c.chunk_range(i))]) for i in range(len(ends)))
    assert Checksums.from_json(c.to_json(), size=len(data)) == c
    with pytest.raises(ValueError, match="do not cover"):
        Checksums.from_json(c.to_json(), size=len(data) + 1)


def test_chunks_over_a_range():
    c = Checksums(0, (8, 10, 14, 18), (0, 0, 0, 0))
    assert list(c.chunks_over(0, 8)) == [0]
    assert list(c.chunks_over(7, 9)) == [0, 1]
    assert list(c.chunks_over(10, 14)) == [2]
    assert list(c.chunks_over(13, 18)) == [2, 3]


def test_write_shard_records_the_crc32c_of_the_file_and_of_each_tensor():
    out = io.BytesIO()
    arrays = [("a", np.arange(10, dtype=np.float32)), ("b", np.zeros((3, 3), np.int8))]
    w = write_shard(out, array_items(arrays))
    data = out.getvalue()
    assert w.checksums.crc32c == crc32c(data)
    assert w.checksums.data_start == w.offsets["a"][0]
    assert [w.checksums.chunk_range(i) for i in (1, 2)] == [w.offsets["a"], w.offsets["b"]]
