"""Batch prediction, the logic of ``mr_tasks/mr_predict.py``: records are parsed one by one
and predicted in batches (never one at a time); a record that does not fit the model becomes
a side-output line with its reason, and never stops the task.

Inputs (:class:`InputSpec`, ``--input``): ``features`` (a flat list of numbers, the ``x``
field of JSON lines or the CSV columns after id and label), ``tokens[:FIELD]`` (token ids,
default field ``input_ids``) or ``text:FIELD`` (tokenized in the task by the version's own
tokenizer, truncated to the model's length). Outputs (:class:`OutputSpec`, ``--output``):
``class`` (the argmax of the logits), ``scores`` (their softmax), ``topk:K`` (``[[class,
score], ...]``, best first), ``embedding`` (a Hugging Face model's last hidden state averaged
over the record's tokens, or a plain module's output vector) or ``tensor`` (the model's raw
output for the record: logits or hidden states, without padding positions). Sequence outputs
of token-level heads give one value per token.

Records of different lengths are padded with an attention mask for a Hugging Face model and
grouped by length for any other module; a group the model rejects is retried record by record,
so only the records that do not fit are set aside, each with the model's own reason. Only
when a task's first batch (of two records or more) fails in the model on every record with
one and the same error is the model, not the data, at fault: then that error stops the task.

>>> import torch
>>> p = Predictor(torch.nn.Linear(2, 3), fmt="csv", batch_size=2)
>>> p.add("a,,1,2") + p.add("b,,oops,2") + p.flush()  # doctest: +ELLIPSIS
[(None, {'error': 'features are not all numbers', 'record': 'b,,oops,2'}), ('a', ...)]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from modelshard.errors import UsageError
from modelshard.jobs.records import BadRecord, check_format, json_object, parse_record

# What a bad record's side-output line keeps of it, so one huge line cannot flood the output.
MAX_BAD_RECORD_CHARS = 1000
# What the model raises for an input it cannot take (a shape, an index, a dtype): the record's
# fault, set aside with the reason; anything else is the job's and fails it.
_MISFIT = (RuntimeError, IndexError, ValueError, TypeError)


@dataclass(frozen=True)
class InputSpec:
    """What a record holds for the model: ``features``, ``tokens`` or ``text``, and its field."""

    kind: str = "features"
    field: str = "x"

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        """``features``, ``tokens``, ``tokens:FIELD`` or ``text:FIELD``."""
        kind, _, field = text.partition(":")
        if kind == "features" and not field:
            return cls()
        if kind == "tokens":
            return cls("tokens", field or "input_ids")
        if kind == "text" and field:
            return cls("text", field)
        raise UsageError(f"--input {text!r}: give features, tokens[:FIELD] (token ids, default "
                         "field input_ids) or text:FIELD (a JSON field tokenized by the model's "
                         "own tokenizer)")


@dataclass(frozen=True)
class OutputSpec:
    """What is emitted per record: ``class``, ``scores``, ``topk`` (with ``k``), ``embedding``
    or ``tensor``."""

    kind: str = "class"
    k: int = 0

    @classmethod
    def parse(cls, text: str) -> OutputSpec:
        """``class``, ``scores``, ``topk:K``, ``embedding`` or ``tensor``."""
        if text in ("class", "scores", "embedding", "tensor"):
            return cls(text)
        m = re.fullmatch(r"topk:([1-9]\d{0,5})", text)
        if m:
            return cls("topk", int(m[1]))
        raise UsageError(f"--output {text!r}: give class, scores, topk:K (K >= 1), embedding or "
                         "tensor")

    def __str__(self) -> str:
        return f"topk:{self.k}" if self.kind == "topk" else self.kind


def declared_width(model: nn.Module) -> int | None:
    """The number of input features of a model whose first layer, on its forward path, is
    Linear (an ``nn.Sequential`` starting with one); None otherwise: the model itself then
    says, per record, what it cannot take."""
    first = next(iter(model.children()), None) if isinstance(model, nn.Sequential) else None
    return first.in_features if isinstance(first, nn.Linear) else None


def _is_hf(model: nn.Module) -> bool:
    """A Hugging Face transformers model: called with keyword inputs and an attention mask."""
    return hasattr(model, "config") and getattr(model, "main_input_name", None) == "input_ids"


def _vocab_size(model: nn.Module) -> int | None:
    if _is_hf(model):
        return getattr(model.config, "vocab_size", None)
    first = next(iter(model.children()), None) if isinstance(model, nn.Sequential) else None
    return first.num_embeddings if isinstance(first, nn.Embedding) else None


def _max_tokens(model: nn.Module, tokenizer: Any) -> int | None:
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 10**6:  # tokenizers without one say 1e30
        n = min(n, limit) if n else limit
    return n


class Predictor:
    """Buffers parsed records and predicts a batch at a time.

    Output pairs: ``(id, value)`` for a good record (see the module's docstring for the value
    of each output), ``(None, {"error", "record"})`` for one set aside (ids are never None, so
    the two cannot be confused). ``tokenizer``: the version's, for text inputs; ``forward``:
    what runs a batch (default: ``model`` itself).
    """

    def __init__(self, model: nn.Module, *, fmt: str, batch_size: int = 1024,
                 inputs: InputSpec = InputSpec(), output: OutputSpec = OutputSpec(),
                 tokenizer: Any = None, forward: Callable[..., Any] | None = None) -> None:
        self.model = model.eval()
        # How a batch runs the model: the server binds the weights it holds for the batch.
        self.forward = forward or self.model
        self.fmt = check_format(fmt)
        if inputs.kind != "features" and fmt != "jsonl":
            raise UsageError(f"--input {inputs.kind}:{inputs.field} reads a field of JSON lines; "
                             "use --format jsonl")
        if inputs.kind == "text" and tokenizer is None:
            raise UsageError("--input text needs the model's tokenizer")
        self.batch_size = batch_size
        self.inputs, self.output, self.tokenizer = inputs, output, tokenizer
        self.hf = _is_hf(model)
        self.n_features = declared_width(model)
        self.vocab = _vocab_size(model)
        self.max_tokens = _max_tokens(model, tokenizer)
        self.pad_id = int(getattr(getattr(model, "config", None), "pad_token_id", None) or 0)
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.ids: list[object] = []
        self.rows: list[Any] = []  # arrays; texts until their batch is tokenized
        self.lines: list[str] = []
        self.records = self.bad = self.batches = self.predicted = 0

    # -- records ---------------------------------------------------------------------------
    def add(self, line: str) -> list[tuple[object, object]]:
        self.records += 1
        try:
            rid, x = self._parse(line)
        except BadRecord as e:
            return [self._bad(line, str(e))]
        self.ids.append(rid)
        self.rows.append(x)
        self.lines.append(line)
        return list(self._predict()) if len(self.ids) >= self.batch_size else []

    def flush(self) -> list[tuple[object, object]]:
        return list(self._predict()) if self.ids else []

    def _bad(self, line: str, reason: str) -> tuple[None, dict]:
        self.bad += 1
        return None, {"error": reason, "record": line.rstrip("\r\n")[:MAX_BAD_RECORD_CHARS]}

    def _parse(self, line: str) -> tuple[object, np.ndarray | str]:
        if self.inputs.kind == "features":
            rid, x, _ = parse_record(line, self.fmt, n_features=self.n_features, field=self.inputs.field)
            return rid, x
        rec = json_object(line)
        rid, value = rec.get("id"), rec.get(self.inputs.field)
        if rid is None or rid == "":
            raise BadRecord("no id")
        if value is None:
            raise BadRecord(f"no field {self.inputs.field!r}")
        if self.inputs.kind == "text":
            if not isinstance(value, str) or not value:
                raise BadRecord(f"field {self.inputs.field!r} is not a non-empty string")
            return rid, value  # tokenized with its batch (_tokenize): one call for all
        if not isinstance(value, list) or not value or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in value):
            raise BadRecord(f"field {self.inputs.field!r} is not a non-empty list of token ids")
        if min(value) < 0:
            raise BadRecord(f"token id {min(value)} is negative")
        if self.vocab is not None and max(value) >= self.vocab:
            raise BadRecord(f"token id {max(value)} is outside the vocabulary of {self.vocab} ids")
        if max(value) >= 2**63:
            raise BadRecord(f"token id {max(value)} is too large")
        ids = np.asarray(value, dtype=np.int64)
        if self.max_tokens is not None and len(ids) > self.max_tokens:
            raise BadRecord(f"{len(ids)} tokens; the model takes at most {self.max_tokens}")
        return rid, ids

    # -- batches ---------------------------------------------------------------------------
    def _tokenize(self) -> None:
        """The batch's texts as token ids, in one call of the (fast, Rust) tokenizer."""
        if self.inputs.kind == "text":
            ids = self.tokenizer(self.rows, truncation=self.max_tokens is not None,
                                 max_length=self.max_tokens)["input_ids"]
            self.rows = [np.asarray(r, dtype=np.int64) for r in ids]

    def _predict(self) -> Iterator[tuple[object, object]]:
        self.batches += 1
        self._tokenize()
        items = list(range(len(self.ids)))
        values: dict[int, object] = {}
        groups = [items] if self.hf and self.inputs.kind != "features" else _by_shape(self.rows)
        errors: dict[int, Exception] = {}
        for group in groups:
            self._run(group, values, errors)
        if not self.predicted and not values and len(items) > 1 and len({str(e) for e in errors.values()}) == 1:
            raise next(iter(errors.values()))  # a broken model: no record fits it the same way
        self.predicted += len(values)
        reasons = {i: f"does not fit the model: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
                   for i, e in errors.items()}
        for i in items:
            yield (self.ids[i], values[i]) if i in values else self._bad(self.lines[i], reasons[i])
        self.ids, self.rows, self.lines = [], [], []

    def _run(self, group: list[int], values: dict[int, object], errors: dict[int, Exception]) -> None:
        """Predict ``group``; if the model rejects it, each record alone, so that only the
        records that do not fit are set aside, with the model's error."""
        try:
            out = self._forward([self.rows[i] for i in group])
        except _MISFIT as e:
            if len(group) > 1:
                for i in group:
                    self._run([i], values, errors)
                return
            errors[group[0]] = e
            return
        values.update(zip(group, out, strict=True))

    @torch.no_grad()
    def _forward(self, rows: Sequence[np.ndarray]) -> list[object]:
        lengths = [len(r) for r in rows]
        if self.hf and self.inputs.kind != "features":
            ids = torch.full((len(rows), max(lengths)), self.pad_id, dtype=torch.int64)
            mask = torch.zeros_like(ids)
            for j, r in enumerate(rows):
                ids[j, :len(r)] = torch.from_numpy(r)
                mask[j, :len(r)] = 1
            out = self.forward(input_ids=ids, attention_mask=mask,
                             output_hidden_states=self.output.kind == "embedding")
            return self._values(out, mask, lengths)
        x = torch.from_numpy(np.stack(rows))
        out = self.forward(x.to(self.dtype) if x.is_floating_point() else x)
        return self._values(out, None, lengths)

    def _values(self, out: Any, mask: torch.Tensor | None, lengths: list[int]) -> list[object]:
        kind = self.output.kind
        if kind == "embedding":
            if isinstance(out, torch.Tensor):
                emb = out if out.dim() == 2 else out.float().mean(dim=1)
            else:
                hidden = getattr(out, "last_hidden_state", None)
                if hidden is None and getattr(out, "hidden_states", None):
                    hidden = out.hidden_states[-1]
                if hidden is None:
                    raise UsageError("--output embedding: the model returns no hidden states; use "
                                     "--output tensor")
                m = mask.unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
            return emb.float().tolist()
        logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
        if logits is None and kind == "tensor":
            logits = getattr(out, "last_hidden_state", None)
        if logits is None:
            raise UsageError(f"--output {self.output}: the model returns no logits (a base model "
                             "without a head); use --output embedding or tensor, or push it with "
                             "--model 'transformers:head=sequence-classification'")
        logits = logits.float()
        per_token = mask is not None and logits.dim() >= 3 and logits.shape[1] == mask.shape[1]
        if kind == "class":
            result = logits.argmax(dim=-1)
        elif kind == "scores":
            result = logits.softmax(dim=-1)
        elif kind == "topk":
            if self.output.k > logits.shape[-1]:
                raise UsageError(f"--output topk:{self.output.k}: the model has only "
                                 f"{logits.shape[-1]} classes")
            top = logits.softmax(dim=-1).topk(self.output.k, dim=-1)
            pairs = [[[int(c), float(s)] for c, s in zip(ci, si, strict=True)]
                     for ci, si in zip(top.indices.reshape(-1, self.output.k).tolist(),
                                       top.values.reshape(-1, self.output.k).tolist(), strict=True)]
            shaped: Any = pairs
            if logits.dim() >= 3:
                seq = logits.shape[1]
                shaped = [pairs[j * seq:(j + 1) * seq] for j in range(logits.shape[0])]
            return [v[:n] if per_token else v for v, n in zip(shaped, lengths, strict=True)]
        else:
            result = logits
        values = result.tolist()
        return [v[:n] if per_token else v for v, n in zip(values, lengths, strict=True)]


def open_predictor(catalog_uri: str, key: str, *, fmt: str, batch_size: int, inputs: InputSpec,
                   output: OutputSpec, cache_dir: str | None = None, budget_bytes: int | None = None,
                   trust_code: bool = False, threads: int | None = None, **load_options: Any) -> Predictor:
    """A task's predictor: the model of ``key`` (:func:`~modelshard.jobs.modelio.load_model`,
    ``load_options`` passed on) and, for text inputs, the version's own tokenizer, both from
    the version's checked files (through the node's preload cache when ``cache_dir`` is
    given). ``threads``: torch's threads, the cores the task was given (YARN's vcores)."""
    if threads:
        # torch starts a thread per core of the host; tasks that share a node would fight.
        torch.set_num_threads(threads)
    from modelshard.catalog.catalog import Catalog
    from modelshard.jobs.hf import tokenizer as hf_tokenizer
    from modelshard.jobs.modelio import VersionAssets, load_model

    catalog = Catalog(catalog_uri)
    assets = VersionAssets(catalog, catalog.manifest(*catalog.resolve(key)), cache_dir=cache_dir)
    tokenizer = hf_tokenizer(assets, key=key) if inputs.kind == "text" else None
    model = load_model(catalog.uri, key, cache_dir=cache_dir, budget_bytes=budget_bytes,
                       trust_code=trust_code, assets=assets, **load_options)
    return Predictor(model, fmt=fmt, batch_size=batch_size, inputs=inputs, output=output,
                     tokenizer=tokenizer)


def _by_shape(rows: Sequence[np.ndarray]) -> list[list[int]]:
    """Indices of ``rows`` grouped by shape, in first-seen order: only equal shapes stack."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.shape, []).append(i)
    return list(groups.values())
