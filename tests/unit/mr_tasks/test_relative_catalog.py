"""A relative --catalog (and --cache-dir) means the folder relative to where the command was
given, for the driver and for every task: tasks run in mrjob's working folders, so the
drivers hand them absolute paths."""

import json

from modelshard import api
from modelshard.cli import main
from modelshard.jobs.predict.driver import predict
from modelshard.jobs.reshard.driver import reshard
from modelshard.jobs.train.driver import train
from tests.unit.mr_tasks.conftest import SPEC


def test_every_job_runs_with_a_relative_catalog(tmp_path, monkeypatch, train_dir, digit_rows):
    monkeypatch.chdir(tmp_path)
    x, _ = digit_rows
    r = train("digits", str(train_dir), epochs=1, init=SPEC, catalog="cat", runner="inline")
    assert [e.epoch for e in r.epochs] == [1]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": i, "x": x[i].tolist()}) + "\n"
                                               for i in range(10)))
    p = predict("digits", "in.jsonl", "out", catalog="cat", runner="inline", cache_dir="cache")
    assert (p.records, p.bad_records) == (10, 0)
    assert list((tmp_path / "cache").rglob("*.lock")) or list((tmp_path / "cache").iterdir())
    m = reshard("digits", shard_count=2, catalog="cat", runner="inline")
    assert len(m.shards) == 2
    assert main(["ls", "digits", "--catalog", "cat"]) == 0
    assert [v.version for v in api.ls("digits", catalog=str(tmp_path / "cat"))] == ["1", "2", "3"]
