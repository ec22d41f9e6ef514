"""Loading on the real HDFS: byte ranges, preload, replication with stat checks, copies
between an HDFS and a local catalog, locality recorded."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

import modelshard
from modelshard import placement
from modelshard.catalog import access
from modelshard.catalog.catalog import Catalog
from modelshard.errors import UsageError
from tests.counting_fs import CountingFileSystem
from tests.store_data import assert_same


def model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    state = {f"block.{i}.w": rng.standard_normal((128, 64)).astype(np.float32) for i in range(30)}
    state["embed"] = rng.standard_normal((8000, 32)).astype(np.float32)
    return state


@pytest.fixture
def hdfs_model(hdfs_root):
    fs, root = hdfs_root
    uri = fs.uri(f"{root}/cat")
    state = model()
    m = modelshard.push(state, "m", catalog=uri, shard_size=256 * 1024)
    assert m.tensors["embed"].is_split
    return uri, state, m


def test_partial_loads_read_only_the_tensors_and_headers(hdfs_model):
    uri, state, m = hdfs_model
    cat = Catalog(uri)
    cat.fs = fs = CountingFileSystem(cat.fs)
    names = sorted(state)[::5]
    with modelshard.open("m", catalog=cat) as h:
        fs.reset()
        got = h.load_state_dict(names)
        s = h.stats()
        pieces = m.tensors["embed"].pieces
        fs.reset()
        rows = h.get_rows("embed", pieces[0].rows[1] - 3, pieces[0].rows[1] + 3)
    assert_same(got, {n: state[n] for n in names})
    needed = sum(m.tensors[n].nbytes for n in names)
    assert s.range_bytes - needed < 1024 * len(s.reads)  # headers only, a few hundred bytes
    assert s.range_bytes <= 1.05 * needed + 1024 * len(s.reads)
    assert s.sources == {"range": len(s.reads)}
    # The submitter (127.0.0.1) is no DataNode host: every replica is on another node.
    assert s.local_shards == 0 and s.remote_shards == len(s.reads)
    assert np.array_equal(rows, state["embed"][pieces[0].rows[1] - 3:pieces[0].rows[1] + 3])
    # Both shards' headers were checked already; a piece of up to 1 MiB is one checked chunk.
    assert fs.bytes_read == sum(p.end - p.begin for p in pieces[:2])
    totals = access.totals(Catalog(uri), "m", m.version)
    assert totals.sessions == 1 and totals.local == 0 and totals.remote == s.remote_shards


def test_preload_from_hdfs_then_load_locally_and_verify(hdfs_model, tmp_path):
    uri, state, m = hdfs_model
    r = modelshard.preload("m", catalog=uri, cache_dir=str(tmp_path / "c"))
    assert (r.shards, r.fetched, r.bytes_fetched) == (len(m.shards), len(m.shards), r.bytes)
    with modelshard.open("m", catalog=uri, cache_dir=str(tmp_path / "c")) as h:
        assert_same(h.load_state_dict(), state)
        assert h.stats().sources == {"cache": len(m.shards)} and h.stats().range_bytes == 0
    with modelshard.open("m", catalog=uri, budget_bytes=2 * m.shard_size) as h:
        assert_same(h.load_state_dict(framework="torch"), state)
        sched = h.stats().scheduler
        assert sched.peak_bytes_held <= 2 * m.shard_size
        assert sched.local_reads == 0 and sched.remote_reads == len(m.shards)


def replicas(cat, m):
    """The replicas HDFS holds of each block of each shard, from the block locations."""
    vdir = cat.version_dir("m", m.version)
    return [[len(b.hosts) for b in cat.fs.block_hosts(f"{vdir}/{s.path}")] for s in m.shards]


def fully_replicated(cat, m, n=3, timeout=120):
    """Whether every block reaches ``n`` replicas: a write pipeline that lost a slow DataNode
    ends with fewer, and the NameNode copies the missing ones in the background."""
    deadline = time.monotonic() + timeout
    while {k for shard in replicas(cat, m) for k in shard} != {n}:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_replicate_waits_for_the_replicas_on_distinct_hosts(hdfs_model):
    uri, _, m = hdfs_model
    cat = Catalog(uri)
    assert placement.live_datanodes(cat.fs) == 3
    assert fully_replicated(cat, m, 3)  # dfs.replication 3 on 3 DataNodes
    r = placement.replicate("m", replication=1, catalog=uri)
    assert {(s["before"], s["after"]) for s in r.shards} == {(3, 1)}
    assert all(s["replicas"] == [1] * len(s["replicas"]) for s in r.shards)
    assert {n for shard in replicas(cat, m) for n in shard} == {1}  # counted, not the factor read back
    r = placement.replicate("m", replication=2, catalog=uri)
    for s in r.shards:
        assert s["replicas"] == [2] * len(s["hosts"])
        assert all(len(set(hosts)) == 2 and set(hosts) <= {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
                   for hosts in s["hosts"])
    assert {n for shard in replicas(cat, m) for n in shard} == {2}


def test_replicate_beyond_the_live_datanodes_is_refused_and_changes_nothing(hdfs_model, caplog):
    uri, _, m = hdfs_model
    cat = Catalog(uri)
    assert fully_replicated(cat, m, 3)
    with pytest.raises(UsageError, match="only 3 DataNode.*nothing was changed"):
        placement.replicate("m", replication=4, catalog=uri)
    vdir = cat.version_dir("m", m.version)
    assert {cat.fs.stat(f"{vdir}/{s.path}").replication for s in m.shards} == {3}
    with caplog.at_level(logging.WARNING, logger="modelshard.placement"):
        r = placement.replicate("m", replication=4, wait=False, catalog=uri)
    assert "more than the 3 live DataNode" in r.warning and "under-replicated" in caplog.text
    assert {s["after"] for s in r.shards} == {4} and {n for s in r.shards for n in s["replicas"]} == {3}
    with pytest.raises(UsageError, match="at least 1"):
        placement.replicate("m", replication=0, catalog=uri)


def test_replicate_hot_moves_only_the_hot_shards(hdfs_model):
    uri, _, m = hdfs_model
    cat = Catalog(uri)
    placement.replicate("m", replication=1, catalog=uri)
    with pytest.raises(UsageError, match="no access statistics"):
        placement.replicate("m", replication=3, hot=True, catalog=uri)
    hot = m.tensors["block.7.w"].pieces[0].shard
    for _ in range(3):
        modelshard.load("m", catalog=uri, names=["block.7.w"])
    modelshard.load("m", catalog=uri, names=["block.20.w"])
    r = placement.replicate("m", replication=3, hot=True, top=1, catalog=uri)
    assert [s["path"] for s in r.shards] == [hot] and r.shards[0]["replicas"] == [3]
    stats = placement.access_stats("m", catalog=uri)
    assert stats.shards[0].path == hot and stats.shards[0].replication == 3
    assert {s.replication for s in stats.shards[1:]} == {1}
    assert sorted(n for shard in replicas(cat, m) for n in shard) == [1] * (len(m.shards) - 1) + [3]


def test_locality_is_the_tasks_host(hdfs_model, monkeypatch):
    """Inside a YARN container the node's host (NM_HOST) decides what is local: the same
    replica is local on its DataNode's host and remote on another."""
    from modelshard.fs import locality

    uri, _, m = hdfs_model
    cat = Catalog(uri)
    placement.replicate("m", replication=1, catalog=uri)
    path = f"{cat.version_dir('m', m.version)}/{m.tensors['block.0.w'].pieces[0].shard}"
    (holder,) = cat.fs.block_hosts(path)[0].hosts
    elsewhere = next(h for h in ("127.0.0.2", "127.0.0.3", "127.0.0.4") if h != holder)
    seen = {}
    for host in (holder, elsewhere):
        monkeypatch.setenv("NM_HOST", host)
        locality.host_names.cache_clear()
        seen[host] = locality.replica_is_local(cat.fs, path)
        with modelshard.open("m", catalog=uri) as h:
            h.get("block.0.w")
            seen[host, "stats"] = (h.stats().local_shards, h.stats().remote_shards)
    locality.host_names.cache_clear()
    assert seen[holder] is True and seen[elsewhere] is False
    assert seen[holder, "stats"] == (1, 0) and seen[elsewhere, "stats"] == (0, 1)
    hosts = {s["host"]: (s["local"], s["remote"]) for s in _sessions(cat, m)}
    assert hosts == {holder: (1, 0), elsewhere: (0, 1)}


def _sessions(cat, m):
    import json

    folder = access.stats_dir(cat, "m", m.version)
    return [json.loads(cat.fs.read_bytes(i.path)) for i in cat.fs.ls(folder)]


def test_copy_between_hdfs_and_local_catalogs(hdfs_model, hdfs_root, tmp_path):
    uri, state, m = hdfs_model
    fs, root = hdfs_root
    local = str(tmp_path / "local")
    placement.copy("m", local, catalog=uri)
    assert_same(modelshard.load("m", catalog=local), state)
    modelshard.verify("m", catalog=local)
    back = fs.uri(f"{root}/back")
    copied = placement.copy("m", back, catalog=local)
    assert copied.version == m.version and modelshard.verify("m", catalog=back).shards == len(
        m.shards)
    assert modelshard.alias("m@latest", catalog=back) == m.version


def test_assets_on_hdfs_are_replicated_pulled_and_copied(hdfs_root, tmp_path):
    """A model folder's non-tensor files travel with the version on HDFS: replicate sets
    them with the shards, pull and copy write them back byte for byte, verify checks them."""
    from safetensors.numpy import save_file

    fs, root = hdfs_root
    uri = fs.uri(f"{root}/cat")
    files = {"config.json": b'{"model_type": "bert"}', "1_Pooling/config.json": b"{}",
             "tokenizer.json": bytes(range(256)) * 9000, "empty.txt": b""}
    folder = tmp_path / "model"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    save_file(model(), str(folder / "model.safetensors"))
    m = modelshard.push(str(folder), "m", catalog=uri, shard_size=256 * 1024)
    assert sorted(m.assets) == sorted(files)
    r = placement.replicate("m", replication=2, catalog=uri)
    assert {s["path"] for s in r.shards} >= {f"assets/{n}" for n in files}
    vdir = Catalog(uri).version_dir("m", m.version)
    assert {fs.stat(f"{vdir}/assets/{n}").replication for n in files} == {2}
    modelshard.verify("m", catalog=uri)
    modelshard.pull("m", str(tmp_path / "pulled"), catalog=uri)
    placement.copy("m", str(tmp_path / "local"), catalog=uri)
    modelshard.pull("m", str(tmp_path / "copied"), catalog=str(tmp_path / "local"))
    for out in ("pulled", "copied"):
        assert {n: (tmp_path / out / n).read_bytes() for n in files} == files
