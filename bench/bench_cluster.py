"""Benchmarks of the real-clusters issue (8) on the bundled cluster of several hosts, each
side by side with its baseline in one run:

* the task environments: archive sizes, time to ship each to HDFS, and what the first job
  on cold NodeManagers costs over a warm second one (localization);
* YARN's fixed cost of a small job (a prediction of 100 rows, submit to success), as is,
  in uber mode (``mapreduce.job.ubertask.enable``: the task runs in the ApplicationMaster's
  container) and with mrjob's own runner (a ``hadoop fs`` JVM for each HDFS call);
* the peak memory of each kind of container (the NodeManagers' own per-container metrics),
  behind the job templates' container sizes;
* the same predict and reshard jobs with the shipped archives vs the old shared-venv way
  (``$MODELSHARD_SHARED_PYTHON``: every node runs the submitter's interpreter), alternating,
  on the cluster restarted with ``--shared-host`` (and restarted as it was afterwards).

    eval "$(bin/modelshard-cluster env)"
    .venv/bin/python bench/bench_cluster.py [--runs 3] [--only envs,fixed,memory,shared]

Prints a markdown table and writes it to bench/out/cluster.md. ``envs`` ships both
environments to a fresh folder (about 17 GB written with 3 replicas, deleted afterwards) and
restarts the cluster, whose NodeManagers then localize the full environment again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

from modelshard import api
from modelshard.catalog.catalog import Catalog
from modelshard.fs import get_fs
from modelshard.jobs.environment import collect_code, collect_environment, ship
from modelshard.jobs.hadoop import SHARED_PYTHON_VAR
from modelshard.jobs.models import ModelSpec
from modelshard.jobs.predict.driver import predict
from modelshard.jobs.reshard.driver import reshard
from modelshard.jobs.train.driver import init_model

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = str(ROOT / "bin" / "modelshard-cluster")
NODEMANAGERS = ("127.0.0.2", "127.0.0.3")
SPEC = ModelSpec("modelshard.jobs.models:mlp", {"sizes": [64, 256, 10]})
rows: list[tuple[str, str, str, str]] = []


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def setup(root: str) -> tuple[str, str, str]:
    """An HDFS catalog with an MLP and a 64 MiB model, and 100 rows to predict."""
    fs, path = get_fs(root)
    catalog = fs.uri(f"{path}/catalog")
    version = init_model(Catalog(catalog), "mlp", SPEC)
    rng = np.random.default_rng(0)
    api.push({f"w{i}": rng.standard_normal((1024, 1024)).astype(np.float32) for i in range(16)}, "big",
             catalog=catalog, shard_size=16 << 20)
    fs.write_bytes(f"{path}/rows/part-0.jsonl", "".join(
        json.dumps({"id": i, "x": rng.standard_normal(64).round(4).tolist()}) + "\n" for i in range(100)).encode())
    return catalog, f"mlp@{version}", fs.uri(f"{path}/rows")


def run_predict(catalog: str, key: str, rows_uri: str, **kwargs) -> float:
    out = f"{catalog.rsplit('/', 1)[0]}/out-{uuid.uuid4().hex[:8]}"
    seconds, r = timed(predict, key, rows_uri, out, catalog=catalog, runner="hadoop", **kwargs)
    assert r.records == 100, r
    return seconds


def run_reshard(catalog: str) -> float:
    return timed(reshard, "big@1", shard_size=8 << 20, catalog=catalog, runner="hadoop", tasks=2)[0]


def bench_envs(catalog: str, key: str, rows_uri: str) -> None:
    fs, base = get_fs(f"{catalog.rsplit('/', 1)[0]}/envs-{uuid.uuid4().hex[:8]}")
    try:
        for flavour in ("full", "slim"):
            env = collect_environment(flavour)
            seconds, shipped = timed(ship, env, fs, base)
            rows.append((f"{flavour} environment archive", f"{shipped.uploaded / 1e9:.2f} GB, {len(env.files)} files",
                         f"shipped to HDFS in {seconds:.0f} s ({shipped.uploaded / seconds / 1e6:.0f} MB/s of "
                         "archive, 3 replicas)", ""))
        code = ship(collect_code(), fs, base)
        rows.append(("code archive", f"{code.uploaded / 1e3:.0f} kB", "shipped again after every edit", ""))
    finally:
        fs.delete(base, recursive=True)  # gigabytes, and the jobs below use the usual folder
    run_predict(catalog, key, rows_uri)  # the usual folder holds this environment
    restart()  # NodeManagers start with empty caches
    cold = run_predict(catalog, key, rows_uri)
    warm = run_predict(catalog, key, rows_uri)
    rows.append(("first predict job on cold NodeManagers (full env)", f"{cold:.0f} s",
                 f"second job {warm:.0f} s: localization costs {cold - warm:.0f} s, once per node", ""))


@contextlib.contextmanager
def mrjob_hadoop_fs():
    """The runner as it was: mrjob's own, a `hadoop fs` JVM for each HDFS call around a job."""
    from mrjob.hadoop import HadoopJobRunner

    from modelshard.jobs import launch

    ours, launch.HadoopRunner = launch.HadoopRunner, HadoopJobRunner
    try:
        yield
    finally:
        launch.HadoopRunner = ours


# A task runs uberized only where it fits the ApplicationMaster's container: give the AM the
# predict map's 1536 MB (with the default 1024 MB, YARN quietly runs the job as usual).
UBER = {"mapreduce.job.ubertask.enable": "true", "yarn.app.mapreduce.am.resource.mb": "1536"}


def bench_fixed(catalog: str, key: str, rows_uri: str, runs: int) -> None:
    run_predict(catalog, key, rows_uri)  # warm the nodes' caches
    plain, uber, jvms = [], [], []
    for _ in range(runs):  # alternating, so that the machine's noise falls on all three alike
        plain.append(run_predict(catalog, key, rows_uri))
        uber.append(run_predict(catalog, key, rows_uri, overrides=UBER))
        with mrjob_hadoop_fs():
            jvms.append(run_predict(catalog, key, rows_uri))
    what = "fixed cost of a small job (predict 100 rows), submit to success"
    rows.append((what, f"{median(plain):.1f} s", f"uber mode {median(uber):.1f} s",
                 f"{median(plain) / median(uber):.2f}x"))
    rows.append((what, f"{median(plain):.1f} s", f"mrjob's `hadoop fs` JVMs {median(jvms):.1f} s",
                 f"{median(jvms) / median(plain):.2f}x faster"))


class PeakMemory:
    """Polls the NodeManagers' per-container metrics (JMX) while jobs run."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for host in NODEMANAGERS:
                with contextlib.suppress(OSError, ValueError):
                    url = f"http://{host}:8042/jmx?qry=Hadoop:service=NodeManager,name=ContainerResource_*"
                    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - a local NodeManager
                        for bean in json.load(r)["beans"]:
                            cid = bean["name"].rsplit("ContainerResource_", 1)[1]
                            mb = int(bean.get("PMemUsageMBsMaxMBs") or bean.get("PMemUsageMBs") or 0)
                            self.peaks[cid] = max(self.peaks.get(cid, 0), mb)
            time.sleep(0.5)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def bench_memory(catalog: str, key: str, rows_uri: str) -> None:
    from modelshard.jobs.train.driver import train

    def job_peaks(fn) -> tuple[int, int]:
        probe = PeakMemory()
        fn()
        time.sleep(2)
        peaks = probe.stop()
        am = max((mb for c, mb in peaks.items() if c.endswith("_000001")), default=0)
        tasks = max((mb for c, mb in peaks.items() if not c.endswith("_000001")), default=0)
        return am, tasks

    fs, base = get_fs(catalog.rsplit("/", 1)[0])
    fs.write_bytes(f"{base}/train/part-0.jsonl", "".join(
        json.dumps({"id": i, "x": [float(i % 7)] * 64, "y": i % 10}) + "\n" for i in range(2000)).encode())
    for what, fn in (("predict map", lambda: run_predict(catalog, key, rows_uri)),
                     ("reshard map (slim env)", lambda: run_reshard(catalog)),
                     ("train map + reduce", lambda: train("mlp", fs.uri(f"{base}/train"), epochs=1, catalog=catalog,
                                                         runner="hadoop"))):
        am, task = job_peaks(fn)
        rows.append((f"peak memory: {what}", f"{task} MB", f"ApplicationMaster {am} MB", ""))


def restart(*flags: str) -> None:
    subprocess.run([CLUSTER, "stop"], check=True, capture_output=True)
    subprocess.run([CLUSTER, "start", *flags], check=True, capture_output=True)


@contextlib.contextmanager
def shared_venv():
    os.environ[SHARED_PYTHON_VAR] = sys.executable
    try:
        yield
    finally:
        del os.environ[SHARED_PYTHON_VAR]


def bench_shared(catalog: str, key: str, rows_uri: str, runs: int) -> None:
    # Both ways on one cluster whose nodes can see the checkout (the shipped way uses none
    # of it), one job of each in turn: the machine's noise falls on both alike.
    restart("--shared-host")
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for i in range(runs + 1):  # the first of each localizes or warms up: not counted
            for way in ("shipped archive", "shared venv"):
                with shared_venv() if way == "shared venv" else contextlib.nullcontext():
                    for what, job in (("predict", lambda: run_predict(catalog, key, rows_uri)),
                                      ("reshard", lambda: run_reshard(catalog))):
                        seconds = job()
                        if i:
                            times.setdefault((what, way), []).append(seconds)
    finally:
        restart()
    for what in ("predict", "reshard"):
        a, b = median(times[what, "shipped archive"]), median(times[what, "shared venv"])
        rows.append((f"{what} job, second and later (median of {runs})", f"shipped archive {a:.1f} s",
                     f"shared venv {b:.1f} s", f"{a / b:.2f}x ({(a / b - 1) * 100:+.0f}%)"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", default="envs,fixed,memory,shared")
    a = p.parse_args()
    only = set(a.only.split(","))
    root = f"hdfs:///tmp/bench-cluster/{uuid.uuid4().hex[:8]}"
    catalog, key, rows_uri = setup(root)
    try:
        if "envs" in only:
            bench_envs(catalog, key, rows_uri)
        if "fixed" in only:
            bench_fixed(catalog, key, rows_uri, a.runs)
        if "memory" in only:
            bench_memory(catalog, key, rows_uri)
        if "shared" in only:
            bench_shared(catalog, key, rows_uri, a.runs)
    finally:
        fs, path = get_fs(root)
        fs.delete(path, recursive=True)
    table = ["| what | measured | beside it | ratio |", "|---|---|---|---|"]
    table += [f"| {' | '.join(r)} |" for r in rows]
    text = "\n".join(table)
    print(text)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
