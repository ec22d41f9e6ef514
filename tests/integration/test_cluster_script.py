"""bin/modelshard-cluster against the running cluster: a second start starts nothing, and a
start that cannot work says why, names the daemon, and exits non-zero."""

import os
import subprocess
from pathlib import Path

import pytest

from tests.cluster import daemon_stopped_later, wait_replicated

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "bin" / "modelshard-cluster"

pytestmark = pytest.mark.usefixtures("cluster")


def run(*args, env=None):
    return subprocess.run([str(CLUSTER), *args], capture_output=True, text=True, env=env, timeout=120)


def test_status_lists_every_daemon():
    out = run("status")
    assert out.returncode == 0, out.stdout + out.stderr
    for daemon in ("namenode", "datanode1", "datanode2", "datanode3", "resourcemanager", "nodemanager1",
                   "nodemanager2", "historyserver"):
        assert f"{daemon} running (pid " in out.stdout


def test_second_start_starts_nothing():
    before = run("status").stdout
    out = run("start")
    assert out.returncode == 0
    assert "already running" in out.stderr
    assert run("status").stdout == before  # same pids


def test_start_with_ports_taken_names_port_and_daemon(tmp_path):
    env = {**os.environ, "MODELSHARD_RUN": str(tmp_path / "run")}
    out = run("start", env=env)
    assert out.returncode != 0
    assert "port 9000, needed by the master daemons, is already in use" in out.stderr
    assert not (tmp_path / "run" / "pids").exists() or not list((tmp_path / "run" / "pids").iterdir())


def test_start_without_java_says_so(tmp_path):
    # A PATH with every tool of /usr/bin but java.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in Path("/usr/bin").iterdir():
        if tool.name != "java":
            (bindir / tool.name).symlink_to(tool)
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env.update(MODELSHARD_RUN=str(tmp_path / "run"), PATH=str(bindir))
    out = run("start", env=env)
    assert out.returncode != 0
    assert "no 'java' on PATH" in out.stderr


def test_bad_datanode_count_is_a_usage_error(tmp_path):
    out = run("start", "--datanodes", "zero", env={**os.environ, "MODELSHARD_RUN": str(tmp_path)})
    assert out.returncode != 0
    assert "--datanodes must be a whole number" in out.stderr


def test_a_datanode_started_again_takes_blocks_at_once(hdfs_root):
    """start-daemon returns once the DataNode has registered again. The NameNode has not
    noticed the stop yet (it counts a node dead after 30 s) and still places blocks on it: a
    write before the new process registers loses that replica, until the NameNode copies it
    again (a copy it sends to the process that is gone waits 30 s). Registered, every replica
    is reported within a few heartbeats (1 s each)."""
    fs, root = hdfs_root
    with daemon_stopped_later() as stop:
        stop("datanode3")
    fs.write_bytes(f"{root}/after-restart", os.urandom(1 << 20))
    assert fs.stat(f"{root}/after-restart").replication == 3
    wait_replicated(fs, root, timeout=5)
