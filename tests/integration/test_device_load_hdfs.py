"""Loading onto a device from an HDFS catalog (issue 13): HDFS range reads feed the same
pipeline, each chunk checked in its slot (or, into host memory, each shard is streamed
straight into its tensors, checked as it arrives); a rank reads only its rows; the preload cache of
HDFS shards is a source too. The CPU is the device here (the CI machines have no GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import modelshard
from modelshard.catalog.catalog import Catalog
from modelshard.loading.device import load_state_dict_to, rank_rows
from tests.counting_fs import CountingFileSystem

CPU = torch.device("cpu")


@pytest.mark.parametrize("mode", ["staged", "stream"])
def test_hdfs_range_reads_and_the_cache_feed_the_device_pipeline(hdfs_root, tmp_path,
                                                                 monkeypatch, mode):
    if mode == "staged":  # the units and slots a CUDA device takes, with the CPU as device
        monkeypatch.setattr("modelshard.loading.device.STREAM_SHARE", float("inf"))
    fs, root = hdfs_root
    uri = fs.uri(f"{root}/cat")
    rng = np.random.default_rng(13)
    state = {f"block.{i}.w": rng.standard_normal((128, 64)).astype(np.float32)
             for i in range(12)}
    state["embed"] = rng.standard_normal((9000, 64)).astype(np.float32)  # 2.3 MB: split
    state["steps"] = np.arange(7, dtype=np.int64)
    m = modelshard.push(state, "m", catalog=uri, shard_size=1 << 20)
    assert m.tensors["embed"].is_split

    # The whole version, through a pool of 1 MiB: less than the split tensor.
    cat = Catalog(uri)
    cat.fs = counting = CountingFileSystem(cat.fs)
    with modelshard.open("m", catalog=cat) as h:
        counting.reset()  # the manifest was read
        got = load_state_dict_to(h, [(n, None) for n in h.names()], device=CPU,
                                 pool_bytes=1 << 20, workers=3)
        s = h.stats()
    for n, a in state.items():
        assert np.array_equal(got[n].numpy(), a), n
    assert s.sources == {"range": len(m.shards)} and s.remote_shards == len(m.shards)
    # staged: a range read per unit of at most 1 MiB; streamed: one read per shard
    assert s.range_reads == len(m.shards) if mode == "stream" else s.range_reads > len(m.shards)
    assert s.verified_bytes == s.range_bytes == counting.bytes_read
    assert counting.bytes_read == s.bytes_served + sum(sh.checksums.data_start
                                                       for sh in m.shards)

    # A rank of 4 reads its rows of the embedding (and the chunks that check them) only.
    start, stop = rank_rows(9000, rank=2, world_size=4)
    with modelshard.open("m", catalog=cat) as h:
        counting.reset()
        part = h.load_state_dict(["embed"], rows={"embed": (start, stop)}, device="cpu")
    assert np.array_equal(part["embed"].numpy(), state["embed"][start:stop])
    assert counting.bytes_read <= state["embed"][start:stop].nbytes + 2 * (1 << 20) + 8192

    # A module on the meta device, from shards preloaded into the node-local cache.
    modelshard.preload("m", catalog=uri, cache_dir=str(tmp_path / "cache"))
    module = torch.nn.Module()
    for n, a in state.items():
        module.register_buffer(n.replace(".", "_"), torch.empty(a.shape, device="meta",
                                                               dtype=torch.from_numpy(a).dtype))
    with modelshard.open("m", catalog=uri, cache_dir=str(tmp_path / "cache")) as h:
        r = h.load_into(module, device="cpu", strict=False)
        s = h.stats()
    assert set(r.loaded) == {"embed", "steps"} and s.sources == {"cache": 3}
    assert np.array_equal(module.embed.numpy(), state["embed"])
    assert np.array_equal(module.steps.numpy(), state["steps"])
