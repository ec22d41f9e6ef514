"""Prediction that returns what users need: class, scores, top k, embeddings and tensors, from
feature vectors, token ids or text tokenized in the task by the version's own tokenizer;
records that do not fit are set aside with their reason, never crash a task."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from torch import nn

from modelshard import api
from modelshard.errors import ModelShardError, UsageError
from modelshard.jobs.models import SPEC_ATTR, ModelSpec
from modelshard.jobs.predict.driver import BAD_RECORDS, predict
from modelshard.jobs.predict.task import InputSpec, OutputSpec, Predictor
from tests.hf_data import SENTENCES, tiny_bert


def run(predictor, lines):
    pairs = [p for line in lines for p in predictor.add(line)] + predictor.flush()
    good = {k: v for k, v in pairs if k is not None}
    return good, [v for k, v in pairs if k is None]


def read_output(folder):
    out = {}
    for part in sorted(folder.glob("part-*")):
        for line in part.read_text().splitlines():
            k, v = line.split("\t")
            out[json.loads(k)] = json.loads(v)
    return out


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


@pytest.mark.parametrize("output", ["class", "scores", "topk:2", "embedding", "tensor"])
def test_every_output_of_a_feature_model(mlp, output):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 4)).astype(np.float32)
    lines = [json.dumps({"id": i, "x": x[i].tolist()}) for i in range(7)]
    got, bad = run(Predictor(mlp, fmt="jsonl", batch_size=3, output=OutputSpec.parse(output)), lines)
    assert bad == [] and sorted(got) == list(range(7))
    with torch.no_grad():
        logits = mlp(torch.from_numpy(x))
    top = logits.softmax(1).topk(2)
    want = {"class": logits.argmax(1).tolist(), "scores": logits.softmax(1).tolist(),
            "embedding": logits.tolist(), "tensor": logits.tolist(),
            "topk:2": [[[c, s] for c, s in zip(ci, si, strict=True)]
                       for ci, si in zip(top.indices.tolist(), top.values.tolist(), strict=True)]}[output]
    assert np.allclose([got[i] for i in range(7)], want, atol=1e-6)
    if output in ("class", "topk:2"):  # the classes themselves are exact
        assert np.array_equal(np.asarray([got[i] for i in range(7)])[..., 0] if output == "topk:2" else
                              [got[i] for i in range(7)], np.asarray(want)[..., 0] if output == "topk:2" else want)


class TokenBag(nn.Module):
    """Embedding -> Linear: token ids of any length; its first Linear takes 6 features, which
    is not the width of its input (the old predictor rejected every good record so)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.emb, self.out = nn.Embedding(10, 6), nn.Linear(6, 2)

    def forward(self, ids):
        return self.out(self.emb(ids).mean(dim=1))


def test_token_ids_of_different_lengths_and_misfits_are_set_aside():
    model = TokenBag().eval()
    records = {"a": [1, 2, 3], "b": [4, 5], "c": [9, 9, 9], "d": [1, 2], "e": [3]}
    lines = [json.dumps({"id": k, "ids": v}) for k, v in records.items()]
    lines += ['{"id": "oov", "ids": [1, 12]}', '{"id": "neg", "ids": [-1]}', '{"id": "none"}',
              '{"id": "str", "ids": "1 2"}', "not json"]
    got, bad = run(Predictor(model, fmt="jsonl", batch_size=100, inputs=InputSpec.parse("tokens:ids"),
                             output=OutputSpec("scores")), lines)
    assert sorted(got) == sorted(records)
    for k, ids in records.items():
        with torch.no_grad():
            want = model(torch.tensor([ids])).softmax(1)[0].tolist()
        assert np.allclose(got[k], want, atol=1e-6)
    assert [b["error"] for b in bad] == [  # set aside as read; then what the model rejected
        "token id -1 is negative", "no field 'ids'", "field 'ids' is not a non-empty list of token ids",
        "not JSON: invalid literal, expected 'null': line 1 column 1 (char 0)",
        "does not fit the model: IndexError: index out of range in self"]
    seq = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2))  # its vocabulary is known
    _, bad = run(Predictor(seq, fmt="jsonl", inputs=InputSpec("tokens", "ids")), ['{"id": 1, "ids": [3, 12]}'])
    assert bad[0]["error"] == "token id 12 is outside the vocabulary of 10 ids"


def test_a_record_the_model_rejects_is_set_aside_with_the_model_reason():
    class Wide(nn.Module):  # takes any width a multiple of 3
        def forward(self, x):
            return x.reshape(len(x), -1, 3).sum(1)

    lines = [json.dumps({"id": i, "x": [1.0] * n}) for i, n in enumerate([3, 6, 4, 3, 5])]
    got, bad = run(Predictor(Wide(), fmt="jsonl", batch_size=10, output=OutputSpec("tensor")), lines)
    assert sorted(got) == [0, 1, 3] and got[1] == [2.0, 2.0, 2.0]
    assert [json.loads(b["record"])["id"] for b in bad] == [2, 4]
    assert all(b["error"].startswith("does not fit the model: RuntimeError: shape") for b in bad)


@pytest.fixture
def bert(tmp_path):
    folder = tiny_bert(tmp_path / "bert")
    cat = str(tmp_path / "cat")
    api.push(folder, "bert", catalog=cat)
    records = tmp_path / "in.jsonl"
    records.write_text("".join(json.dumps({"id": i, "review": s}) + "\n" for i, s in enumerate(SENTENCES))
                       + '{"id": "empty", "review": ""}\n{"id": "nofield"}\n')
    return folder, cat, records


def reference(folder, head="sequence-classification"):
    cls = {"sequence-classification": transformers.AutoModelForSequenceClassification,
           "base": transformers.AutoModel}[head]
    model = cls.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    out = {}
    for i, s in enumerate(SENTENCES):  # one record at a time: no padding at all
        with torch.no_grad():
            out[i] = model(**tok(s, return_tensors="pt"), output_hidden_states=True)
    return out


@pytest.mark.parametrize("output", ["class", "scores", "topk:3", "embedding", "tensor"])
def test_text_is_tokenized_in_the_task_by_the_version_tokenizer(tmp_path, bert, output):
    folder, cat, records = bert
    r = predict("bert", str(records), str(tmp_path / "out"), catalog=cat, inputs="text:review",
                outputs=output, batch_size=4)
    assert (r.records, r.bad_records) == (len(SENTENCES) + 2, 2)
    bad = [json.loads(line) for line in (tmp_path / "out" / BAD_RECORDS).read_text().splitlines()]
    assert [b["error"] for b in bad] == ["field 'review' is not a non-empty string", "no field 'review'"]
    got = read_output(tmp_path / "out")
    ref = reference(folder)
    for i in range(len(SENTENCES)):
        logits, hidden = ref[i].logits[0], ref[i].hidden_states[-1][0]
        want = {"class": int(logits.argmax()), "scores": logits.softmax(-1).tolist(),
                "topk:3": [[int(c), float(v)] for c, v in zip(logits.softmax(-1).topk(3).indices.tolist(),
                                                             logits.softmax(-1).topk(3).values.tolist(),
                                                             strict=True)],
                "embedding": hidden.mean(0).tolist(), "tensor": logits.tolist()}[output]
        if output == "class":
            assert got[i] == want
        else:  # padded batches against unpadded single records: equal within float error
            assert np.abs(np.asarray(got[i], dtype=float) - np.asarray(want, dtype=float)).max() <= 1e-5


def test_token_level_outputs_are_per_token_without_padding(tmp_path):
    folder = tiny_bert(tmp_path / "tok", head="token-classification")
    cat = str(tmp_path / "cat")
    api.push(folder, "tok", catalog=cat)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    lines = [json.dumps({"id": i, "input_ids": tok(s)["input_ids"]}) for i, s in enumerate(SENTENCES)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    predict("tok", str(tmp_path / "in.jsonl"), str(tmp_path / "out"), catalog=cat, inputs="tokens",
            outputs="class")
    got = read_output(tmp_path / "out")
    model = transformers.AutoModelForTokenClassification.from_pretrained(folder).eval()
    for i, s in enumerate(SENTENCES):
        with torch.no_grad():
            want = model(**tok(s, return_tensors="pt")).logits[0].argmax(-1).tolist()
        assert got[i] == want and len(got[i]) == len(tok(s)["input_ids"])


def test_wrong_kinds_are_refused_before_or_by_the_job(tmp_path, bert):
    folder, cat, records = bert
    for bad_input, match in (("words", "--input 'words'"), ("text", "--input 'text'")):
        with pytest.raises(UsageError, match=match):
            predict("bert", str(records), str(tmp_path / "o1"), catalog=cat, inputs=bad_input)
    with pytest.raises(UsageError, match="--output 'topk:0'"):
        predict("bert", str(records), str(tmp_path / "o2"), catalog=cat, outputs="topk:0")
    with pytest.raises(UsageError, match="reads a field of JSON lines"):
        predict("bert", str(records), str(tmp_path / "o3"), catalog=cat, fmt="csv", inputs="tokens")
    api.push({"w": np.ones(3, np.float32)}, "plain", catalog=cat,
             attrs={SPEC_ATTR: ModelSpec("mlp", {"sizes": [3, 2]}).dumps()})
    with pytest.raises(UsageError, match="has no tokenizer files"):
        predict("plain", str(records), str(tmp_path / "o4"), catalog=cat, inputs="text:review")
    api.push(folder, "base", catalog=cat, attrs={SPEC_ATTR: ModelSpec("transformers", {"head": "base"}).dumps()})
    with pytest.raises(ModelShardError, match="returns no logits .* use --output embedding or tensor"):
        predict("base", str(records), str(tmp_path / "o5"), catalog=cat, inputs="text:review")
