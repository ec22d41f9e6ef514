"""The quickstart pipeline, end to end: push an MLP, train it by parameter averaging on
scikit-learn's digits (four splits, one streaming job per epoch), predict the held-out
rows, reshard the result to BF16, list the catalog and print a summary.

    python -m modelshard.quickstart                       # local catalog, mrjob local runner
    python -m modelshard.quickstart --runner hadoop --catalog hdfs:///user/me/catalog
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelshard import api
from modelshard.errors import ModelShardError
from modelshard.fs import get_fs
from modelshard.jobs.models import ModelSpec, build
from modelshard.jobs.predict.driver import predict
from modelshard.jobs.reshard.driver import reshard
from modelshard.jobs.train.driver import train
from modelshard.jobs.train.task import evaluate, train_reference

SPEC = ModelSpec("mlp", {"sizes": [64, 64, 10]})
SPLITS = 4
TEST_ROWS = 397


def digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(seed).permutation(len(d.target))
    return (d.data[order] / 16).astype(np.float32), d.target[order]


def write_records(fs, path: str, x: np.ndarray, y: np.ndarray, ids: range, *, labels: bool = True) -> None:
    lines = (json.dumps({"id": i, "x": [round(float(v), 4) for v in xi], **({"y": int(yi)} if labels else {})})
             for i, xi, yi in zip(ids, x, y, strict=True))
    fs.write_bytes(path, ("\n".join(lines) + "\n").encode())


@dataclass
class Summary:
    runner: str
    catalog: str
    model: str
    epochs: int
    train_accuracy: float
    test_accuracy_averaged: float
    test_accuracy_single_process: float
    predicted: int
    predict_accuracy: float
    bad_records: int
    resharded: str
    metrics: str
    plot: str
    seconds: float


def run(*, runner: str, catalog: str, work: str, out_dir: Path, epochs: int, lr: float, batch_size: int,
        echo=print) -> Summary:
    t0 = time.time()
    x, y = digits()
    n_train = len(y) - TEST_ROWS
    fs, root = get_fs(work)
    data = f"{root}/train"
    for i, part in enumerate(np.array_split(np.arange(n_train), SPLITS)):
        write_records(fs, f"{data}/part-{i:05d}.jsonl", x[part], y[part], range(part[0], part[-1] + 1))
    test = f"{root}/test.jsonl"
    write_records(fs, test, x[n_train:], y[n_train:], range(n_train, len(y)), labels=False)
    with_bad = test.replace(".jsonl", "-with-a-bad-record.jsonl")
    fs.write_bytes(with_bad, fs.read_bytes(test) + b'{"id": "broken", "x": "not a list"}\n')
    xte, yte = x[n_train:], y[n_train:]

    echo(f"1/4 train: {SPLITS} splits of {n_train} digits, {epochs} epochs on the {runner} runner")
    result = train("digits", fs.uri(data), epochs=epochs, lr=lr, batch_size=batch_size, runner=runner,
                   catalog=catalog, init=SPEC, test_data=(xte, yte), out_dir=out_dir, echo=echo)
    last = result.epochs[-1]
    reference = build(SPEC)
    train_reference(reference, x[:n_train], y[:n_train], epochs=epochs, lr=lr, batch_size=batch_size)

    echo("2/4 predict the held-out rows (and one malformed record)")
    pred = predict(f"digits@{last.version}", fs.uri(with_bad), fs.uri(f"{root}/predictions"), runner=runner,
                   catalog=catalog, echo=echo)
    got = {}
    for info in fs.ls(f"{root}/predictions"):
        if Path(info.path).name.startswith("part-"):
            for line in fs.read_bytes(info.path).decode().splitlines():
                k, v = line.split("\t")
                if k != "null":
                    got[json.loads(k)] = json.loads(v)
    correct = sum(got.get(i) == int(label) for i, label in zip(range(n_train, len(y)), yte, strict=True))

    echo("3/4 reshard the trained version to BF16")
    resharded = reshard(f"digits@{last.version}", shard_count=1, dtype="BF16", runner=runner, catalog=catalog,
                        echo=echo)

    echo("4/4 the catalog")
    for v in api.ls("digits", catalog=catalog):
        echo(f"  {v.name}@{v.version}  {v.total_size} bytes  {v.shards} shard(s)  aliases: {', '.join(v.aliases)}")
    return Summary(runner=runner, catalog=catalog, model=f"digits@{last.version}", epochs=epochs,
                   train_accuracy=last.accuracy, test_accuracy_averaged=last.test_accuracy,
                   test_accuracy_single_process=evaluate(copy.deepcopy(reference), xte, yte).accuracy,
                   predicted=len(got), predict_accuracy=correct / len(yte), bad_records=pred.bad_records,
                   resharded=f"digits@{resharded.version}", metrics=result.metrics_path, plot=result.plot_path,
                   seconds=round(time.time() - t0, 1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m modelshard.quickstart", description=__doc__.split("\n\n")[0])
    p.add_argument("--runner", "-r", default="local", choices=("inline", "local", "hadoop"))
    p.add_argument("--catalog", help="catalog root (default: a fresh folder under --out)")
    p.add_argument("--work", help="where the data and predictions go (default: next to the catalog)")
    p.add_argument("--out", default="quickstart-out", help="local folder for metrics, the plot and the summary")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=32)
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    catalog = a.catalog or str(out / run_id / "catalog")
    work = a.work or (catalog.rstrip("/") + "-work/" + run_id if a.catalog else str(out / run_id / "work"))
    try:
        s = run(runner=a.runner, catalog=catalog, work=work, out_dir=out / run_id, epochs=a.epochs, lr=a.lr,
                batch_size=a.batch_size)
    except ModelShardError as e:
        print(f"quickstart: error: {' '.join(str(e).split())}", file=sys.stderr)
        return e.exit_code
    (out / run_id / "summary.json").write_text(json.dumps(s.__dict__, indent=2))
    print(f"""
modelshard quickstart ({s.runner} runner, {s.seconds} s)
  catalog        {s.catalog}
  trained        {s.model}: {s.epochs} epochs of parameter averaging over {SPLITS} splits (SGD momentum kept)
  test accuracy  {s.test_accuracy_averaged:.4f} (single process, same epochs: {s.test_accuracy_single_process:.4f})
  predicted      {s.predicted} held-out rows, accuracy {s.predict_accuracy:.4f}; {s.bad_records} bad record(s) set aside
  resharded      {s.resharded} (BF16)
  metrics        {s.metrics}
  plot           {s.plot}""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
