"""Training a model an order of magnitude bigger than the digits MLP on YARN (issue 12):
an MLP of >= 200 MB, a few epochs, each a MapReduce pass. Per epoch: bytes through the
shuffle (Hadoop's "Reduce shuffle bytes" counter),
the peak RSS of the mappers and reducers (each task reports its own ``ru_maxrss``, its
in-process libhdfs JVM included), and the epoch's wall time against one process doing the
same work (load the version from the catalog, train on every record of every split in one
pass, commit the result as a version), the two sides alternated epoch by epoch.

    eval "$(bin/modelshard-cluster env)"
    .venv/bin/python bench/bench_train_scale.py [--sizes 2048,8192,4096,64] [--records 128] [--epochs 2]

Data and catalog go to hdfs:///user/root/bench-train (removed afterwards). Prints a
markdown table and writes it to bench/out/train_scale.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import uuid
from pathlib import Path

import numpy as np

from modelshard import api
from modelshard.catalog.manifest import is_optimizer_state
from modelshard.fs import get_fs
from modelshard.jobs.modelio import SPEC_ATTR, load_model
from modelshard.jobs.models import ModelSpec
from modelshard.jobs.train.driver import train
from modelshard.jobs.train.task import StreamTrainer

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def write_data(fs, folder: str, *, splits: int, records: int, width: int, classes: int) -> None:
    rng = np.random.default_rng(0)
    for s in range(splits):
        x = rng.normal(size=(records, width)).round(3)
        y = rng.integers(classes, size=records)
        lines = (json.dumps({"id": s * records + i, "x": xi.tolist(), "y": int(yi)})
                 for i, (xi, yi) in enumerate(zip(x, y, strict=True)))
        fs.write_bytes(f"{folder}/part-{s:05d}.jsonl", ("\n".join(lines) + "\n").encode())


def one_process_epoch(catalog: str, key: str, data: str, *, lr: float, batch_size: int, seed: int) -> float:
    """The baseline: the same work in one process; returns its wall time in seconds."""
    t = time.perf_counter()
    model = load_model(catalog, key)
    trainer = StreamTrainer(model, lr=lr, batch_size=batch_size, seed=seed)
    fs, folder = get_fs(data)
    for info in sorted(fs.ls(folder), key=lambda f: f.path):
        with fs.open_read(info.path) as f:
            for line in f:
                r = json.loads(line)
                trainer.add(np.asarray(r["x"], np.float32), r["y"])
    trainer.finish()
    state = {k: v.detach().numpy() for k, v in model.state_dict().items() if not is_optimizer_state(k)}
    manifest = api.show(key, catalog=catalog).manifest
    api.push(state, "baseline", catalog=catalog, attrs={SPEC_ATTR: manifest.attrs[SPEC_ATTR]})
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="2048,8192,4096,64", help="MLP layer widths")
    p.add_argument("--splits", type=int, default=2)
    p.add_argument("--records", type=int, default=128, help="records per split")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--map-memory-mb", type=int, default=2048)
    p.add_argument("--reduce-memory-mb", type=int, default=1024)
    p.add_argument("--root", default="hdfs:///user/root/bench-train")
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    params = sum(i * o + o for i, o in zip(sizes, sizes[1:], strict=False))
    fs, root = get_fs(f"{a.root}/{uuid.uuid4().hex}")
    catalog, data = fs.uri(f"{root}/catalog"), fs.uri(f"{root}/data")
    rows = []
    try:
        write_data(fs, f"{root}/data", splits=a.splits, records=a.records, width=sizes[0], classes=sizes[-1])
        spec = ModelSpec("mlp", {"sizes": sizes})
        options = {"map_memory_mb": a.map_memory_mb, "reduce_memory_mb": a.reduce_memory_mb}
        for epoch in range(1, a.epochs + 1):
            t = time.perf_counter()
            r = train("big", data, epochs=epoch, lr=0.01, catalog=catalog, init=spec, runner="hadoop",
                      job_options=options, echo=print)
            job_s = time.perf_counter() - t
            e = r.epochs[-1]
            parent = api.show(f"big@{e.version}", catalog=catalog).manifest.attrs["train.parent"]
            one_s = one_process_epoch(catalog, f"big@{parent}", data, lr=0.01, batch_size=32, seed=epoch)
            m = api.show(f"big@{e.version}", catalog=catalog).manifest
            shard_mib = max(s.size for s in m.shards) / MIB
            rows.append((epoch, len(m.shards), shard_mib, e.shuffle_bytes, e.peak_rss_map_mib,
                         e.peak_rss_reduce_mib, job_s, one_s))
            print(rows[-1], flush=True)
    finally:
        fs.delete(root, recursive=True)
    model_mb = params * 4 / 1e6
    lines = [f"MLP {sizes}: {params:,} parameters, {model_mb:.0f} MB (F32); a version with the outer "
             f"optimizer's momentum {2 * model_mb:.0f} MB; {a.splits} splits of {a.records} records; "
             f"map containers {a.map_memory_mb} MB, reduce {a.reduce_memory_mb} MB", "",
             "| epoch | shards (largest MiB) | reduce shuffle bytes | peak RSS map MiB | peak RSS reduce MiB "
             "| reduce goal MiB (2 shards + 100) | epoch on YARN s | one process s | ratio |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for epoch, shards, shard_mib, shuffle, rss_map, rss_reduce, job_s, one_s in rows:
        lines.append(f"| {epoch} | {shards} ({shard_mib:.0f}) | {shuffle:,} | {rss_map} | {rss_reduce} | "
                     f"{math.ceil(2 * shard_mib + 100)} | {job_s:.1f} | {one_s:.1f} | {job_s / one_s:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_scale.md").write_text(text)


if __name__ == "__main__":
    main()
