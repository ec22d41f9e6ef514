"""Predictions as Parquet: the same values as JSON lines, typed columns for Hive and Spark
readers, one file per committed task, ``_SUCCESS`` last, nothing left behind by a failed job."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelshard import api
from modelshard.errors import ModelShardError, UsageError
from modelshard.jobs.models import SPEC_ATTR, ModelSpec
from modelshard.jobs.predict.driver import BAD_RECORDS, predict
from tests.hf_data import SENTENCES, tiny_bert
from tests.unit.jobs.test_predict_outputs import bert, read_output  # noqa: F401 - a fixture

PAIR = pa.struct([("class", pa.int64()), ("score", pa.float32())])


def list_of(t, n=-1):
    return pa.list_(pa.field("element", t), n)  # Parquet's name for a list's items


def read_parquet(folder):
    files = sorted(folder.glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return table, dict(zip(table["id"].to_pylist(), table.column(1).to_pylist(), strict=True)), files


def plain(v):
    """A Parquet value as the JSON-lines one: top-k structs back to [class, score] pairs."""
    if isinstance(v, dict):
        return [v["class"], v["score"]]
    return [plain(x) for x in v] if isinstance(v, list) else v


@pytest.mark.parametrize(("output", "arrow"), [
    ("class", pa.int64()), ("scores", list_of(pa.float32(), 3)), ("topk:2", list_of(PAIR, 2)),
    ("embedding", list_of(pa.float32(), 16)), ("tensor", list_of(pa.float32()))])
def test_parquet_holds_what_json_lines_hold_in_typed_columns(tmp_path, bert, output, arrow):  # noqa: F811
    _, cat, records = bert
    common = dict(catalog=cat, inputs="text:review", outputs=output, batch_size=4)
    predict("bert", str(records), str(tmp_path / "json"), **common)
    r = predict("bert", str(records), str(tmp_path / "pq"), output_format="parquet", **common)
    assert (r.records, r.bad_records) == (len(SENTENCES) + 2, 2)
    table, got, files = read_parquet(tmp_path / "pq")
    assert table.schema.names == ["id", output.partition(":")[0]]
    assert table.schema.field(1).type == arrow and table.schema.field(0).type == pa.string()
    want = {k: v for k, v in read_output(tmp_path / "json").items() if k is not None}  # not bad records
    assert set(got) == {str(i) for i in want}  # numeric ids as their JSON text
    for i, v in want.items():
        assert np.allclose(np.asarray(plain(got[str(i)]), dtype=float), np.asarray(v, dtype=float), atol=1e-6)
    names = {p.name for p in (tmp_path / "pq").iterdir()}
    assert names == {BAD_RECORDS, "_SUCCESS", *[f.name for f in files]}  # no task or job folders left
    assert len((tmp_path / "pq" / BAD_RECORDS).read_text().splitlines()) == 2


def test_token_level_outputs_are_lists_per_record(tmp_path):
    folder = tiny_bert(tmp_path / "tok", head="token-classification")
    cat = str(tmp_path / "cat")
    api.push(folder, "tok", catalog=cat)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "input_ids": list(range(1, 3 + i))}) + "\n"
                                               for i in range(5)))
    for fmt in ("jsonl", "parquet"):
        predict("tok", str(tmp_path / "in.jsonl"), str(tmp_path / fmt), catalog=cat, inputs="tokens",
                outputs="topk:2", output_format=fmt)
    table, got, _ = read_parquet(tmp_path / "parquet")
    assert table.schema.field(1).type == list_of(list_of(PAIR, 2))
    want = {k: v for k, v in read_output(tmp_path / "jsonl").items() if k is not None}
    assert [len(got[f"r{i}"]) for i in range(5)] == [2, 3, 4, 5, 6]
    for rid, v in want.items():
        assert np.allclose(np.asarray(plain(got[rid]), dtype=float), np.asarray(v, dtype=float), atol=1e-6)


def test_one_file_per_task_on_the_local_runner(tmp_path):
    cat = str(tmp_path / "cat")
    rng = np.random.default_rng(0)
    api.push({"0.weight": rng.normal(size=(3, 4)).astype(np.float32), "0.bias": np.zeros(3, np.float32)},
             "mlp", catalog=cat, attrs={SPEC_ATTR: ModelSpec("mlp", {"sizes": [4, 3]}).dumps()})
    data = tmp_path / "data"
    data.mkdir()
    for part in range(2):
        (data / f"part-{part}.jsonl").write_text("".join(
            json.dumps({"id": f"{part}-{i}", "x": rng.normal(size=4).tolist()}) + "\n" for i in range(50)))
    r = predict("mlp", str(data), str(tmp_path / "out"), catalog=cat, runner="local", output_format="parquet")
    table, got, files = read_parquet(tmp_path / "out")
    # mrjob's local runner splits the 2 files into 2 or more tasks: one file per task, none empty
    assert r.records == 100 and len(got) == 100 and table.num_rows == 100
    assert len(files) >= 2 and all(pq.read_metadata(f).num_rows > 0 for f in files)
    assert set(table["class"].to_pylist()) <= {0, 1, 2}


def test_a_failed_job_leaves_no_output_folder(tmp_path, bert):  # noqa: F811
    folder, cat, records = bert
    api.push(folder, "base", catalog=cat, attrs={SPEC_ATTR: ModelSpec("transformers", {"head": "base"}).dumps()})
    with pytest.raises(ModelShardError, match="returns no logits"):
        predict("base", str(records), str(tmp_path / "out"), catalog=cat, inputs="text:review",
                output_format="parquet")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match="--output-format 'csv'"):
        predict("base", str(records), str(tmp_path / "out"), catalog=cat, output_format="csv")
