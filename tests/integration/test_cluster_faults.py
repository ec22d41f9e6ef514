"""Faults of a cluster of several hosts, as they happen on a real one: a DataNode stops during
a load and during a prediction job, a map attempt is killed (YARN re-runs it), a NodeManager
stops mid-job. Every run ends with correct results: one prediction per input id, equal to
in-process ones. The stopped daemon is started again afterwards."""

from __future__ import annotations

import json

import numpy as np
import pytest

import modelshard
from modelshard.catalog.catalog import Catalog
from modelshard.jobs.modelio import load_model
from modelshard.jobs.models import ModelSpec
from modelshard.jobs.predict.driver import predict
from modelshard.jobs.predict.task import Predictor
from modelshard.jobs.train.driver import init_model
from tests.cluster import BackgroundJob, daemon_stopped_later, hadoop, wait_replicated
from tests.store_data import assert_same

SPEC = ModelSpec("modelshard.jobs.models:mlp", {"sizes": [64, 256, 10]})
ROWS_PER_FILE = 20_000


@pytest.fixture
def prediction_setup(hdfs_root):
    """An MLP in an HDFS catalog, four input files of feature rows, and the predictions that
    one process makes of them."""
    fs, root = hdfs_root
    catalog = fs.uri(f"{root}/catalog")
    version = init_model(Catalog(catalog), "mlp", SPEC)
    rng = np.random.default_rng(7)
    lines = []
    for f in range(4):
        part = [json.dumps({"id": f"f{f}-{i}", "x": rng.standard_normal(64).round(4).tolist()})
                for i in range(ROWS_PER_FILE)]
        fs.write_bytes(f"{root}/in/part-{f}.jsonl", ("\n".join(part) + "\n").encode())
        lines += part
    p = Predictor(load_model(catalog, f"mlp@{version}"), fmt="jsonl")
    expected = dict(pair for line in lines for pair in p.add(line))
    expected.update(p.flush())
    for folder in (f"{root}/in", Catalog(catalog).version_dir("mlp", version)):
        wait_replicated(fs, folder)  # the tests stop a DataNode: the others must hold every block
    return fs, root, catalog, f"mlp@{version}", expected


def predictions(fs, folder: str) -> list[tuple[object, object]]:
    pairs = []
    for info in fs.ls(folder):
        if info.path.rsplit("/", 1)[-1].startswith("part-"):
            for line in fs.read_bytes(info.path).decode().splitlines():
                k, v = line.split("\t")
                pairs.append((json.loads(k), json.loads(v)))
    return pairs


def check_exactly_once(fs, folder: str, expected: dict) -> None:
    pairs = predictions(fs, folder)
    assert len(pairs) == len(expected)  # no line twice, none lost
    assert dict(pairs) == expected


def start_predict(catalog, key, data, out, **job_options):
    return BackgroundJob(lambda echo: predict(key, data, out, catalog=catalog, runner="hadoop", echo=echo,
                                              job_options=job_options or None))


def test_a_load_goes_on_when_a_datanode_stops(hdfs_root):
    fs, root = hdfs_root
    catalog = fs.uri(f"{root}/catalog")
    rng = np.random.default_rng(3)
    state = {f"t{i}": rng.standard_normal((256, 256)).astype(np.float32) for i in range(24)}
    m = modelshard.push(state, "m", catalog=catalog, shard_size=1 << 20)
    assert len(m.shards) >= 6
    wait_replicated(fs, Catalog(catalog).version_dir("m", m.version))
    names = sorted(state)
    with daemon_stopped_later() as stop, modelshard.open("m", catalog=catalog) as h:
        first = h.load_state_dict(names[:12])
        stop("datanode2")  # every block has replicas on the other two
        rest = h.load_state_dict(names[12:])
    assert_same({**first, **rest}, state)
    modelshard.verify("m", catalog=catalog)


def test_predict_goes_on_when_a_datanode_stops(prediction_setup):
    fs, root, catalog, key, expected = prediction_setup
    job = start_predict(catalog, key, fs.uri(f"{root}/in"), fs.uri(f"{root}/out"))
    with daemon_stopped_later() as stop:
        job.wait_for_running_maps(1)
        stop("datanode1")
        r = job.join()
    assert r.records == len(expected) and r.bad_records == 0
    check_exactly_once(fs, f"{root}/out", expected)


def test_a_killed_map_attempt_is_run_again_and_writes_once(prediction_setup):
    fs, root, catalog, key, expected = prediction_setup
    job = start_predict(catalog, key, fs.uri(f"{root}/in"), fs.uri(f"{root}/out"))
    victim = job.wait_for_running_maps(1)[0]["id"]
    said = hadoop("job", "-kill-task", victim)
    assert "Killed task" in said, said
    r = job.join()
    attempts = job.attempts()
    assert any(a["id"] == victim and a["state"] == "KILLED" for a in attempts)
    task = victim.rsplit("_", 1)[0].replace("attempt_", "task_")
    assert any(a["id"].startswith(task.replace("task_", "attempt_")) and a["state"] == "SUCCEEDED"
               for a in attempts)
    assert r.records == len(expected)  # the killed attempt's counts are not added
    check_exactly_once(fs, f"{root}/out", expected)


def test_a_job_finishes_on_the_other_node_when_a_nodemanager_stops(prediction_setup):
    fs, root, catalog, key, expected = prediction_setup
    # Containers of 3 GB: a node holds the ApplicationMaster and one map, so two maps run on
    # two nodes.
    job = start_predict(catalog, key, fs.uri(f"{root}/in"), fs.uri(f"{root}/out"), map_memory_mb=3072)
    with daemon_stopped_later() as stop:
        running = job.wait_for_running_maps(2)
        nodes = {a["nodeHttpAddress"].split(":")[0] for a in running}
        assert len(nodes) == 2, running
        am = job.am_host()
        other = next(n for n in nodes if n != am)
        lost = next(a["id"] for a in running if a["nodeHttpAddress"].startswith(f"{other}:"))
        stop(f"nodemanager{int(other.rsplit('.', 1)[1]) - 1}")
        r = job.join()
    assert r.records == len(expected)
    check_exactly_once(fs, f"{root}/out", expected)
    attempts = {a["id"]: a for a in job.attempts()}
    assert attempts[lost]["state"] in ("KILLED", "FAILED")
    task = lost.rsplit("_", 1)[0]
    assert any(i.startswith(task) and a["state"] == "SUCCEEDED" and a["nodeHttpAddress"].startswith(f"{am}:")
               for i, a in attempts.items())  # its work was done again on the node that stayed
