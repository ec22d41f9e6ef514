"""Prediction throughput of the pretrained model from PyPI (tests/pretrained.py, issue 11):
``modelshard predict`` (text in, embeddings out, 2 input files: 2 map tasks) vs in-process
batched transformers inference reading, tokenizing, predicting and writing the same rows.

    python bench/bench_pretrained.py [--runner local|hadoop] [--rows 4000] [--runs 3]

A task's logic alone (``open_predictor`` in this process, one thread) is timed too, to tell
modelshard's per-record cost from the runner's. The job runs at two input sizes (a quarter
of ``--rows`` and all of them), so that its fixed cost (task start-up: Python, torch,
transformers, the model's weights) and its rate beyond it are fitted apart; the rate is
given only when the larger input takes measurably longer than the spread of the runs. Per
core: the job's two tasks share the machine's cores (one torch thread each), the baseline
runs on one thread (``torch.set_num_threads(1)``), so the ratio is (job rate / cores used) /
baseline rate. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modelshard import api  # noqa: E402
from modelshard.fs import get_fs  # noqa: E402
from modelshard.jobs.predict.driver import predict  # noqa: E402
from tests import pretrained as pt  # noqa: E402

BATCH = 64


def write_rows(n: int) -> bytes:
    words = " ".join(pt.SENTENCES).split()
    return b"".join(orjson.dumps({"id": i, "text": " ".join(words[i % 50:i % 50 + 4 + i % 29])}) + b"\n"
                    for i in range(n))


def in_process(folder: Path, src: Path, dst: Path) -> int:
    """The baseline: one process, one thread, batched like the tasks."""
    import torch
    import transformers

    torch.set_num_threads(1)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    n = 0
    with open(src, "rb") as f, open(dst, "wb") as out:
        lines = f.read().splitlines()
        for i in range(0, len(lines), BATCH):
            recs = [orjson.loads(line) for line in lines[i:i + BATCH]]
            batch = tok([r["text"] for r in recs], padding=True, truncation=True, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            emb = ((hidden * mask).sum(1) / mask.sum(1)).tolist()
            out.write(b"".join(orjson.dumps(r["id"]) + b"\t" + orjson.dumps(e) + b"\n"
                               for r, e in zip(recs, emb, strict=True)))
            n += len(recs)
    return n


def task_logic(cat: str, key: str, src: Path) -> int:
    """What a task does per record, in this process on one thread: parse, tokenize with the
    version's tokenizer, predict, encode the output lines (no runner, no start-up)."""
    from modelshard.jobs.predict.task import InputSpec, OutputSpec, open_predictor
    from modelshard.jobs.wire import OrjsonProtocol

    p = open_predictor(cat, key, fmt="jsonl", batch_size=BATCH, inputs=InputSpec("text", "text"),
                       output=OutputSpec("embedding"), threads=1)
    write = OrjsonProtocol().write
    lines = src.read_text().splitlines()
    t = time.perf_counter()
    out = [write(*pair) for line in lines for pair in p.add(line)] + [write(*pair) for pair in p.flush()]
    assert len(out) == len(lines)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runner", choices=("local", "hadoop"), default="local")
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    folder = pt.model_folder()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if a.runner == "hadoop":
            fs, root = get_fs(f"hdfs:///tmp/modelshard-bench/{uuid.uuid4().hex}")
        else:
            fs, root = get_fs(str(tmp))
        cat = fs.uri(f"{root}/catalog")
        key = "minilm@" + api.push(folder, "minilm", catalog=cat).version
        sizes = (a.rows // 4, a.rows)
        for n in sizes:
            data = write_rows(n).splitlines(keepends=True)
            fs.write_bytes(f"{root}/in-{n}/part-0.jsonl", b"".join(data[:n // 2]))
            fs.write_bytes(f"{root}/in-{n}/part-1.jsonl", b"".join(data[n // 2:]))
        (tmp / "rows.jsonl").write_bytes(write_rows(a.rows))
        base_t, task_t, job_t = [], [], {n: [] for n in sizes}
        for r in range(a.runs):
            t = time.perf_counter()
            assert in_process(folder, tmp / "rows.jsonl", tmp / "out.tsv") == a.rows
            base_t.append(time.perf_counter() - t)
            task_t.append(task_logic(cat, key, tmp / "rows.jsonl"))
            for n in sizes:
                t = time.perf_counter()
                res = predict(key, fs.uri(f"{root}/in-{n}"), fs.uri(f"{root}/out-{n}-{r}"), catalog=cat,
                              runner=a.runner, inputs="text:text", outputs="embedding", batch_size=BATCH)
                job_t[n].append(time.perf_counter() - t)
                assert res.records == n and res.bad_records == 0
            print(f"run {r}: in-process {base_t[-1]:.1f} s; task logic {task_t[-1]:.1f} s; job " +
                  ", ".join(f"{n} rows {job_t[n][-1]:.1f} s" for n in sizes), flush=True)
        if a.runner == "hadoop":
            fs.delete(root, recursive=True)
    base = a.rows / statistics.median(base_t)
    small, big = sizes
    med = {n: statistics.median(job_t[n]) for n in sizes}
    noise = max(max(ts) - min(ts) for ts in job_t.values())
    extra = med[big] - med[small]
    used = min(2, cores)  # two map tasks
    print(f"\n{cores} cores; medians of {a.runs}; {a.rows} rows, batches of {BATCH}\n")
    print("| figure | modelshard | baseline | ratio |\n|---|---:|---:|---:|")
    task = a.rows / statistics.median(task_t)
    print(f"| records/s, a task's logic in this process (parse, tokenize, predict, encode) vs in-process "
          f"transformers, both on one thread | {task:,.1f} | {base:,.1f} | {task / base:.2f}x |")
    print(f"| records/s, whole job ({a.runner} runner, {big} rows) vs in-process on one thread | "
          f"{big / med[big]:,.1f} | {base:,.1f} | {big / med[big] / base:.2f}x |")
    if extra > noise:
        rate = (big - small) / extra
        fixed = med[small] - small / rate
        print(f"| records/s per core beyond the job's fixed cost ({fixed:.1f} s; fit of {small} and {big} "
              f"rows, {used} tasks) vs in-process on one thread | {rate / used:,.1f} | {base:,.1f} | "
              f"{rate / used / base:.2f}x |")
    else:
        print(f"| per-record rate beyond the fixed cost | not measurable: {big} rows took {extra:.1f} s more "
              f"than {small}, within the spread of {noise:.1f} s; use more --rows | | |")


if __name__ == "__main__":
    main()
