"""Loading benchmarks on the real HDFS: partial loads, warm cache, cold loads, parallel fetch.

Pushes a synthetic float32 model (``--tensors`` x ``--tensor-mib`` MiB, ``--shard-mib`` MiB
shards) to a throwaway HDFS catalog and prints one markdown table; each timing is the median
of ``--runs`` runs, the two sides of each comparison run alternately in the same process:

* partial load: bytes read from HDFS (counted by a wrapping FileSystem, headers included)
  per byte of the tensors asked for, for 1, 10 and 50 percent of the tensors;
* warm cache: ``modelshard.load`` from the preload cache vs ``safetensors.safe_open`` on the
  same cache files (every page of every tensor touched on both sides);
* cold: ``modelshard.load`` straight from HDFS vs a raw read of the same shards'
  bytes with the same number of threads, and vs the same load with
  ``unverified_for_benchmarks=True`` (what checking every chunk costs);
* parallel: shards read 4 at a time vs one at a time.

    .venv/bin/python bench/bench_loading.py                      # about 2 minutes
    .venv/bin/python bench/bench_loading.py --tensors 32 --runs 3
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from safetensors import safe_open  # noqa: E402

import modelshard  # noqa: E402 - runs from a checkout without installing
from modelshard.catalog.catalog import Catalog  # noqa: E402
from modelshard.fs.hdfs import HdfsFileSystem  # noqa: E402
from tests.counting_fs import CountingFileSystem  # noqa: E402

MiB = 1 << 20


def touch(arrays: dict) -> int:
    """Read one byte of every page of every array, so memory maps are really read."""
    return sum(int(a.reshape(-1).view(np.uint8)[::4096].sum()) for a in arrays.values())


def median_s(fn: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def side_by_side(a: Callable[[], object], b: Callable[[], object], runs: int
                 ) -> tuple[float, float]:
    """Medians of ``a`` and ``b`` run alternately (after one warm-up of each)."""
    a(), b()
    ta, tb = [], []
    for _ in range(runs):
        ta += median_s(a, 1)
        tb += median_s(b, 1)
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensors", type=int, default=96)
    ap.add_argument("--tensor-mib", type=int, default=2)
    ap.add_argument("--shard-mib", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()

    fs = HdfsFileSystem.for_netloc("")
    root = f"/tmp/modelshard-bench/{uuid.uuid4().hex}"
    uri = fs.uri(f"{root}/cat")
    cache_dir = tempfile.mkdtemp(prefix="modelshard-bench-cache-")
    rng = np.random.default_rng(0)
    cols = args.tensor_mib * MiB // 4 // 1024
    state = {f"layer.{i:03d}.weight": rng.standard_normal((1024, cols), dtype=np.float32)
             for i in range(args.tensors)}
    try:
        t = time.perf_counter()
        m = modelshard.push(state, "bench", catalog=uri, shard_size=args.shard_mib * MiB)
        print(f"pushed {m.total_size / MiB:.0f} MiB in {len(m.shards)} shards to {uri} in "
              f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
        del state
        rows = run(args, m, uri, cache_dir, fs)
    finally:
        fs.delete(root, recursive=True)
        shutil.rmtree(cache_dir, ignore_errors=True)
    print(f"\n{args.tensors} float32 tensors of {args.tensor_mib} MiB, {args.shard_mib} MiB "
          f"shards, medians of {args.runs} runs, {args.workers} workers\n")
    print("| measurement | modelshard | reference | ratio | target |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def run(args: argparse.Namespace, m, uri: str, cache_dir: str, fs: HdfsFileSystem
        ) -> list[tuple[str, ...]]:
    rows = []
    names = sorted(m.tensors)
    # Partial loads: bytes read per byte needed, from HDFS through a counting wrapper.
    cat = Catalog(uri)
    cat.fs = counted = CountingFileSystem(cat.fs)
    for pct in (1, 10, 50):
        pick = random.Random(pct).sample(names, max(1, len(names) * pct // 100))
        needed = sum(m.tensors[n].nbytes for n in pick)
        reads, times = [], []
        for _ in range(args.runs):
            with modelshard.open("bench", catalog=cat, workers=args.workers,
                                 record_stats=False) as h:
                counted.reset()  # the manifest read by open() is not the tensors' cost
                t = time.perf_counter()
                h.load_state_dict(pick)
                times.append(time.perf_counter() - t)
                reads.append(counted.bytes_read)
        read = statistics.median(reads)
        rows.append((f"partial load {pct}% ({len(pick)} tensors): bytes read / needed",
                     f"{read / MiB:.1f} MiB in {statistics.median(times):.2f} s",
                     f"{needed / MiB:.1f} MiB", f"{read / needed:.4f}", "<= 1.05"))

    # Warm cache vs safe_open on the same files.
    modelshard.preload("bench", catalog=uri, cache_dir=cache_dir, workers=args.workers)
    entries = [os.path.join(cache_dir, "sha256", s.sha256[:2], s.sha256) for s in m.shards]

    def ours() -> int:
        return touch(modelshard.load("bench", catalog=uri, cache_dir=cache_dir,
                                     workers=args.workers, record_stats=False))

    def theirs() -> int:
        out = {}
        for path in entries:
            with safe_open(path, framework="numpy") as f:
                out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 - no iter
        return touch(out)

    a, b = side_by_side(ours, theirs, args.runs)
    size = m.total_size / MiB
    rows.append(("warm cache full load (MiB/s): modelshard vs safetensors.safe_open",
                 f"{size / a:.0f} ({a:.2f} s)", f"{size / b:.0f} ({b:.2f} s)", f"{b / a:.2f}x",
                 ">= 0.8x"))

    # Cold load from HDFS vs a raw read of the same shards.
    vdir = Catalog(uri).version_dir("bench", m.version)
    shards = [(f"{vdir}/{s.path}", s.size) for s in m.shards]

    def cold() -> int:
        return len(modelshard.load("bench", catalog=uri, workers=args.workers,
                                   record_stats=False))

    def raw() -> int:
        with ThreadPoolExecutor(args.workers) as pool:
            return sum(len(b) for b in pool.map(lambda s: fs.read_range(s[0], 0, s[1]), shards))

    a, b = side_by_side(cold, raw, args.runs)
    total = sum(s for _, s in shards) / MiB
    rows.append(("cold load from HDFS (MiB/s): modelshard.load vs raw read_range of the shards",
                 f"{size / a:.0f} ({a:.2f} s)", f"{total / b:.0f} ({b:.2f} s)", f"{b / a:.2f}x",
                 ">= 0.9x"))

    def unverified() -> int:
        return len(modelshard.load("bench", catalog=uri, workers=args.workers,
                                   record_stats=False, unverified_for_benchmarks=True))

    a, b = side_by_side(cold, unverified, args.runs)
    rows.append(("cold load from HDFS (MiB/s): verified (default) vs unverified_for_benchmarks",
                 f"{size / a:.0f} ({a:.2f} s)", f"{size / b:.0f} ({b:.2f} s)", f"{b / a:.2f}x",
                 ">= 0.9x"))

    # Parallel shard fetch vs one at a time.
    def serial() -> int:
        return len(modelshard.load("bench", catalog=uri, workers=1, record_stats=False))

    a, b = side_by_side(cold, serial, args.runs)
    rows.append((f"cold load from HDFS (MiB/s): {args.workers} shards at once vs one at a time",
                 f"{size / a:.0f} ({a:.2f} s)", f"{size / b:.0f} ({b:.2f} s)", f"{b / a:.2f}x",
                 "> 1x"))
    return rows


if __name__ == "__main__":
    main()
