"""Replicas of ``modelshard serve`` as a YARN application on the dev cluster: replicas start
with the shipped environment and answer predictions; placed near a model whose blocks are
on one NodeManager's host, they run there; a replica's process killed by its pid is
started again in its container (same host), a replica's container killed is started again
by YARN (a new attempt of its task, in a new container); stop kills the application."""

from __future__ import annotations

import json
import os
import posixpath
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
import torch

from modelshard.catalog.catalog import Catalog
from modelshard.serve import registry as reg
from modelshard.serve import yarn
from tests.unit.test_serve_pool import push_mlp, rows


def predict(url: str, key: str, x: list) -> dict:
    req = urllib.request.Request(f"{url}/v1/models/{key}:predict",
                                 data=json.dumps({"records": [{"x": r} for r in x]}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "modelshard", *args], capture_output=True,
                          text=True, env=env, timeout=1200)


def wait_for(name: str, catalog: str, count: int, ok, what: str) -> list[dict]:
    """The replicas once ``count`` answer and ``ok(replicas)`` holds (10 minutes at most)."""
    deadline = time.monotonic() + 600
    while True:
        now = yarn.replicas(name, catalog=catalog)
        if len(now) == count and ok(now):
            return now
        assert time.monotonic() < deadline, f"{what}: {now}"
        time.sleep(2)


def container_group(pid: int, container: str) -> int:
    """The process group of the container that runs ``pid``: the NodeManager starts each
    container as a session of its own, whose leader's command line names the container."""
    pgid = os.getpgid(pid)
    with open(f"/proc/{pgid}/cmdline", "rb") as f:
        assert container.encode() in f.read(), "not a container's own process group"
    return pgid


def on_one_nodemanager(fs, path: str, managers: set[str]) -> str:
    """Write ``path`` again with one replica until HDFS puts it on a NodeManager's host (the
    NameNode picks a DataNode at random for a writer off the cluster); that host."""
    data = fs.read_bytes(path)
    for _ in range(30):
        fs.write_bytes(path + ".tmp", data, replication=1)
        hosts = {h for b in fs.block_hosts(path + ".tmp") for h in b.hosts}
        if len(hosts) == 1 and hosts <= managers:
            fs.delete(path)
            fs.rename(path + ".tmp", path)
            return hosts.pop()
        fs.delete(path + ".tmp")
    pytest.fail(f"HDFS never put {path} on one of {managers} in 30 writes")


def test_replicas_placed_near_a_model_run_on_its_host_and_restart(hdfs_root):
    fs, root = hdfs_root
    catalog = fs.uri(f"{root}/catalog")
    model = push_mlp(catalog, "near", [64, 32, 10])
    push_mlp(catalog, "other", [64, 16, 10], seed=1)
    managers = yarn.nodemanager_hosts()
    assert managers, "no NodeManager running"
    cat = Catalog(catalog)
    name, version = cat.resolve("near@prod")
    (shard,) = cat.manifest(name, version).shards
    host = on_one_nodemanager(fs, posixpath.join(cat.version_dir(name, version), shard.path), managers)
    x = rows(4, 64)
    want = model(torch.tensor(x)).argmax(-1).tolist()
    svc = f"test-{uuid.uuid4().hex[:8]}"
    out = cli("serve-yarn", "start", svc, "--catalog", catalog, "--budget", "64M", "--pin", "near@prod",
              "--replicas", "2", "--memory-mb", "1536", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"0 on {host}" in out.stderr and f"1 on {host}" in out.stderr  # the plan it printed
    app = json.loads(out.stdout)
    try:
        replicas = app["replicas"]
        # On the one NodeManager host that holds the model's blocks: a preference, which the
        # scheduler relaxes after 2 missed opportunities (that host busy): at least one there,
        # and each says truly whether it is.
        assert [(r["local"], r["near"]) for r in replicas] == [(r["host"] == host, [host]) for r in replicas]
        assert any(r["host"] == host for r in replicas), replicas
        print(f"replicas on {[r['host'] for r in replicas]}, the model's block on {host}")
        for r in replicas:
            got = predict(f"http://{r['host']}:{r['port']}", "near@prod", x)
            assert got["predictions"] == want
            with urllib.request.urlopen(f"http://{r['host']}:{r['port']}/v1/status", timeout=30) as resp:
                status = json.loads(resp.read())
            # Its pinned shard, read from this node or over the network.
            assert (status["local_reads"], status["remote_reads"]) == ((1, 0) if r["local"] else (0, 1))
        # Its process killed: started again in its container, so on the same host.
        victim = replicas[0]
        os.kill(victim["pid"], signal.SIGKILL)
        now = wait_for(svc, catalog, 2, lambda rs: any(r["replica"] == victim["replica"] and r["pid"] != victim["pid"]
                                                       for r in rs), "not restarted in its container")
        (back,) = [r for r in now if r["replica"] == victim["replica"]]
        assert [back[k] for k in ("container", "host", "local")] == [victim[k] for k in ("container", "host", "local")]
        assert predict(f"http://{back['host']}:{back['port']}", "near@prod", x)["predictions"] == want
        # Its container killed: YARN starts a new attempt of the task in a new container.
        victim = back
        os.killpg(container_group(victim["pid"], victim["container"]), signal.SIGKILL)
        now = wait_for(svc, catalog, 2, lambda rs: any(r["replica"] == victim["replica"]
                                                       and r["container"] != victim["container"] for r in rs),
                       "not started again in a new container")
        (back,) = [r for r in now if r["replica"] == victim["replica"]]
        assert back["host"] in managers and back["local"] == (back["host"] == host)
        assert predict(f"http://{back['host']}:{back['port']}", "other@prod", x)["model"] == "other@1"
        listed = cli("serve-yarn", "list", svc, "--catalog", catalog)
        assert listed.returncode == 0, listed.stderr
        other = replicas[1]
        assert f"http://{other['host']}:{other['port']}  " + (
            "on a host holding its models' blocks" if other["local"] else "not on the hosts") in listed.stdout
        print(f"placed on {host}; after the container was killed: {back['host']}")
    finally:
        stopped = cli("serve-yarn", "stop", svc, "--catalog", catalog)
    assert stopped.returncode == 0, stopped.stderr
    assert reg.replicas(yarn.registry_folder(svc, catalog=catalog)) == []


def test_replicas_on_yarn_anywhere_serve_restart_and_stop(hdfs_root):
    fs, root = hdfs_root
    catalog = fs.uri(f"{root}/catalog")
    model = push_mlp(catalog, "digits", [64, 32, 10])
    x = rows(4, 64)
    want = model(torch.tensor(x)).argmax(-1).tolist()
    name = f"test-{uuid.uuid4().hex[:8]}"
    out = cli("serve-yarn", "start", name, "--catalog", catalog, "--budget", "64M",
              "--pin", "digits@prod", "--near", "none", "--replicas", "2", "--memory-mb", "1536", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    app = json.loads(out.stdout)
    try:
        replicas = app["replicas"]
        assert len(replicas) == 2
        assert {r["host"] for r in replicas} <= {"127.0.0.2", "127.0.0.3"}  # on the NodeManagers
        assert not any("local" in r for r in replicas)  # not placed by a split
        for r in replicas:
            got = predict(f"http://{r['host']}:{r['port']}", "digits@prod", x)
            assert got["model"] == "digits@1" and got["predictions"] == want
        # Kill one replica's process: its script starts it again in the same container.
        victim = replicas[0]
        os.kill(victim["pid"], signal.SIGKILL)
        now = wait_for(name, catalog, 2, lambda rs: any(r["replica"] == victim["replica"] and r["pid"] != victim["pid"]
                                                        for r in rs), "not restarted")
        (back,) = [r for r in now if r["replica"] == victim["replica"]]
        assert (back["container"], back["host"]) == (victim["container"], victim["host"])
        got = predict(f"http://{back['host']}:{back['port']}", "digits@prod", x)
        assert got["predictions"] == want
        listed = cli("serve-yarn", "list", name, "--catalog", catalog, "--json")
        assert sorted(r["port"] for r in json.loads(listed.stdout)) == sorted(r["port"] for r in now)
    finally:
        stopped = cli("serve-yarn", "stop", name, "--catalog", catalog)
    assert stopped.returncode == 0, stopped.stderr
    status = subprocess.run(["hadoop", "application", "-status", app["application_id"]],
                            capture_output=True, text=True)
    assert "KILLED" in status.stdout
    assert reg.replicas(yarn.registry_folder(name, catalog=catalog)) == []
