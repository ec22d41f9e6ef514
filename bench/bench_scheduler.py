"""Bytes fetched by the scheduler's eviction policies on Zipf request traces.

Replays traces through the real :class:`~modelshard.scheduler.ShardScheduler` (see
:mod:`modelshard.scheduler.sim`) and prints, per policy, the median over seeds of the bytes
fetched and of the modelled fetch time, relative to the offline reference (the better of the
two Belady approximations on each trace). Writes the table as markdown too.

Shard sizes are model-like (mostly ~128 MiB shards, a quarter small ones) scaled down by
``--scale`` so that a replay takes milliseconds; bytes are reported scaled back up.

    .venv/bin/python bench/bench_scheduler.py                 # the benchmark
    .venv/bin/python bench/bench_scheduler.py --tune          # how the policy defaults were chosen

``--tune`` grid-searches the cost-aware policy's two ageing knobs on *tuning* seeds (disjoint
from the evaluation seeds) over steady and shifting Zipf traces, scoring each setting by the
geometric mean of its ratio to the offline reference.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modelshard.scheduler import (  # noqa: E402 - runs from a checkout without installing
    GdsfPolicy,
    PopularityOraclePolicy,
    model_like_sizes,
    offline_best,
    simulate,
    zipf_popularity,
    zipf_trace,
)

MIB = 1 << 20
TUNING_SEEDS = range(1000, 1007)


@dataclass(frozen=True)
class Scenario:
    name: str
    alpha: float
    phases: int  # popularity reshuffled this many times over the trace (1: steady)


def make_trace(sc: Scenario, n_shards: int, n_requests: int, seed: int) -> tuple[list[int], dict]:
    """The trace and, for a steady trace, the true popularity of each shard."""
    trace: list[int] = []
    per_phase = n_requests // sc.phases
    for phase in range(sc.phases):
        trace += zipf_trace(n_shards, per_phase, alpha=sc.alpha, seed=seed * 1000 + phase)
    popularity = None
    if sc.phases == 1:
        p = zipf_popularity(n_shards, alpha=sc.alpha, seed=seed * 1000)
        popularity = {i: float(x) for i, x in enumerate(p)}
    return trace, popularity


def run_scenario(
    sc: Scenario, policies: dict[str, Callable[[dict | None], object]], args, seeds
) -> dict[str, dict[str, float]]:
    """Per policy: median bytes (scaled up), median modelled seconds, median ratio to offline."""
    latency = args.latency_ms / 1000
    bandwidth = args.bandwidth_mbps * 1e6 / args.scale  # the cost model follows the scaling
    rows: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        sizes = model_like_sizes(args.shards, full_bytes=args.full_mib * MIB // args.scale, seed=seed)
        budget = int(sum(sizes.values()) * args.budget_fraction)
        trace, popularity = make_trace(sc, args.shards, args.requests, seed)
        best = offline_best(trace, sizes, budget_bytes=budget)
        for name, make in policies.items():
            policy = make(popularity)
            if policy is None:
                continue
            r = best if name == "offline (Belady)" else simulate(
                trace, sizes, budget_bytes=budget, policy=policy,
                latency_s=latency, bandwidth_bytes_per_s=bandwidth,
            )
            seconds = r.misses * latency + r.bytes_fetched / bandwidth
            row = rows.setdefault(name, {"bytes": [], "seconds": [], "ratio": []})
            row["bytes"].append(r.bytes_fetched * args.scale)
            row["seconds"].append(seconds)
            row["ratio"].append(r.bytes_fetched / best.bytes_fetched)
    return {n: {k: statistics.median(v) for k, v in row.items()} for n, row in rows.items()}


def policies_for_benchmark() -> dict[str, Callable[[dict | None], object]]:
    return {
        "lru": lambda _: "lru",
        "cost-aware (gdsf, defaults)": lambda _: GdsfPolicy(),
        "gdsf, textbook (clock, no halving)": lambda _: GdsfPolicy(clock_weight=1.0, halve_every=None),
        "oracle popularity (online bound)": lambda pop: None if pop is None else PopularityOraclePolicy(pop),
        "offline (Belady)": lambda _: "belady",
    }


def benchmark(args) -> str:
    seeds = range(args.seeds)
    scenarios = [Scenario(f"Zipf alpha={args.alpha}, steady", args.alpha, 1),
                 Scenario(f"Zipf alpha={args.alpha}, popularity reshuffled 4 times", args.alpha, 4)]
    lines = [
        f"Scheduler policies: {args.shards} shards (model-like sizes, ~{args.full_mib} MiB and small "
        f"ones), budget {args.budget_fraction:g} of the model, {args.requests} requests, medians "
        f"over {args.seeds} seeds; fetch cost {args.latency_ms:g} ms + size / "
        f"{args.bandwidth_mbps:g} MB/s.",
        "",
    ]
    for sc in scenarios:
        t0 = time.perf_counter()
        table = run_scenario(sc, policies_for_benchmark(), args, seeds)
        lines += [f"**{sc.name}** ({time.perf_counter() - t0:.1f} s to replay)", "",
                  "| policy | bytes fetched (GiB) | x offline | modelled fetch time (s) |",
                  "|---|---:|---:|---:|"]
        for name, row in table.items():
            lines.append(f"| {name} | {row['bytes'] / (1 << 30):.1f} | {row['ratio']:.3f} | "
                         f"{row['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def tune(args) -> str:
    scenarios = [Scenario(f"a={a}", a, 1) for a in (0.8, 1.0, 1.2)]
    scenarios += [Scenario(f"a=1.0 x{p}", 1.0, p) for p in (4, 10)]
    grid = list(itertools.product((0.0, 0.5, 1.0), (None, 1.0, 2.0, 4.0, 8.0, 16.0)))
    policies = {f"clock_weight={c:g} halve_every={h}": (lambda _, c=c, h=h: GdsfPolicy(clock_weight=c, halve_every=h))
                for c, h in grid}
    per = {sc.name: run_scenario(sc, policies, args, TUNING_SEEDS) for sc in scenarios}
    scored = sorted(
        (math.exp(statistics.fmean(math.log(per[sc.name][name]["ratio"]) for sc in scenarios)), name)
        for name in policies
    )
    lines = [f"Tuning seeds {TUNING_SEEDS.start}..{TUNING_SEEDS.stop - 1}; x offline per scenario:", "",
             "| setting | " + " | ".join(sc.name for sc in scenarios) + " | geo-mean |",
             "|---|" + "---:|" * (len(scenarios) + 1)]
    for score, name in scored:
        cells = " | ".join(f"{per[sc.name][name]['ratio']:.3f}" for sc in scenarios)
        lines.append(f"| {name} | {cells} | {score:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=64)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--seeds", type=int, default=7)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--budget-fraction", type=float, default=0.25)
    ap.add_argument("--full-mib", type=int, default=128)
    ap.add_argument("--scale", type=int, default=1024, help="divide shard sizes by this for the replay")
    ap.add_argument("--latency-ms", type=float, default=10.0)
    ap.add_argument("--bandwidth-mbps", type=float, default=200.0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    ap.add_argument("--tune", action="store_true", help="grid-search the cost-aware policy on tuning seeds")
    args = ap.parse_args(argv)
    text = tune(args) if args.tune else benchmark(args)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "scheduler-tune.md" if args.tune else "scheduler.md")
    with open(path, "w") as f:
        f.write(text + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
