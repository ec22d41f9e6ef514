"""mr_train through its driver on the inline runner (and the local runner once): each
epoch commits a version with the optimizers' state (the splits' averaged SGD momentum, and
the outer momentum where the outer step has one), reruns resume exactly (after a failed
epoch too), bad records are set aside, bad input is refused before any job runs."""

import json
import os

import pytest

from modelshard import api
from modelshard.catalog.catalog import Catalog
from modelshard.errors import JobError, NotFoundError, UsageError
from modelshard.jobs.train import reduce_task as averaging
from modelshard.jobs.train.driver import EPOCH_ATTR, train
from modelshard.jobs.train.reduce_task import INNER, MOMENTUM
from tests.unit.mr_tasks.conftest import SPEC

SPEC_NAMES = ["0.weight", "0.bias", "2.weight", "2.bias"]
NESTEROV = averaging.Outer(lr=0.7, momentum=0.9)  # an outer step with state of its own


def leftovers(cat: str) -> list[str]:
    """Files under the model's staging and claims: a finished or failed epoch leaves none."""
    model = os.path.join(cat, "models", "digits")
    return [os.path.join(d, f) for sub in (".staging", ".claims")
            for d, _, files in os.walk(os.path.join(model, sub)) for f in files]


def test_each_epoch_commits_a_version_and_a_rerun_resumes(tmp_path, train_dir, test_rows):
    cat = str(tmp_path / "cat")
    r = train("digits", str(train_dir), epochs=2, lr=0.1, catalog=cat, init=SPEC, test_data=test_rows,
              out_dir=tmp_path / "out")
    assert [e.version for e in r.epochs] == ["2", "3"]  # version 1 holds the initial weights
    assert r.epochs[-1].records == 300 and 0 <= r.epochs[-1].test_accuracy <= 1
    assert r.epochs[1].loss < r.epochs[0].loss
    manifest = Catalog(cat).manifest("digits", "3")
    assert manifest.attrs[EPOCH_ATTR] == "2" and manifest.attrs["train.parent"] == "2"
    # The planned shards under their planned names, each parameter's inner momentum beside
    # it; plain averaging (the default outer step) keeps no outer momentum.
    assert [r.path for r in manifest.shards] == ["shards/model-00001-of-00001.safetensors"]
    assert set(manifest.tensors) == {*SPEC_NAMES, *(INNER + n for n in SPEC_NAMES)}
    assert sorted(os.listdir(Catalog(cat).version_dir("digits", "3"))) == ["manifest.json", "shards"]
    assert leftovers(cat) == []
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == 2

    again = train("digits", str(train_dir), epochs=3, lr=0.1, catalog=cat)
    assert [e.epoch for e in again.epochs] == [3]
    assert list(api.ls("digits", catalog=cat)[-1].aliases) == ["latest"]


def test_local_runner_gives_the_same_weights_as_inline(tmp_path, train_dir):
    weights = []
    for runner in ("inline", "local"):
        cat = str(tmp_path / runner)
        train("digits", str(train_dir), epochs=2, catalog=cat, init=SPEC, runner=runner, seed=3, outer=NESTEROV)
        weights.append(api.pull("digits", catalog=cat, with_optimizer_state=True))
    assert weights[0].keys() == weights[1].keys() and len(weights[0]) == 3 * len(SPEC_NAMES)
    assert all(weights[0][k].tobytes() == weights[1][k].tobytes() for k in weights[0])


def test_a_failed_epoch_leaves_nothing_and_the_rerun_continues_exactly(tmp_path, train_dir, monkeypatch):
    straight = str(tmp_path / "straight")
    train("digits", str(train_dir), epochs=3, catalog=straight, init=SPEC, seed=5, outer=NESTEROV)

    cat = str(tmp_path / "cat")
    train("digits", str(train_dir), epochs=1, catalog=cat, init=SPEC, seed=5, outer=NESTEROV)
    reduce_shard = averaging.reduce_shard

    def fail_after_writing(*args, **kwargs):
        reduce_shard(*args, **kwargs)  # the shard is written, then the reducer dies
        raise RuntimeError("reducer killed")

    monkeypatch.setattr("mr_tasks.mr_train.reduce_shard", fail_after_writing)
    with pytest.raises(JobError, match="reducer killed"):
        train("digits", str(train_dir), epochs=3, catalog=cat, seed=5, outer=NESTEROV)
    assert [v.version for v in api.ls("digits", catalog=cat)] == ["1", "2"] and leftovers(cat) == []

    monkeypatch.undo()
    r = train("digits", str(train_dir), epochs=3, catalog=cat, seed=5, outer=NESTEROV)
    assert [e.epoch for e in r.epochs] == [2, 3]
    a, b = (api.pull("digits", catalog=c, with_optimizer_state=True) for c in (straight, cat))
    assert len(a) == 3 * len(SPEC_NAMES)  # both momenta included
    assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_without_outer_momentum_no_optimizer_state_is_kept(tmp_path, train_dir):
    plain = str(tmp_path / "plain")
    train("digits", str(train_dir), epochs=1, catalog=plain, init=SPEC, outer=averaging.Outer(lr=1, momentum=0))
    assert not any(n.startswith(MOMENTUM) for n in Catalog(plain).manifest("digits", "2").tensors)


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


def test_the_command_takes_the_outer_optimizer_and_the_seed(tmp_path, train_dir, capsys):
    from modelshard.cli import main

    cat = str(tmp_path / "cat")
    args = ["train", "digits", str(train_dir), "--epochs", "1", "--init", "mlp:64,16,10", "--catalog", cat,
            "--runner", "inline", "--seed", "4", "--json"]
    assert main([*args, "--outer-lr", "0.7", "--outer-momentum", "0.9"]) == 0
    manifest = Catalog(cat).manifest("digits", "2")
    assert (manifest.attrs["train.outer_lr"], manifest.attrs["train.outer_momentum"]) == ("0.7", "0.9")
    assert any(n.startswith(MOMENTUM) for n in manifest.tensors)
    capsys.readouterr()
    assert main([*args[:4], "2", *args[5:], "--outer-momentum", "1.5"]) != 0
    assert "outer momentum" in capsys.readouterr().err
