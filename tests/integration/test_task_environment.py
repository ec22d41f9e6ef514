"""Tasks on YARN run with what the job ships (the packed interpreter and packages, the code
archive), the node's own Hadoop and HDFS, and nothing of the submitter's: its checkout, its
virtualenv, its interpreter and ~/.modelshard do not exist where the tasks run."""

import json
import os
import sys
from pathlib import Path

import numpy
import torch

import modelshard
from modelshard.jobs.environment import collect_environment
from modelshard.jobs.hadoop import runner_args
from tests.jobs.mr_env_probe import MREnvProbe

ROOT = Path(__file__).resolve().parents[2]
NODES = ROOT / ".run" / "nodes"


def _probe(fs, root):
    """What the probe task saw, and what the submitter said it shipped."""
    fs.write_bytes(f"{root}/data.bin", b"x" * 1234)
    home_store = Path.home() / ".modelshard"
    home_store.mkdir(exist_ok=True)
    (home_store / "probe").touch()
    paths = [str(ROOT / "setup.cfg"), str(Path(sys.prefix) / "pyvenv.cfg"),
             str(Path(sys._base_executable).resolve()), str(home_store / "probe")]
    assert all(os.path.exists(p) for p in paths)  # the checkout, venv, interpreter, store
    fs.write_bytes(f"{root}/input.txt", json.dumps({"hdfs_file": f"{root}/data.bin", "submitter_paths": paths})
                   .encode() + b"\n")
    out = f"{root}/out-{len(fs.ls(root))}"
    said = []
    job = MREnvProbe([*runner_args("hadoop", catalog=fs.uri(root), echo=said.append), fs.uri(f"{root}/input.txt"),
                      "--output-dir", fs.uri(out)])
    with job.make_runner() as r:
        r.run()
        return dict(job.parse_output(r.cat_output()))["probe"], said


def test_tasks_run_only_with_what_the_job_ships(hdfs_root):
    fs, root = hdfs_root
    p, said = _probe(fs, root)
    assert p["versions"] == {"numpy": numpy.__version__, "torch": torch.__version__.split("+")[0],
                             "modelshard": modelshard.__version__}
    assert p["stat_size"] == 1234  # pydoop in the task reached HDFS
    assert p["visible"] == dict.fromkeys(p["visible"], False), p["visible"]
    env, code = (line.split()[2].rsplit("/", 1)[1].rstrip(":") for line in said)
    assert env.startswith("env-full-") and code.startswith("code-")
    assert "/filecache/" in p["executable"] and f"/{env}/bin/" in p["executable"], p["executable"]
    assert f"/{code}/modelshard/" in p["modelshard"], p["modelshard"]
    node = {"127.0.0.2": "node1", "127.0.0.3": "node2"}[p["host"]]
    assert p["hadoop_home"] == str(NODES.resolve() / node / "hadoop")


def test_a_second_job_ships_nothing_and_nodes_reuse_their_copy(hdfs_root):
    fs, root = hdfs_root
    _probe(fs, root)
    _, said = _probe(fs, root)
    assert len(said) == 2 and all(line.endswith("already on HDFS") for line in said), said
    # Each NodeManager localized the environment at most once, however many jobs used it.
    name = collect_environment("full").name
    for node in sorted(NODES.glob("node*")):
        copies = list(node.glob(f"var/nm-local/**/filecache/*/{name}")) + \
            list(node.glob(f"var/nm-local/filecache/*/{name}"))
        assert len(set(copies)) <= 1, copies


def test_envs_lists_what_jobs_shipped_and_prune_spares_this_pythons(hdfs_root, capsys):
    from modelshard.cli import main

    fs, root = hdfs_root
    _, said = _probe(fs, root)
    shipped = {line.split()[2].rsplit("/", 1)[1].rstrip(":") for line in said}
    capsys.readouterr()
    assert main(["envs", "--catalog", fs.uri(root), "--json"]) == 0
    listed = {a["path"].rsplit("/", 1)[1]: a for a in json.loads(capsys.readouterr().out)}
    assert shipped <= set(listed) and all(listed[n]["current"] and listed[n]["size"] > 0 for n in shipped)
    assert main(["envs", "prune", "--older-than", "0", "--dry-run", "--catalog", fs.uri(root), "--json"]) == 0
    would = {a["path"].rsplit("/", 1)[1] for a in json.loads(capsys.readouterr().out)}
    assert not would & shipped and would == {n for n, a in listed.items() if not a["current"]}
