"""The model store on the real HDFS against the plain Hadoop way of storing a model.

A transformer-like state dict of about ``--size-mb`` (an F32 embedding larger than one
128 MiB shard, so it is split; F32 and BF16 matrices; many small biases and norms) is
saved once with ``torch.save``. Each run then times, interleaved and in alternating order:

- push: ``modelshard.push`` of the in-memory dict vs ``hadoop fs -put`` of the .pt file;
- pull: ``modelshard.pull`` into memory (torch) vs ``hadoop fs -get`` + ``torch.load``;
- raw read: ``modelshard.pull`` vs reading the stored shards' bytes without any checking:
  with ``hadoop fs -cat`` to /dev/null; with a plain read loop through pydoop's own API in
  the same process (one thread, one reused 8 MiB buffer); and, for context, with pydoop
  reads of each shard into a new bytearray (the memory a pull must fill, unchecked);
- into memory that exists: ``modelshard.load_into`` of a CPU module holding the model's
  tensors (filled in place: no new memory, as the read loop), verified and with
  ``unverified_for_benchmarks=True``, vs the read loop.

It prints the medians and their ratios (baseline time / modelshard time: above 1 means
modelshard is faster) as a markdown table. Needs the cluster (bin/modelshard-cluster
start). Files go to bench/out/ (git-ignored) and a new folder under ``--hdfs-dir`` on HDFS;
both are removed at the end::

    .venv/bin/python bench/bench_store.py --size-mb 1200 --runs 3
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pydoop.hdfs  # noqa: E402
import torch  # noqa: E402

import modelshard  # noqa: E402 - runs from a checkout without installing
from modelshard.fs.hdfs import HdfsFileSystem  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HADOOP = os.path.join(REPO, "bin", "hadoop")
OUT = os.path.join(REPO, "bench", "out")
MB = 1_000_000


def model_state(size_mb: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A transformer-like state dict of about ``size_mb`` MB (at least the embedding).

    >>> sum(t.nbytes for t in model_state(200).values()) // MB
    201
    """
    g = torch.Generator().manual_seed(seed)
    d, vocab = 1024, 40_000  # the F32 embedding is 164 MB: more than one 128 MiB shard

    def rand(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    state = {"embed.weight": rand(vocab, d), "final_norm.weight": rand(d),
             "final_norm.bias": rand(d)}
    layer_bytes = 4 * (3 * d * d + 4 * d * d) + 2 * (d * d + 4 * d * d) + 4 * 13 * d
    for i in range(max(0, round((size_mb * MB - 4 * vocab * d) / layer_bytes))):
        p = f"layers.{i}."
        state |= {
            p + "attn.qkv.weight": rand(3 * d, d), p + "attn.qkv.bias": rand(3 * d),
            p + "attn.out.weight": rand(d, d, dtype=torch.bfloat16),
            p + "attn.out.bias": rand(d),
            p + "mlp.up.weight": rand(4 * d, d, dtype=torch.bfloat16),
            p + "mlp.up.bias": rand(4 * d),
            p + "mlp.down.weight": rand(d, 4 * d), p + "mlp.down.bias": rand(d),
            p + "norm1.weight": rand(d), p + "norm1.bias": rand(d),
            p + "norm2.weight": rand(d), p + "norm2.bias": rand(d),
        }
    return state


def hadoop(*args: str, stdout: int | None = None) -> None:
    subprocess.run([HADOOP, "fs", *args], check=True, stdout=stdout,
                   stderr=subprocess.DEVNULL)


def _module_of(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A module whose state dict has ``state``'s names and shapes, its own memory."""
    module = torch.nn.Module()
    for name, t in state.items():
        owner = module
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, torch.nn.Module())
            owner = getattr(owner, part)
        owner.register_buffer(leaf, torch.zeros_like(t))
    return module


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    del result
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=1200, help="model size (default 1200)")
    ap.add_argument("--runs", type=int, default=3, help="runs; medians are reported")
    ap.add_argument("--workers", type=int, default=4, help="modelshard threads (default 4)")
    ap.add_argument("--hdfs-dir", default="/tmp/modelshard-bench",
                    help="HDFS folder for the benchmark's files (default /tmp/modelshard-bench)")
    args = ap.parse_args()

    fs = HdfsFileSystem.for_netloc("")
    base = f"{args.hdfs_dir.rstrip('/')}/{uuid.uuid4().hex}"
    catalog = fs.uri(f"{base}/catalog")
    os.makedirs(OUT, exist_ok=True)
    pt, got = os.path.join(OUT, "model.pt"), os.path.join(OUT, "got.pt")
    state = model_state(args.size_mb)
    nbytes = sum(t.nbytes for t in state.values())
    module = _module_of(state)  # memory that exists, for load_into
    torch.save(state, pt)
    plain = pydoop.hdfs.hdfs("default", 0)  # pydoop's own API, not modelshard's wrappers
    buf = bytearray(8 << 20)

    def read_loop(paths: list[str]) -> None:
        view = memoryview(buf)
        for path in paths:
            with plain.open_file(path) as f:
                while f.read_chunk(view):
                    pass

    def read_new(paths: list[str]) -> list[bytearray]:
        out = []
        for path in paths:
            with plain.open_file(path) as f:
                out.append(bytearray(f.size))
                f.read_chunk(out[-1])
        return out

    times: dict[str, list[float]] = {}
    try:
        for run in range(args.runs):
            fs.mkdirs(base)
            pairs: list[tuple[str, Callable[[], object]]] = [
                ("put", lambda: hadoop("-put", "-f", pt, f"{base}/model.pt")),
                ("push", lambda: modelshard.push(state, "bench", catalog=catalog,
                                                 workers=args.workers)),
            ]
            for name, fn in pairs if run % 2 == 0 else pairs[::-1]:
                times.setdefault(name, []).append(timed(fn))
            manifest = modelshard.show("bench", catalog=catalog).manifest
            vdir = f"{base}/catalog/models/bench/{manifest.version}"
            shards = [f"{vdir}/{s.path}" for s in manifest.shards]

            def get_and_load() -> dict:
                if os.path.exists(got):
                    os.remove(got)
                hadoop("-get", f"{base}/model.pt", got)
                return torch.load(got, weights_only=True)

            def cat(shards: list[str] = shards) -> None:
                with open(os.devnull, "wb") as null:
                    hadoop("-cat", *(fs.uri(p) for p in shards), stdout=null.fileno())

            reads: list[tuple[str, Callable[[], object]]] = [
                ("get+load", get_and_load),
                ("pull", lambda: modelshard.pull("bench", catalog=catalog, framework="torch",
                                                 workers=args.workers)),
                ("cat", cat),
                ("read loop", lambda shards=shards: read_loop(shards)),
                ("read new", lambda shards=shards: read_new(shards)),
                ("load_into", lambda: modelshard.load_into(module, "bench", catalog=catalog,
                                                           workers=args.workers)),
                ("load_into unverified", lambda: modelshard.load_into(
                    module, "bench", catalog=catalog, workers=args.workers,
                    unverified_for_benchmarks=True)),
            ]
            for name, fn in reads if run % 2 == 0 else reads[::-1]:
                times.setdefault(name, []).append(timed(fn))
            fs.delete(base, recursive=True)
            print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
                  file=sys.stderr)
    finally:
        fs.delete(base, recursive=True)
        shutil.rmtree(OUT, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        ("push (in-memory dict) vs `hadoop fs -put` of the .pt", "push", "put", 1.2),
        ("pull into memory vs `hadoop fs -get` + `torch.load`", "pull", "get+load", 3.0),
        ("pull into memory vs `hadoop fs -cat` of the shards", "pull", "cat", 0.9),
        ("pull into memory vs a plain pydoop read loop of the shards", "pull", "read loop",
         0.9),
        ("pull into memory vs plain pydoop reads of the shards into new bytearrays",
         "pull", "read new", None),
        ("load_into a CPU module (memory that exists), verified, vs the plain read loop",
         "load_into", "read loop", None),
        ("load_into a CPU module: verified vs unverified_for_benchmarks",
         "load_into", "load_into unverified", None),
    ]
    print(f"model: {len(state)} tensors, {nbytes / MB:.0f} MB; {args.runs} runs; "
          f"workers={args.workers}; times are medians\n")
    print("| figure | modelshard | baseline | ratio (baseline / modelshard) | target |")
    print("|---|---|---|---|---|")
    for label, ours, theirs, target in rows:
        ratio = med[theirs] / med[ours]
        verdict = ("none (context)"
                   if target is None else
                   f">= {target:.1f}x {'met' if ratio >= target else 'missed'}")
        print(f"| {label} | {med[ours]:.2f} s ({nbytes / MB / med[ours]:.0f} MB/s) | "
              f"{med[theirs]:.2f} s | {ratio:.2f}x | {verdict} |")


if __name__ == "__main__":
    main()
