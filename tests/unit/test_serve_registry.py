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
