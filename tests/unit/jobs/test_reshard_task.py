"""A resharding task reads each source byte once: the chunks it checks are the bytes it
writes out (issue 9, item 4)."""

from __future__ import annotations

import os

import numpy as np
from safetensors.numpy import load_file

import modelshard
from modelshard.catalog.catalog import Catalog
from modelshard.fs import LocalFileSystem
from modelshard.jobs.reshard.task import plan_reshard, plan_to_json, write_planned_shard
from tests.counting_fs import CountingFileSystem


def test_a_reshard_task_reads_each_source_byte_once_and_writes_what_it_checked(tmp_path):
    rng = np.random.default_rng(0)
    state = {f"layer.{i}.weight": rng.standard_normal((64, 32)).astype(np.float32)
             for i in range(40)}
    state["embed"] = rng.standard_normal((4000, 16)).astype(np.float32)  # split in the source
    root = str(tmp_path / "cat")
    m = modelshard.push(state, "m", catalog=root, shard_size=64 * 1024)
    assert len(m.shards) > 4 and m.tensors["embed"].is_split
    cat = Catalog(root)
    cat.fs = fs = CountingFileSystem(LocalFileSystem(), mappable=False)
    _, plans = plan_reshard(m, shard_size=1 << 20, shard_count=None, dtype=None)
    staging = str(tmp_path / "staging")
    with modelshard.open("m", catalog=cat, record_stats=False) as source:
        fs.reset()  # the manifest
        reports = [write_planned_shard(source, staging, plan_to_json(p)) for p in plans]
        stats = source.stats()
    # Every byte of every source shard once (its header, then its tensors: whole chunks).
    assert fs.bytes_read == stats.range_bytes == sum(s.size for s in m.shards)
    assert stats.verified_bytes == fs.bytes_read
    got = {}
    for plan, report in zip(plans, reports, strict=True):
        path = os.path.join(staging, "shards", plan.filename)
        assert os.path.getsize(path) == report["size"]
        got |= load_file(path)
    assert sorted(got) == sorted(state)
    for name, a in state.items():
        np.testing.assert_array_equal(got[name], a)
