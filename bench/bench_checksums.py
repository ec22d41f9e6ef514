"""Checksum speed on this machine: the candidates for the per-chunk checksums (issue 9).

    python bench/bench_checksums.py [--mib 256] [--chunk-mib 1] [--repeat 5]

Each function hashes the same random buffer in chunks of ``--chunk-mib`` (each chunk its own
checksum, as a verified range read does), one thread; prints the median GB/s of
``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from collections.abc import Callable

import blake3
import crc32c
import xxhash

CANDIDATES: dict[str, Callable[[memoryview], object]] = {
    "crc32c (crc32c)": crc32c.crc32c,
    "xxh3_128 (xxhash)": xxhash.xxh3_128_intdigest,
    "blake3": lambda b: blake3.blake3(b).digest(),
    "sha256 (hashlib)": lambda b: hashlib.sha256(b).digest(),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--chunk-mib", type=float, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    data = memoryview(os.urandom(args.mib << 20))
    chunk = int(args.chunk_mib * (1 << 20))
    print(f"{args.mib} MiB in {args.chunk_mib} MiB chunks, {os.cpu_count()} cores, median of "
          f"{args.repeat}")
    for name, fn in CANDIDATES.items():
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            for i in range(0, len(data), chunk):
                fn(data[i:i + chunk])
            times.append(time.perf_counter() - t)
        print(f"  {name:24s} {len(data) / statistics.median(times) / 1e9:6.2f} GB/s")


if __name__ == "__main__":
    main()
