"""The replicas' registry (modelshard.serve.registry) on a local folder, and serve-yarn's
refusals that need no cluster."""

from __future__ import annotations

import subprocess
import sys

from modelshard.serve import registry as reg


def test_register_replace_unregister_and_check(tmp_path):
    folder = str(tmp_path / "reg")
    reg.register(folder, "127.0.0.2", 4001, replica="task_0", container="c1")
    reg.register(folder, "127.0.0.3", 4002, replica="task_1", container="c2")
    # task_0 restarted after a kill -9: its new process replaces the file the old one left.
    reg.register(folder, "127.0.0.2", 4003, replica="task_0", container="c3")
    assert [(r["port"], r["replica"]) for r in reg.replicas(folder)] == [(4003, "task_0"), (4002, "task_1")]
    assert reg.replicas(folder, check=True, timeout_s=0.5) == []  # nothing listens there
    reg.unregister(folder, "127.0.0.2", 4003)
    reg.unregister(folder, "127.0.0.2", 4003)  # gone already: nothing
    assert [r["port"] for r in reg.replicas(folder)] == [4002]
    assert reg.replicas(str(tmp_path / "none")) == []


def test_serve_yarn_needs_an_hdfs_catalog(tmp_path):
    out = subprocess.run([sys.executable, "-m", "modelshard", "serve-yarn", "start", "x", "--catalog",
                          str(tmp_path), "--budget", "1G", "--wait", "0"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "hdfs://" in out.stderr


def _catalog_with_hosts(tmp_path, monkeypatch, hosts_of: dict[str, list[tuple[str, ...]]],
                        managers: set[str] | None):
    """A local catalog whose shards' blocks are said to be on ``hosts_of[shard file name]``
    (one tuple per block), and YARN's NodeManagers on ``managers``."""
    from modelshard.catalog.catalog import Catalog
    from modelshard.fs.base import BlockLocation
    from modelshard.serve import yarn
    from tests.unit.test_serve_pool import push_mlp

    cat = Catalog(str(tmp_path / "catalog"))
    push_mlp(str(tmp_path / "catalog"), "a", [64, 128, 128, 10], shard_size=40_000)  # 3 shards
    push_mlp(str(tmp_path / "catalog"), "b", [64, 32, 10])  # 1 shard
    files = {}
    for key in ("a@prod", "b@prod"):
        name, version = cat.resolve(key)
        for i, s in enumerate(cat.manifest(name, version).shards):
            files[f"{name}{i}"] = f"{cat.version_dir(name, version)}/{s.path}"
    by_path = {files[k]: v for k, v in hosts_of.items()}

    def block_hosts(path, offset=0, length=None):
        return [BlockLocation(i * 100, 100, h) for i, h in enumerate(by_path[path])]

    monkeypatch.setattr(cat.fs, "block_hosts", block_hosts)
    monkeypatch.setattr(yarn, "nodemanager_hosts", lambda: managers)
    return cat, {v: k for k, v in files.items()}


def test_plan_ranks_the_nodemanager_hosts_by_the_models_bytes(tmp_path, monkeypatch):
    from modelshard.serve import yarn

    cat, name_of = _catalog_with_hosts(tmp_path, monkeypatch, {
        "a0": [("n1", "n3")], "a1": [("n1",), ("n3",)], "a2": [("n3",)], "b0": [("n2", "n3")]},
        managers={"n1", "n2"})  # n3: a DataNode only, never asked for

    def where(spots):
        return [(name_of[s.split.removeprefix("file://")], s.hosts) for s in spots]

    # n1 holds 200 bytes of a's blocks, n2 none: every replica near a goes to n1, on a's
    # shards there, the one held by no other NodeManager host first, then the next.
    assert where(yarn.plan(["a@prod"], 3, catalog=cat)) == [
        ("a0", ("n1",)), ("a1", ("n1",)), ("a0", ("n1",))]
    # Near a and b: n1 (200 bytes) first, then n2 (100), round robin.
    assert where(yarn.plan(["a@prod", "b@prod"], 3, catalog=cat)) == [
        ("a0", ("n1",)), ("b0", ("n2",)), ("a1", ("n1",))]
    # No NodeManager holds a2: nowhere to prefer.
    monkeypatch.setattr(yarn, "nodemanager_hosts", lambda: {"n2"})
    assert yarn.plan(["a@prod"], 2, catalog=cat) == []
    # The ResourceManager cannot be asked: every host counts, n3 (300 bytes) first.
    monkeypatch.setattr(yarn, "nodemanager_hosts", lambda: None)
    assert where(yarn.plan(["a@prod"], 2, catalog=cat)) == [("a2", ("n3",)), ("a0", ("n1", "n3"))]


def test_replica_info_says_where_it_runs(tmp_path, monkeypatch):
    from modelshard.serve import yarn

    monkeypatch.setenv("CONTAINER_ID", "container_1_0001_01_000002")
    monkeypatch.setenv(yarn.REPLICA_ENV, "task_1_0001_m_000000")
    monkeypatch.delenv(yarn.SPLIT_ENV, raising=False)
    assert yarn.replica_info() == {"container": "container_1_0001_01_000002", "replica": "task_1_0001_m_000000"}
    split = tmp_path / "shard.safetensors"
    split.write_bytes(b"x" * 10)
    monkeypatch.setenv(yarn.SPLIT_ENV, str(split))
    info = yarn.replica_info()
    assert info["split"] == str(split) and info["near"] == ["localhost"] and info["local"] is True
