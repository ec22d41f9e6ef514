"""Trace replay, the Belady references and the Zipf trace generator."""

from __future__ import annotations

import importlib.util
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from modelshard.errors import UsageError
from modelshard.scheduler import (
    GdsfPolicy,
    PopularityOraclePolicy,
    model_like_sizes,
    offline_best,
    simulate,
    zipf_popularity,
    zipf_trace,
)


def test_small_trace_by_hand():
    sizes = {0: 4, 1: 4, 2: 4}
    trace = [0, 1, 2, 0, 1, 2]
    assert simulate(trace, sizes, budget_bytes=8, policy="lru").bytes_fetched == 24
    belady = simulate(trace, sizes, budget_bytes=8, policy="belady")
    assert (belady.bytes_fetched, belady.misses, belady.hits, belady.evictions) == (16, 4, 2, 2)
    assert belady.fetch_seconds == pytest.approx(4 * 0.01 + 16 / 200e6)


def test_belady_is_optimal_for_equal_sizes():
    rng = random.Random(3)
    sizes = dict.fromkeys(range(12), 100)
    for seed in range(5):
        trace = [rng.randrange(12) for _ in range(300)]
        best = simulate(trace, sizes, budget_bytes=400, policy="belady").bytes_fetched
        for policy in ("lru", "gdsf", "belady-size"):
            assert best <= simulate(trace, sizes, budget_bytes=400, policy=policy).bytes_fetched, seed


def test_everything_fits_fetches_each_shard_once():
    sizes = model_like_sizes(16, full_bytes=1000, seed=1)
    trace = zipf_trace(16, 500, seed=1)
    once = sum(sizes[k] for k in set(trace))
    for policy in ("lru", "gdsf", "belady", "belady-size"):
        assert simulate(trace, sizes, budget_bytes=sum(sizes.values()), policy=policy).bytes_fetched == once


def test_gdsf_fetches_fewer_bytes_than_lru_on_zipf():
    sizes = model_like_sizes(64, full_bytes=128 << 10, seed=0)
    budget = sum(sizes.values()) // 4
    trace = zipf_trace(64, 4000, alpha=1.0, seed=0)
    lru = simulate(trace, sizes, budget_bytes=budget, policy="lru").bytes_fetched
    gdsf = simulate(trace, sizes, budget_bytes=budget, policy="gdsf").bytes_fetched
    best = offline_best(trace, sizes, budget_bytes=budget).bytes_fetched
    assert best < gdsf < lru


def test_zipf_trace_follows_the_law():
    trace = zipf_trace(50, 100_000, alpha=1.0, seed=7)
    counts = sorted(Counter(trace).values(), reverse=True)
    harmonic = sum(1 / r for r in range(1, 51))
    assert counts[0] / len(trace) == pytest.approx(1 / harmonic, rel=0.05)
    assert counts[1] / counts[0] == pytest.approx(0.5, rel=0.1)
    assert zipf_trace(50, 100, seed=7) == zipf_trace(50, 100, seed=7)


def test_model_like_sizes_mix_small_and_full_shards():
    sizes = model_like_sizes(400, full_bytes=1 << 20, seed=0)
    small = [s for s in sizes.values() if s < (1 << 18) + 1]
    assert 0.15 < len(small) / 400 < 0.35
    assert all((1 << 20) * 0.85 <= s <= 1 << 20 for s in sizes.values() if s > 1 << 18)


def test_unknown_policy():
    with pytest.raises(UsageError, match="unknown; use one of lru, gdsf, belady, belady-size"):
        simulate([0], {0: 1}, budget_bytes=1, policy="arc")


def test_cost_aware_policy_ages_by_halving_counts():
    p = GdsfPolicy(halve_every=1.0)  # halve once the requests reach the number of shards seen
    p.admit("old", size=10, cost=1.0)  # 1 use, 1 shard seen: halved at once
    for _ in range(3):
        p.touch("old")
    p.admit("new", size=10, cost=1.0)
    for _ in range(4):
        p.touch("new")
    assert list(p.victims()) == ["old", "new"]
    textbook = GdsfPolicy(clock_weight=1.0, halve_every=None)
    textbook.admit("a", size=10, cost=1.0)
    textbook.remove("a", evicted=True)
    assert textbook.clock == pytest.approx(0.1)
    with pytest.raises(UsageError):
        GdsfPolicy(halve_every=0)


def test_oracle_policy_knows_the_popularity():
    sizes = dict.fromkeys(range(8), 10)
    popularity = dict(enumerate(zipf_popularity(8, seed=2)))
    trace = zipf_trace(8, 2000, seed=2)
    oracle = simulate(trace, sizes, budget_bytes=30, policy=PopularityOraclePolicy(popularity))
    assert oracle.bytes_fetched < simulate(trace, sizes, budget_bytes=30, policy="lru").bytes_fetched


def test_benchmark_script_runs(tmp_path, capsys, monkeypatch):
    path = Path(__file__).parents[2] / "bench" / "bench_scheduler.py"
    spec = importlib.util.spec_from_file_location("bench_scheduler", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_scheduler", bench)  # dataclasses look it up
    spec.loader.exec_module(bench)
    bench.main(["--shards", "16", "--requests", "300", "--seeds", "2", "--out", str(tmp_path)])
    text = (tmp_path / "scheduler.md").read_text()
    assert "| lru |" in text and "| offline (Belady) | " in text and "cost-aware" in text
    assert "wrote" in capsys.readouterr().out
