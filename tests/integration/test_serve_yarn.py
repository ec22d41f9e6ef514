"""Replicas of ``modelshard serve`` as a YARN application on the dev cluster: two replicas
start with the shipped environment, each answers predictions, one killed by its pid is
started again by YARN (a new attempt of its task, in a new container) and registers again,
and stop kills the application."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import torch

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


def test_replicas_on_yarn_serve_restart_and_stop(hdfs_root):
    fs, root = hdfs_root
    catalog = fs.uri(f"{root}/catalog")
    model = push_mlp(catalog, "digits", [64, 32, 10])
    x = rows(4, 64)
    want = model(torch.tensor(x)).argmax(-1).tolist()
    name = f"test-{uuid.uuid4().hex[:8]}"
    out = cli("serve-yarn", "start", name, "--catalog", catalog, "--budget", "64M",
              "--pin", "digits@prod", "--replicas", "2", "--memory-mb", "1536", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    app = json.loads(out.stdout)
    try:
        replicas = app["replicas"]
        assert len(replicas) == 2
        assert {r["host"] for r in replicas} <= {"127.0.0.2", "127.0.0.3"}  # on the NodeManagers
        for r in replicas:
            got = predict(f"http://{r['host']}:{r['port']}", "digits@prod", x)
            assert got["model"] == "digits@1" and got["predictions"] == want
        # Kill one replica's process: its NodeManager relaunches the container.
        victim = replicas[0]
        os.kill(victim["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 600
        while True:
            now = yarn.replicas(name, catalog=catalog)
            back = [r for r in now if r["replica"] == victim["replica"] and r["pid"] != victim["pid"]]
            if len(now) == 2 and back:
                break
            assert time.monotonic() < deadline, f"not relaunched: {now}"
            time.sleep(2)
        got = predict(f"http://{back[0]['host']}:{back[0]['port']}", "digits@prod", x)
        assert got["predictions"] == want
        listed = cli("serve-yarn", "list", name, "--catalog", catalog, "--json")
        assert sorted(r["port"] for r in json.loads(listed.stdout)) == sorted(r["port"] for r in now)
    finally:
        stopped = cli("serve-yarn", "stop", name, "--catalog", catalog)
    assert stopped.returncode == 0, stopped.stderr
    assert victim["container"] not in {r["container"] for r in now}  # a new container
    status = subprocess.run(["hadoop", "application", "-status", app["application_id"]],
                            capture_output=True, text=True)
    assert "KILLED" in status.stdout
    assert reg.replicas(yarn.registry_folder(name, catalog=catalog)) == []
