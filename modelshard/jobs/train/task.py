"""Data-parallel training by iterative parameter averaging (McDonald et al. 2010; local
SGD / FedAvg / DiLoCo): each epoch every split trains from the same weights, then the
weights are averaged, weighted by the number of examples each split saw, and an outer
optimizer steps on the averaged update (:mod:`modelshard.jobs.train.reduce_task`).

The mappers of ``mr_tasks/mr_train.py`` run :func:`train_file`: records are trained on in
batches as they are read, through a shuffle buffer of a bounded size (memory: the buffer,
not the split). :func:`train_reference` is the single-process run it is compared with; both go
through the same :class:`StreamTrainer`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from modelshard.errors import UsageError
from modelshard.jobs.records import BadRecord, parse_record

# Bytes of records held to shuffle a split that is read as a stream; a split that fits is
# shuffled as a whole, as single-process training shuffles its data.
SHUFFLE_BUFFER_BYTES = 64 << 20


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


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread: a container has one core, and the same number of threads on
    every runner keeps the results bit for bit the same."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class StreamTrainer:
    """SGD (momentum 0.9) on records as they come: each record enters a shuffle buffer of
    ``buffer_bytes`` (of features); once it is full, a random one leaves for the current batch.
    ``momentum``: the momentum buffers to start from, by parameter name (else zeros),
    replaced in place by those it ends with when it finishes::

        t = StreamTrainer(model, lr=0.1, batch_size=32, seed=0)
        for x, y in records:
            t.add(x, y)
        metrics = t.finish()
        buffers = t.momentum()
    """

    def __init__(self, model: nn.Module, *, lr: float, batch_size: int, seed: int,
                 buffer_bytes: int = SHUFFLE_BUFFER_BYTES, momentum: dict[str, np.ndarray] | None = None) -> None:
        if batch_size < 1 or buffer_bytes < 1:
            raise UsageError(f"batch size {batch_size}, shuffle buffer {buffer_bytes} bytes: both must be at least 1")
        self.model, self.batch_size, self.buffer_bytes = model, batch_size, buffer_bytes
        self.buffer: int | None = None  # records, once the first one says how big they are
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        self.params = dict(model.named_parameters())
        self.momentum_out = momentum
        for name, buffer in (momentum or {}).items():
            if name in self.params:  # torch's SGD takes a buffer found in its state as its own
                self.opt.state[self.params[name]]["momentum_buffer"] = torch.tensor(np.asarray(buffer))
        self.loss_fn = nn.CrossEntropyLoss(reduction="sum")
        self.rng = np.random.default_rng(seed)
        self.held: list[tuple[np.ndarray, int]] = []
        self.batch: list[tuple[np.ndarray, int]] = []
        self.metrics = Metrics()
        model.train()

    def momentum(self) -> dict[str, np.ndarray]:
        """The momentum buffers by parameter name (those that have one), as numpy arrays."""
        return {name: self.opt.state[p]["momentum_buffer"].detach().numpy().copy()
                for name, p in self.params.items() if self.opt.state[p].get("momentum_buffer") is not None}

    def add(self, x: np.ndarray, y: int) -> None:
        if self.buffer is None:
            self.buffer = max(1, self.buffer_bytes // max(1, x.nbytes))
        self.held.append((x, y))
        if len(self.held) >= self.buffer:
            self._take()

    def finish(self) -> Metrics:
        """Train on what is held; the metrics of this pass. UsageError if no record came."""
        while self.held:
            self._take()
        if self.batch:
            self._step()
        if not self.metrics.count:
            raise UsageError("training split is empty: every input file must hold at least one valid record")
        if self.momentum_out is not None:
            self.momentum_out.clear()
            self.momentum_out.update(self.momentum())
        return self.metrics

    def _take(self) -> None:
        i = int(self.rng.integers(len(self.held)))
        self.held[i], self.held[-1] = self.held[-1], self.held[i]
        self.batch.append(self.held.pop())
        if len(self.batch) == self.batch_size:
            self._step()

    def _step(self) -> None:
        xs = torch.from_numpy(np.stack([x for x, _ in self.batch]).astype(np.float32, copy=False))
        ys = torch.tensor([y for _, y in self.batch], dtype=torch.int64)
        self.batch = []
        with one_thread():
            self.opt.zero_grad()
            out = self.model(xs)
            loss = self.loss_fn(out, ys)
            (loss / len(ys)).backward()
            self.opt.step()
        self.metrics = self.metrics.add(Metrics(loss.item(), int((out.argmax(1) == ys).sum()), len(ys)))


def split_batch(batch_size: int, splits: int) -> int:
    """The batch each of ``splits`` trains with when ``batch_size`` is the job's batch: its
    share of it (at least one record), as data-parallel training splits its global batch
    over its workers. An epoch then takes as many SGD steps per split, of as many records in
    all, as one process takes with ``batch_size``; with the whole batch per split, averaging
    ``splits`` models moved about as far as a quarter of the steps (docs/benchmarks.md,
    "Parity")::

        >>> split_batch(32, 4), split_batch(32, 3), split_batch(2, 4)
        (8, 11, 1)
    """
    return max(1, round(batch_size / splits))


def train_file(model: nn.Module, lines: Callable[[], Iterable[str]], *, fmt: str, n_features: int | None,
               lr: float, batch_size: int, seed: int, epochs: int = 1, buffer_bytes: int = SHUFFLE_BUFFER_BYTES,
               momentum: dict[str, np.ndarray] | None = None) -> Generator[tuple[str, str], None, Metrics]:
    """Train ``model`` in place on one split, read as a stream by ``lines()`` once per
    local epoch; yields ``(reason, line)`` for each bad record (of the first pass) and
    returns the metrics of the last pass. ``momentum`` (by parameter name): the SGD
    momentum buffers training starts from, replaced in place by those it ends with::

        metrics = yield from train_file(model, lambda: open("part-0.jsonl"), fmt="jsonl", ...)
    """
    metrics = Metrics()
    for epoch in range(epochs):
        trainer = StreamTrainer(model, lr=lr, batch_size=batch_size, seed=seed * 1009 + epoch,
                                buffer_bytes=buffer_bytes, momentum=momentum)
        for line in lines():
            try:
                _, x, y = parse_record(line, fmt, n_features=n_features)
                if y is None:
                    raise BadRecord("no label")
            except BadRecord as e:
                if epoch == 0:
                    yield str(e), line
                continue
            trainer.add(x, y)
        metrics = trainer.finish()
    return metrics


def train_split(model: nn.Module, x: np.ndarray, y: np.ndarray, *, lr: float, batch_size: int,
                seed: int = 0, momentum: dict[str, np.ndarray] | None = None) -> Metrics:
    """Train ``model`` in place for one pass over arrays ``x``, ``y``, shuffled whole;
    ``momentum`` as :func:`train_file` takes it."""
    x = np.asarray(x, dtype=np.float32)
    trainer = StreamTrainer(model, lr=lr, batch_size=batch_size, seed=seed, buffer_bytes=max(1, x.nbytes),
                            momentum=momentum)
    for xi, yi in zip(x, np.asarray(y), strict=True):
        trainer.add(xi, int(yi))
    return trainer.finish()


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
    return [train_split(model, x, y, lr=lr, batch_size=batch_size, seed=seed + e) for e in range(epochs)]
