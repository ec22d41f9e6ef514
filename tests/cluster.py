"""Helpers for tests that act on the bundled cluster: stop and start one daemon (through the
cluster script, by pid), run a job in the background, ask YARN and the MapReduce
ApplicationMaster (through the ResourceManager's proxy) what its tasks are doing, and find
(and damage) the block files that hold an HDFS file's replicas on the DataNodes' disks."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.faults.test_byte_flips import flip

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "bin" / "modelshard-cluster"
RM = "http://127.0.0.1:8088"
JHS = "http://127.0.0.1:19888"
NN = "http://127.0.0.1:9870"


def cluster(*args: str, timeout: float = 240) -> str:
    out = subprocess.run([str(CLUSTER), *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"modelshard-cluster {' '.join(args)}: {out.stderr}"
    return out.stdout


def hadoop(*args: str, timeout: float = 120) -> str:
    """``bin/hadoop ARGS`` (e.g. ``job -kill-task ID``); its stdout and stderr."""
    out = subprocess.run([str(ROOT / "bin" / "hadoop"), *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"hadoop {' '.join(args)}: {out.stderr}"
    return out.stdout + out.stderr


@contextlib.contextmanager
def daemon_stopped_later() -> Iterator[Callable[[str], None]]:
    """``stop(name)`` stops a DataNode or NodeManager; every daemon stopped is started again
    (and waited for) when the block ends, so that later tests find the whole cluster."""
    stopped: list[str] = []

    def stop(name: str) -> None:
        cluster("stop-daemon", name)
        stopped.append(name)

    try:
        yield stop
    finally:
        for name in stopped:
            cluster("start-daemon", name)


def wait_replicated(fs, root: str, timeout: float = 120) -> None:
    """Wait until every block of every file under ``root`` has the replicas its file asks
    for (modelshard writes some small files with fewer on purpose). A file written
    just after a DataNode restarted, or while one was busy, may get fewer (the NameNode places
    what it can and copies the rest in the background); a test that then stops a DataNode
    needs the others to hold every block."""
    deadline = time.monotonic() + timeout
    while short := [f.path for f in fs.walk_files(root) if any(len(b.hosts) < f.replication
                                                                for b in fs.block_hosts(f.path))]:
        assert time.monotonic() < deadline, f"{short} still lack replicas after {timeout} s"
        time.sleep(0.5)


def get_json(url: str) -> dict:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - the local cluster's REST APIs
        return json.load(r)


def _listed(items: list | dict | None) -> list:
    """The JobHistoryServer writes a list of one as the item itself."""
    return [items] if isinstance(items, dict) else items or []


class BackgroundJob:
    """Runs ``fn(echo=...)`` in a thread; ``app_id`` appears once YARN accepted the job."""

    def __init__(self, fn: Callable[..., object]) -> None:
        self.app_id: str | None = None
        self.result: object = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _echo(self, line: str) -> None:
        if m := re.search(r"Submitted application (application_\d+_\d+)", line):
            self.app_id = m.group(1)

    def _run(self, fn: Callable[..., object]) -> None:
        try:
            self.result = fn(echo=self._echo)
        except BaseException as e:  # handed to the test in join()
            self.error = e

    def join(self, timeout: float = 900) -> object:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the job did not finish in time"
        if self.error:
            raise self.error
        return self.result

    def attempts(self) -> list[dict]:
        """Every task attempt with its state and node: from the ApplicationMaster while the
        job runs, from the JobHistoryServer once it has finished."""
        job = self.app_id.replace("application_", "job_")
        base = f"{JHS}/ws/v1/history/mapreduce/jobs/{job}" if self._thread.ident and not self._thread.is_alive() \
            else f"{RM}/proxy/{self.app_id}/ws/v1/mapreduce/jobs/{job}"
        found = []
        for task in _listed(get_json(f"{base}/tasks")["tasks"]["task"]):
            found += _listed(get_json(f"{base}/tasks/{task['id']}/attempts")["taskAttempts"]["taskAttempt"])
        return found

    def wait_for_running_maps(self, n: int, timeout: float = 900) -> list[dict]:
        """The attempts once ``n`` map attempts run (their containers started)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._thread.is_alive() or self.error is None, self.error
            if self.app_id:
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    running = [a for a in self.attempts() if a["state"] == "RUNNING" and a["type"] == "MAP"]
                    if len(running) >= n:
                        return running
            time.sleep(0.5)
        raise AssertionError(f"{n} map attempt(s) of {self.app_id} were not running after {timeout} s")

    def am_host(self) -> str:
        return get_json(f"{RM}/ws/v1/cluster/apps/{self.app_id}")["app"]["amHostHttpAddress"].split(":")[0]


# -- block files -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """One block of an HDFS file: where it starts in the file, and its replicas' block files
    (``blk_<id>``) in the order the NameNode lists them, the order a reader tries them."""

    id: int
    offset: int
    length: int
    replicas: tuple[Path, ...]


def _user() -> str:
    return os.environ.get("USER", "root")


def volumes(host: str, info_port: int) -> list[Path]:
    """The data folders of the DataNode at ``host`` (from its JMX: no guess of the layout)."""
    beans = get_json(f"http://{host}:{info_port}/jmx?qry=Hadoop:service=DataNode,name=DataNodeInfo")
    return [Path(v) for v in json.loads(beans["beans"][0]["VolumeInfo"])]


def blocks(path: str) -> list[Block]:
    """The blocks of the HDFS file ``path`` and their finalized replicas' files on the
    DataNodes' disks, from the NameNode's block locations and the DataNodes' volumes."""
    located = get_json(f"{NN}/webhdfs/v1{path}?op=GET_BLOCK_LOCATIONS&user.name={_user()}")
    found = []
    for lb in located["LocatedBlocks"]["locatedBlocks"]:
        b = lb["block"]
        files: list[Path] = []
        for loc in lb["locations"]:
            for volume in volumes(loc["hostName"], loc["infoPort"]):
                # Finalized replicas only: one still in rbw/ is moved when its DataNode is done.
                files += (volume / "current" / b["blockPoolId"] / "current" / "finalized"
                          ).rglob(f"blk_{b['blockId']}")
        found.append(Block(b["blockId"], lb["startOffset"], b["numBytes"], tuple(files)))
    return found


def block_at(path: str, offset: int, *, timeout: float = 60) -> Block:
    """The block of the HDFS file ``path`` that holds the byte at ``offset``, once it has as
    many finalized replicas as the file's replication (a DataNode may report and finalize its
    replica a moment after the writer's close returned)."""
    want = get_json(f"{NN}/webhdfs/v1{path}?op=GETFILESTATUS&user.name={_user()}")["FileStatus"]["replication"]
    deadline = time.monotonic() + timeout
    while True:
        block = next(b for b in blocks(path) if b.offset <= offset < b.offset + b.length)
        if len(block.replicas) >= want:
            return block
        assert time.monotonic() < deadline, f"{path}: {want} replicas not finalized in {timeout} s: {block}"
        time.sleep(0.2)


def flip_byte(path: str, offset: int, *, replicas: int | None = None) -> list[Path]:
    """Flip one bit of the byte at ``offset`` of the HDFS file ``path`` in the block files of
    its first ``replicas`` replicas (None: all), as a failing disk would; the files changed."""
    block = block_at(path, offset)
    changed = list(block.replicas[:replicas])
    for file in changed:
        flip(str(file), offset - block.offset)
    return changed
