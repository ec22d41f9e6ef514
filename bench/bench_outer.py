"""The outer optimizer's settings on digits, in process and fast: the arithmetic of one
training epoch of mr_train (4 splits each trained by ``train_split`` from the averaged
inner momentum with its share of the batch, ``split_batch``; the count-weighted averages
of parameters and inner momentum in float64, :meth:`Outer.step`, weights and momenta
stored as float32) without the jobs around it, against single-process training with the
same seed; 10 epochs. ``--whole-batch-per-split``: each split trains with the whole batch
(mr_train before the batch was the job's); ``--reset-inner-momentum``: each split's SGD
momentum starts from zero every epoch instead (mr_train before issue 12's parity work).
It gives the inline runner's accuracies (the same bits on seeds 0-2, checked against
``bench_jobs.py --only train``), so many seeds and settings fit in minutes.

    .venv/bin/python bench/bench_outer.py --seeds 0-15 --outer 1:0,0.5:0.9 --jobs 2
"""

from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import numpy as np
import torch

from modelshard.jobs.models import mlp
from modelshard.jobs.train.reduce_task import Outer
from modelshard.jobs.train.task import evaluate, split_batch, train_reference, train_split
from modelshard.quickstart import SPLITS, TEST_ROWS, digits

SIZES = [64, 64, 10]


def averaged(x: np.ndarray, y: np.ndarray, *, seed: int, outer: Outer, epochs: int, lr: float,
             keep_inner: bool = True, batch_size: int = split_batch(32, SPLITS)) -> torch.nn.Module:
    parts = np.array_split(np.arange(len(y)), SPLITS)
    theta = {k: v.detach().numpy().copy() for k, v in mlp(sizes=SIZES, seed=seed).state_dict().items()}
    momentum = {k: np.zeros_like(v) for k, v in theta.items()}
    inner: dict[str, np.ndarray] = {}  # the version's averaged inner momentum (none at first)
    model = mlp(sizes=SIZES)
    for epoch in range(1, epochs + 1):
        acc = {k: np.zeros(v.shape, np.float64) for k, v in theta.items()}
        inner_acc = {k: np.zeros(v.shape, np.float64) for k, v in theta.items()}
        for i, part in enumerate(parts):
            model.load_state_dict({k: torch.from_numpy(v) for k, v in theta.items()})
            # The seed a map task gets: the run's, the epoch's and the split's (train_file's).
            task_seed = (seed * 1_000_003 + epoch * 1000 + i) * 1009
            buffers = dict(inner) if keep_inner else {}
            train_split(model, x[part], y[part], lr=lr, batch_size=batch_size, seed=task_seed,
                        momentum=buffers)
            for k, v in model.state_dict().items():
                acc[k] += v.numpy().astype(np.float64) * (len(part) / len(y))
                inner_acc[k] += buffers.get(k, np.zeros_like(theta[k])).astype(np.float64) * (len(part) / len(y))
        inner = {k: v.astype(np.float32) for k, v in inner_acc.items()}
        for k in theta:
            new, m = outer.step(theta[k].astype(np.float64), acc[k], momentum[k].astype(np.float64))
            theta[k], momentum[k] = new.astype(np.float32), m.astype(np.float32)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in theta.items()})
    return model


def one_seed(seed: int, *, outers: list[Outer], epochs: int, lr: float, keep_inner: bool,
             split_batch_size: int) -> tuple[float, list[float]]:
    """Test accuracy of single-process training and of each outer setting on ``seed``."""
    torch.set_num_threads(1)
    x, y = digits(seed)
    n = len(y) - TEST_ROWS
    model = mlp(sizes=SIZES, seed=seed)
    train_reference(model, x[:n], y[:n], epochs=epochs, lr=lr, batch_size=32, seed=seed)
    return evaluate(model, x[n:], y[n:]).accuracy, [
        evaluate(averaged(x[:n], y[:n], seed=seed, outer=o, epochs=epochs, lr=lr, keep_inner=keep_inner,
                          batch_size=split_batch_size),
                 x[n:], y[n:]).accuracy
        for o in outers]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0-2", help="first-last")
    p.add_argument("--outer", default="1:0,0.7:0.9", help="comma-separated LR:MOMENTUM")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once, one process each")
    p.add_argument("--reset-inner-momentum", action="store_true",
                   help="each split's SGD momentum from zero every epoch (as before issue 12's parity work)")
    p.add_argument("--whole-batch-per-split", action="store_true",
                   help="each split trains with the whole batch of 32 (before the batch was the job's)")
    a = p.parse_args()
    first, last = (int(s) for s in a.seeds.split("-"))
    outers = [Outer(lr=float(o.split(":")[0]), momentum=float(o.split(":")[1])) for o in a.outer.split(",")]
    ref, got = [], {o: [] for o in outers}
    run = partial(one_seed, outers=outers, epochs=a.epochs, lr=a.lr, keep_inner=not a.reset_inner_momentum,
                  split_batch_size=32 if a.whole_batch_per_split else split_batch(32, SPLITS))
    with ProcessPoolExecutor(a.jobs) as pool:
        for seed, (r, accs) in zip(range(first, last + 1), pool.map(run, range(first, last + 1)), strict=True):
            ref.append(r)
            for o, acc in zip(outers, accs, strict=True):
                got[o].append(acc)
            print(f"seed {seed}: single process {r:.4f}; " + ", ".join(
                f"outer {o.lr}/{o.momentum} {acc:.4f}" for o, acc in zip(outers, accs, strict=True)), flush=True)
    print("\n| outer lr / momentum | median | single process median | diff of medians | mean of per-seed diffs "
          "| median of per-seed diffs |\n|---|---:|---:|---:|---:|---:|")
    for o in outers:
        diffs = [(g - r) * 100 for g, r in zip(got[o], ref, strict=True)]
        a_med, r_med = statistics.median(got[o]), statistics.median(ref)
        print(f"| {o.lr} / {o.momentum} | {a_med:.4f} | {r_med:.4f} | {(a_med - r_med) * 100:+.2f} pp | "
              f"{statistics.mean(diffs):+.2f} pp | {statistics.median(diffs):+.2f} pp |")


if __name__ == "__main__":
    main()
