"""Shards in memory under a byte budget (:class:`ShardScheduler`), its eviction policies,
and the trace simulator used to compare them.

>>> sched = ShardScheduler(lambda k: bytes(4), {"a": 4, "b": 4}, budget_bytes=4, policy="lru")
>>> with sched.acquire("a") as buf:
...     len(buf)
4
"""

from __future__ import annotations

from modelshard.scheduler.policies import (
    POLICIES,
    EvictionPolicy,
    GdsfPolicy,
    LruPolicy,
    make_policy,
)
from modelshard.scheduler.scheduler import Fetched, SchedulerStats, ShardScheduler, fetch_shard
from modelshard.scheduler.sim import (
    BeladyPolicy,
    PopularityOraclePolicy,
    SimResult,
    model_like_sizes,
    offline_best,
    simulate,
    zipf_popularity,
    zipf_trace,
)

__all__ = [
    "POLICIES",
    "BeladyPolicy",
    "EvictionPolicy",
    "Fetched",
    "GdsfPolicy",
    "LruPolicy",
    "PopularityOraclePolicy",
    "SchedulerStats",
    "ShardScheduler",
    "SimResult",
    "fetch_shard",
    "make_policy",
    "model_like_sizes",
    "offline_best",
    "simulate",
    "zipf_popularity",
    "zipf_trace",
]
