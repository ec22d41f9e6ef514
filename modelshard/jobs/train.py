"""Data-parallel training by iterative parameter averaging (McDonald et al. 2010; local
SGD / FedAvg): each epoch every split trains from the same weights, then the weights are
averaged, weighted by the number of examples each split saw. The MapReduce job
(``mr_tasks/mr_train.py``) runs :func:`train_split` in its mappers and :func:`average` in
its reducers; :func:`train_reference` is the single-process run it is compared with.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from modelshard.errors import UsageError


@dataclass
class Metrics:
    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0

    def add(self, other: Metrics) -> Metrics:
        return Metrics(self.loss_sum + other.loss_sum, self.correct + other.correct, self.count + other.count)

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else float("nan")


def train_split(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int = 1, lr: float, batch_size: int, seed: int = 0
) -> Metrics:
    """Train ``model`` in place with SGD on one split; metrics of the last local epoch."""
    if len(x) == 0:
        raise UsageError("training split is empty: every input file must hold at least one valid record")
    xt, yt = torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y, dtype=np.int64))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        metrics = Metrics()
        for idx in torch.randperm(len(xt), generator=gen).split(batch_size):
            opt.zero_grad()
            out = model(xt[idx])
            loss = loss_fn(out, yt[idx])
            (loss / len(idx)).backward()
            opt.step()
            metrics = metrics.add(Metrics(loss.item(), int((out.argmax(1) == yt[idx]).sum()), len(idx)))
    return metrics


def average(weighted: Iterable[tuple[int, np.ndarray]]) -> np.ndarray:
    """The count-weighted mean of arrays of one shape, in float64, cast back to their dtype.

    Summation order is fixed (by count, then bytes) so every task attempt gets identical bits.
    """
    items = sorted(weighted, key=lambda cw: (cw[0], cw[1].tobytes()))
    if not items:
        raise ValueError("nothing to average")
    total = sum(c for c, _ in items)
    acc = np.zeros(items[0][1].shape, dtype=np.float64)
    for count, array in items:
        acc += array.astype(np.float64) * (count / total)
    return acc.astype(items[0][1].dtype)


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> Metrics:
    model.eval()
    out = model(torch.from_numpy(np.asarray(x, dtype=np.float32)))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    loss = nn.functional.cross_entropy(out, yt, reduction="sum").item()
    return Metrics(loss, int((out.argmax(1) == yt).sum()), len(yt))


def train_reference(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, batch_size: int, seed: int = 0
) -> list[Metrics]:
    """Single-process training with the same epochs, for comparison with averaging."""
    return [train_split(model, x, y, epochs=1, lr=lr, batch_size=batch_size, seed=seed + e) for e in range(epochs)]
