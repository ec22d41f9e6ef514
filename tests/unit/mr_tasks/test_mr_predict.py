"""mr_predict through its driver: ids map to predictions, a malformed record goes to the
side output with its reason, the model and input are checked before any job runs."""

import json

import pytest

from modelshard.catalog.catalog import Catalog
from modelshard.errors import AlreadyExistsError, NotFoundError
from modelshard.jobs.modelio import load_model
from modelshard.jobs.predict.driver import BAD_RECORDS, predict
from modelshard.jobs.predict.task import Predictor
from modelshard.jobs.train.driver import init_model
from tests.unit.mr_tasks.conftest import SPEC


@pytest.fixture
def model(tmp_path):
    cat = Catalog(str(tmp_path / "cat"))
    return cat.uri, "digits@" + init_model(cat, "digits", SPEC)


def read_predictions(folder):
    out = {}
    for part in sorted(folder.glob("part-*")):
        for line in part.read_text().splitlines():
            k, v = line.split("\t")
            out[json.loads(k)] = json.loads(v)
    return out


@pytest.mark.parametrize("runner", ["inline", "local"])
def test_every_record_predicted_and_bad_records_kept(tmp_path, model, digit_rows, runner):
    cat, key = model
    x, _ = digit_rows
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"r{i}", "x": x[i].tolist()}) + "\n" for i in range(50))
                   + '{"id": "bad", "x": [1, 2]}\n')
    r = predict(key, str(src), str(tmp_path / "out"), catalog=cat, runner=runner, batch_size=16)
    assert (r.records, r.bad_records) == (51, 1) and r.batches >= 4
    got = read_predictions(tmp_path / "out")
    assert got.pop(None)["error"] == "2 features; the model takes 64"  # in the output, and in the side file
    assert sorted(got) == sorted(f"r{i}" for i in range(50)) and all(0 <= c < 10 for c in got.values())
    bad = [json.loads(line) for line in (tmp_path / "out" / BAD_RECORDS).read_text().splitlines()]
    assert bad == [{"error": "2 features; the model takes 64", "record": '{"id": "bad", "x": [1, 2]}'}]


def test_predictions_equal_a_direct_batched_run(tmp_path, model, digit_rows):
    cat, key = model
    x, _ = digit_rows
    lines = [json.dumps({"id": i, "x": x[i].tolist()}) for i in range(40)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    predict(key, str(tmp_path / "in.jsonl"), str(tmp_path / "out"), catalog=cat)
    direct = Predictor(load_model(cat, key), fmt="jsonl", batch_size=1000)
    pairs = [p for line in lines for p in direct.add(line)] + direct.flush()
    assert read_predictions(tmp_path / "out") == dict(pairs)
    assert not (tmp_path / "out" / BAD_RECORDS).exists()


def test_refused_before_any_job(tmp_path, model):
    cat, key = model
    (tmp_path / "in.jsonl").write_text('{"id": 1, "x": [0]}\n')
    with pytest.raises(NotFoundError, match="nosuch"):
        predict("nosuch", str(tmp_path / "in.jsonl"), str(tmp_path / "out"), catalog=cat)
    with pytest.raises(NotFoundError, match="missing.jsonl does not exist"):
        predict(key, str(tmp_path / "missing.jsonl"), str(tmp_path / "out"), catalog=cat)
    (tmp_path / "out").mkdir()
    with pytest.raises(AlreadyExistsError, match="already exists"):
        predict(key, str(tmp_path / "in.jsonl"), str(tmp_path / "out"), catalog=cat)


def test_tasks_load_through_the_preload_cache_under_a_budget(tmp_path, model, digit_rows):
    cat, key = model
    x, _ = digit_rows
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": i, "x": x[i].tolist()}) + "\n" for i in range(20)))
    r = predict(key, str(tmp_path / "in.jsonl"), str(tmp_path / "out"), catalog=cat, runner="local",
                cache_dir=str(tmp_path / "cache"), budget_bytes=1 << 20)
    counters = r.counters["modelshard"]
    assert counters["model shards via scheduler"] >= 1 and counters["records"] == 20
    assert counters["preload cache hits"] + counters["preload cache misses"] >= 1
    assert list((tmp_path / "cache").rglob("*")), "the shards were preloaded into the cache"


def test_the_site_mrjob_conf_is_honoured_unless_declined(tmp_path, model, monkeypatch):
    cat, key = model
    (tmp_path / "in.jsonl").write_text('{"id": 1, "x": [0]}\n')
    conf = tmp_path / "mrjob.conf"
    conf.write_text(f"runners:\n  inline:\n    local_tmp_dir: {tmp_path / 'site-tmp'}\n")
    monkeypatch.setenv("MRJOB_CONF", str(conf))
    predict(key, str(tmp_path / "in.jsonl"), str(tmp_path / "declined"), catalog=cat, mrjob_conf=False)
    assert not (tmp_path / "site-tmp").exists()
    predict(key, str(tmp_path / "in.jsonl"), str(tmp_path / "out"), catalog=cat)
    assert (tmp_path / "site-tmp").is_dir()  # mrjob put its working folder where the site said
