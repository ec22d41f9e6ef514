"""What checking every byte costs (issue 9), on this machine's disk, side by side in one run.

Pushes synthetic float32 models (``--sizes`` MiB each, 32 MiB shards by default) to a
throwaway local catalog and prints one markdown table; each timing is the median of
``--runs`` runs, the two sides of a comparison run alternately in one process, the page
cache warm (the files were just written):

* context, no default load reads so: load by range (memory maps hidden, the code path of
  HDFS without HDFS's costs): verified default vs the ``unverified_for_benchmarks``
  opt-out, and vs raw ``pread`` of the same shards;
* load memory-mapped from a local catalog, verified vs the opt-out, delivering the same
  thing: tensors whose every byte has been read once (the check is that read; the opt-out
  reads nothing, so its side reads every byte once with the same number of threads); and,
  for context, with the opt-out's tensors left unread (one byte per page touched on both
  sides), and with every byte then read once more on both sides (a first pass of a user);
* warm preload cache vs ``safetensors.safe_open`` on the same cache files;
* context: pull into new memory, verified, vs a plain read loop of the same shards into one
  reused buffer (the issue's pull target is on HDFS: bench_store.py);
* push vs ``torch.save`` of the same tensors as one file.

    .venv/bin/python bench/bench_verified.py                      # 48 MiB and 1 GiB
    .venv/bin/python bench/bench_verified.py --sizes 48 --runs 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

import modelshard  # noqa: E402 - runs from a checkout without installing
from bench.bench_loading import side_by_side, touch  # noqa: E402
from modelshard.catalog.catalog import Catalog  # noqa: E402
from modelshard.fs import LocalFileSystem  # noqa: E402

MiB = 1 << 20


class RangeOnly(LocalFileSystem):
    """The local disk read by range only, as a remote filesystem is."""

    def local_path(self, path: str) -> str | None:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="48,1024", help="model sizes in MiB, comma-separated")
    ap.add_argument("--shard-mib", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        tmp = tempfile.mkdtemp(prefix="modelshard-bench-verified-")
        try:
            rows += run(args, size, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nfloat32 tensors of 4 MiB, {args.shard_mib} MiB shards, medians of {args.runs} "
          f"runs, {args.workers} workers, {os.cpu_count()} cores, local disk (page cache warm)\n")
    print("| model | measurement | modelshard | reference | ratio | target |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def run(args: argparse.Namespace, size_mib: int, tmp: str) -> list[tuple[str, ...]]:
    rng = np.random.default_rng(0)
    state = {f"layer.{i:03d}.weight": rng.standard_normal((1024, 1024), dtype=np.float32)
             for i in range(max(1, size_mib // 4))}
    root = os.path.join(tmp, "cat")
    model = f"{size_mib} MiB"
    rows = []

    def push() -> object:
        shutil.rmtree(root, ignore_errors=True)
        return modelshard.push(state, "b", catalog=root, shard_size=args.shard_mib * MiB)

    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    a, b = side_by_side(push, lambda: torch.save(tensors, os.path.join(tmp, "model.pt")),
                        args.runs)
    rows.append((model, "push (MiB/s) vs torch.save of the same tensors", *_rate(size_mib, a, b),
                 "-"))
    m = push()
    ranged = Catalog(root)
    ranged.fs = RangeOnly()
    vdir = ranged.version_dir("b", m.version)
    shards = [(os.path.join(vdir, s.path), s.size) for s in m.shards]

    def load(catalog: str | Catalog, **kw: object):
        return lambda: touch(modelshard.load("b", catalog=catalog, workers=args.workers,
                                             record_stats=False, **kw))

    def raw() -> int:
        return sum(len(ranged.fs.read_range(p, 0, n)) for p, n in shards)

    a, b = side_by_side(load(ranged), load(ranged, unverified_for_benchmarks=True), args.runs)
    rows.append((model, "context: load by range: verified vs unverified_for_benchmarks",
                 *_rate(size_mib, a, b), "-"))
    a, b = side_by_side(load(ranged), raw, args.runs)
    rows.append((model, "context: load by range: verified vs raw read of the shards, one "
                 "thread", *_rate(size_mib, a, b), "-"))
    def read_all(arrays: dict) -> int:
        with ThreadPoolExecutor(args.workers) as pool:
            return sum(pool.map(read_once, arrays.values()))

    def mapped(*, unverified: bool, then: object) -> object:
        return lambda: then(modelshard.load("b", catalog=root, workers=args.workers,
                                            record_stats=False,
                                            unverified_for_benchmarks=unverified))

    a, b = side_by_side(mapped(unverified=False, then=touch),
                        mapped(unverified=True, then=read_all), args.runs)
    rows.append((model, "load memory-mapped, every byte read once: verified (the check reads "
                 "it) vs unverified_for_benchmarks + one plain read", *_rate(size_mib, a, b),
                 ">= 0.9x"))
    a, b = side_by_side(mapped(unverified=False, then=touch),
                        mapped(unverified=True, then=touch), args.runs)
    rows.append((model, "context: load memory-mapped, verified vs unverified_for_benchmarks "
                 "left unread (one byte per page touched)", *_rate(size_mib, a, b), "-"))
    a, b = side_by_side(mapped(unverified=False, then=read_all),
                        mapped(unverified=True, then=read_all), args.runs)
    rows.append((model, "context: load memory-mapped then read every byte, verified vs "
                 "unverified_for_benchmarks", *_rate(size_mib, a, b), "-"))

    cache_dir = os.path.join(tmp, "cache")
    modelshard.preload("b", catalog=root, cache_dir=cache_dir)
    entries = [os.path.join(cache_dir, "sha256", s.sha256[:2], s.sha256) for s in m.shards]

    def theirs() -> int:
        out = {}
        for path in entries:
            with safe_open(path, framework="numpy") as f:
                out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 - no iter
        return touch(out)

    a, b = side_by_side(load(root, cache_dir=cache_dir), theirs, args.runs)
    rows.append((model, "warm cache load vs safetensors.safe_open of the cache files",
                 *_rate(size_mib, a, b), ">= 1.0x"))

    def read_loop() -> int:
        n = 0
        for p, _ in shards:
            with open(p, "rb") as f:
                while chunk := f.read(8 * MiB):
                    n += len(chunk)
        return n

    a, b = side_by_side(lambda: modelshard.pull("b", catalog=root, workers=1), read_loop,
                        args.runs)
    rows.append((model, "context: pull into new memory, verified, one thread, vs a plain read "
                 "loop of one reused buffer", *_rate(size_mib, a, b), "-"))
    return rows


def read_once(a: np.ndarray) -> int:
    """Read every byte of ``a`` once (a plain read: no check), in whole words if it can."""
    raw = a.reshape(-1).view(np.uint8)
    return int((raw.view(np.uint64) if raw.nbytes % 8 == 0 else raw).sum())


def _rate(size_mib: int, ours: float, theirs: float) -> tuple[str, str, str]:
    return (f"{size_mib / ours:.0f} MiB/s ({ours:.3f} s)",
            f"{size_mib / theirs:.0f} MiB/s ({theirs:.3f} s)", f"{theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
