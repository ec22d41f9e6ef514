"""mr_train through its driver on the inline runner (and the local runner once): each
epoch commits a version, reruns resume, bad records are set aside, bad input is refused
before any job runs."""

import json

import pytest

from modelshard import api
from modelshard.catalog.catalog import Catalog
from modelshard.errors import JobError, NotFoundError, UsageError
from modelshard.jobs.training import EPOCH_ATTR, train
from tests.unit.mr_tasks.conftest import SPEC


def test_each_epoch_commits_a_version_and_a_rerun_resumes(tmp_path, train_dir, test_rows):
    cat = str(tmp_path / "cat")
    r = train("digits", str(train_dir), epochs=2, lr=0.1, catalog=cat, init=SPEC, test_data=test_rows,
              out_dir=tmp_path / "out")
    assert [e.version for e in r.epochs] == ["2", "3"]  # version 1 holds the initial weights
    assert r.epochs[-1].records == 300 and 0 <= r.epochs[-1].test_accuracy <= 1
    assert r.epochs[1].loss < r.epochs[0].loss
    manifest = Catalog(cat).manifest("digits", "3")
    assert manifest.attrs[EPOCH_ATTR] == "2" and manifest.attrs["train.parent"] == "2"
    assert len(manifest.shards) == 2  # one shard per reducer
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == 2

    again = train("digits", str(train_dir), epochs=3, lr=0.1, catalog=cat)
    assert [e.epoch for e in again.epochs] == [3]
    assert list(api.ls("digits", catalog=cat)[-1].aliases) == ["latest"]


def test_local_runner_gives_the_same_weights_as_inline(tmp_path, train_dir):
    weights = []
    for runner in ("inline", "local"):
        cat = str(tmp_path / runner)
        train("digits", str(train_dir), epochs=1, catalog=cat, init=SPEC, runner=runner)
        weights.append(api.pull("digits", catalog=cat))
    assert all(weights[0][k].tobytes() == weights[1][k].tobytes() for k in weights[0])


def test_bad_records_are_set_aside_not_dropped(tmp_path, train_dir):
    with open(train_dir / "part-0.jsonl", "a") as f:
        f.write("not json\n" + json.dumps({"id": 9, "x": [1.0]}) + "\n")
    r = train("digits", str(train_dir), epochs=1, catalog=str(tmp_path / "cat"), init=SPEC)
    assert sorted(b["record"] for b in r.bad_records) == ["not json", '{"id": 9, "x": [1.0]}']
    assert r.epochs[0].bad_records == 2


def test_refused_before_any_job(tmp_path, train_dir):
    cat = str(tmp_path / "cat")
    with pytest.raises(NotFoundError, match="input .*nowhere does not exist"):
        train("digits", str(tmp_path / "nowhere"), epochs=1, catalog=cat, init=SPEC)
    with pytest.raises(NotFoundError, match="does not exist"):
        train("digits", str(train_dir), epochs=1, catalog=cat)  # no such model and no --init
    (train_dir / "part-9.jsonl").write_text("")
    with pytest.raises(UsageError, match="part-9.jsonl is empty"):
        train("digits", str(train_dir), epochs=1, catalog=cat, init=SPEC)
    with pytest.raises(UsageError, match="unknown runner 'yarn'"):
        train("digits", str(train_dir / "part-0.jsonl"), epochs=1, catalog=cat, init=SPEC, runner="yarn")


def test_a_split_without_valid_records_fails_the_job_with_the_tasks_error(tmp_path, train_dir):
    (train_dir / "part-1.jsonl").write_text("garbage\n")
    with pytest.raises((UsageError, JobError), match="training split is empty"):
        train("digits", str(train_dir), epochs=1, catalog=str(tmp_path / "cat"), init=SPEC)
    assert api.ls("digits", catalog=str(tmp_path / "cat"))[-1].version == "1"  # nothing half-committed
