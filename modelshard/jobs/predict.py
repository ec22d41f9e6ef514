"""Batch prediction, the logic of ``mr_tasks/mr_predict.py``: records are parsed one by one
and predicted in batches (never one at a time); a malformed record becomes a side-output
line with its reason.

>>> import torch
>>> p = Predictor(torch.nn.Linear(2, 3), fmt="csv", batch_size=2)
>>> p.add("a,,1,2") + p.add("b,,oops,2") + p.flush()  # doctest: +ELLIPSIS
[(None, {'error': 'features are not all numbers', 'record': 'b,,oops,2'}), ('a', ...)]
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from modelshard.jobs.records import BadRecord, check_format, parse_record

# What a bad record's side-output line keeps of it, so one huge line cannot flood the output.
MAX_BAD_RECORD_CHARS = 1000


def input_width(model: nn.Module) -> int | None:
    """The number of input features of a model whose first layer is Linear."""
    first = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    return first.in_features if first is not None else None


class Predictor:
    """Buffers parsed records and predicts a batch at a time.

    Output pairs: ``(id, predicted class)`` for a good record, ``(None, {"error", "record"})``
    for a bad one (ids are never None, so the two cannot be confused).
    """

    def __init__(self, model: nn.Module, *, fmt: str, batch_size: int = 1024) -> None:
        self.model = model.eval()
        self.fmt = check_format(fmt)
        self.batch_size = batch_size
        self.n_features = input_width(model)
        self.ids: list[object] = []
        self.rows: list[np.ndarray] = []
        self.records = self.bad = self.batches = 0

    def add(self, line: str) -> list[tuple[object, object]]:
        self.records += 1
        try:
            rid, x, _ = parse_record(line, self.fmt, n_features=self.n_features)
        except BadRecord as e:
            self.bad += 1
            return [(None, {"error": str(e), "record": line.rstrip("\r\n")[:MAX_BAD_RECORD_CHARS]})]
        self.ids.append(rid)
        self.rows.append(x)
        return list(self._predict()) if len(self.ids) >= self.batch_size else []

    def flush(self) -> list[tuple[object, object]]:
        return list(self._predict()) if self.ids else []

    @torch.no_grad()
    def _predict(self) -> Iterator[tuple[object, object]]:
        self.batches += 1
        out = self.model(torch.from_numpy(np.stack(self.rows)))
        preds = out.argmax(1).tolist()
        yield from zip(self.ids, preds, strict=True)
        self.ids, self.rows = [], []
