"""Trace replay: how many bytes a policy fetches for a request trace under a budget.

:func:`simulate` drives a real :class:`~.ShardScheduler` (no prefetch, no threads) with a
fetcher that allocates nothing, so the figures come from the code that runs in production.

The offline reference is Belady's rule for variable sizes, which has no exact polynomial
optimum (it is NP-hard), only approximations:

* ``"belady"``: evict the shard whose next use is farthest (ties: the larger). Keeping a
  shard of size ``s`` for ``d`` more requests costs ``s * d`` byte-requests of space and
  saves ``s`` fetched bytes: the same ``1 / d`` for every size, so plain farthest-next-use
  is the natural rule when the objective is *bytes* fetched.
* ``"belady-size"``: evict the largest ``size * distance to next use``: the rule for the
  *number* of misses, which spends space on many small shards.

Both are heuristics, not lower bounds; :func:`offline_best` takes the better of the two.

>>> sizes = {0: 4, 1: 4, 2: 4}
>>> simulate([0, 1, 2, 0, 1, 2], sizes, budget_bytes=8, policy="lru").bytes_fetched
24
>>> simulate([0, 1, 2, 0, 1, 2], sizes, budget_bytes=8, policy="belady").bytes_fetched
16
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from modelshard.errors import UsageError
from modelshard.scheduler.policies import POLICIES, EvictionPolicy, make_policy
from modelshard.scheduler.scheduler import ShardScheduler

OFFLINE = ("belady", "belady-size")


@dataclass(frozen=True)
class SimResult:
    policy: str
    bytes_fetched: int
    fetch_seconds: float  # modelled: misses * latency + bytes / bandwidth
    hits: int
    misses: int
    evictions: int


class BeladyPolicy(EvictionPolicy):
    """Offline eviction with knowledge of the whole ``trace`` (see the module docstring).

    Relies on the scheduler calling exactly one of :meth:`admit` / :meth:`touch` per
    request, in trace order, which a single-threaded replay without prefetch does.
    """

    def __init__(self, trace: Sequence[Hashable], *, weigh_by_size: bool = False) -> None:
        self.name = "belady-size" if weigh_by_size else "belady"
        self.weigh_by_size = weigh_by_size
        self._next = _next_uses(trace)
        self._t = 0  # index of the request being served
        self._next_use: dict[Hashable, float] = {}
        self._size: dict[Hashable, int] = {}

    def admit(self, key: Hashable, *, size: int, cost: float) -> None:
        self._size[key] = size
        self._advance(key)

    def touch(self, key: Hashable) -> None:
        self._advance(key)

    def _advance(self, key: Hashable) -> None:
        self._next_use[key] = self._next[self._t]
        self._t += 1

    def remove(self, key: Hashable, *, evicted: bool) -> None:
        self._next_use.pop(key, None)
        self._size.pop(key, None)

    def victims(self) -> Iterator[Hashable]:
        def badness(k: Hashable) -> tuple[float, int]:
            distance = self._next_use[k] - self._t
            score = distance * self._size[k] if self.weigh_by_size else distance
            return (score, self._size[k])

        return iter(sorted(self._next_use, key=badness, reverse=True))


def _next_uses(trace: Sequence[Hashable]) -> list[float]:
    """For each request, the index of the next request of the same shard (inf if none)."""
    nxt: list[float] = [math.inf] * len(trace)
    seen: dict[Hashable, int] = {}
    for i in range(len(trace) - 1, -1, -1):
        nxt[i] = seen.get(trace[i], math.inf)
        seen[trace[i]] = i
    return nxt


def simulate(
    trace: Sequence[Hashable],
    sizes: Mapping[Hashable, int],
    *,
    budget_bytes: int,
    policy: str | EvictionPolicy = "gdsf",
    latency_s: float = 0.01,
    bandwidth_bytes_per_s: float = 200e6,
) -> SimResult:
    """Replay ``trace`` (shard keys, in request order) and count what was fetched.

    ``policy``: ``"lru"``, ``"gdsf"``, ``"belady"``, ``"belady-size"`` or a policy object.
    """
    if isinstance(policy, str) and policy in OFFLINE:
        chosen: EvictionPolicy = BeladyPolicy(trace, weigh_by_size=policy == "belady-size")
    elif isinstance(policy, str) and policy not in POLICIES:
        raise UsageError(
            f"policy={policy!r}: unknown; use one of {', '.join(POLICIES + OFFLINE)}"
        )
    else:
        chosen = make_policy(policy)
    zeros = memoryview(bytes(max(sizes.values(), default=0)))
    sched = ShardScheduler(
        lambda k: zeros[: sizes[k]],
        sizes,
        budget_bytes=budget_bytes,
        policy=chosen,
        latency_s=latency_s,
        bandwidth_bytes_per_s=bandwidth_bytes_per_s,
        prefetch_depth=0,
        wait_timeout_s=0,
    )
    for key in trace:
        with sched.acquire(key):
            pass
    st = sched.stats()
    return SimResult(
        policy=chosen.name,
        bytes_fetched=st.bytes_fetched,
        fetch_seconds=st.misses * latency_s + st.bytes_fetched / bandwidth_bytes_per_s,
        hits=st.hits,
        misses=st.misses,
        evictions=st.evictions,
    )


def offline_best(
    trace: Sequence[Hashable], sizes: Mapping[Hashable, int], *, budget_bytes: int
) -> SimResult:
    """The fewer bytes fetched of the two Belady approximations."""
    return min(
        (simulate(trace, sizes, budget_bytes=budget_bytes, policy=p) for p in OFFLINE),
        key=lambda r: r.bytes_fetched,
    )


def zipf_popularity(n_shards: int, *, alpha: float = 1.0, seed: int = 0) -> np.ndarray:
    """Request probability of shards ``0 .. n_shards-1``: the r-th most popular has
    probability proportional to ``1 / r**alpha``; which shard gets which rank is random, so
    popularity follows neither the shard index nor the size.

    >>> zipf_popularity(4, seed=0).sum().round(6)
    np.float64(1.0)
    """
    if n_shards <= 0 or alpha < 0:
        raise UsageError("Zipf popularity needs n_shards > 0 and alpha >= 0")
    by_rank = 1.0 / np.arange(1, n_shards + 1) ** alpha
    p = np.empty(n_shards)
    p[np.random.default_rng(seed).permutation(n_shards)] = by_rank / by_rank.sum()
    return p


def zipf_trace(n_shards: int, n_requests: int, *, alpha: float = 1.0, seed: int = 0) -> list[int]:
    """``n_requests`` independent requests drawn from :func:`zipf_popularity` (same seed).

    >>> len(zipf_trace(10, 100, seed=1))
    100
    """
    if n_requests < 0:
        raise UsageError(f"n_requests={n_requests}: must be zero or more")
    p = zipf_popularity(n_shards, alpha=alpha, seed=seed)
    return [int(x) for x in np.random.default_rng([seed, 1]).choice(n_shards, size=n_requests, p=p)]


class PopularityOraclePolicy(EvictionPolicy):
    """Evicts the shard with the lowest true request probability: the best an online policy
    can do on independent requests, used as the reachable bound in the benchmark.

    >>> p = PopularityOraclePolicy({"a": 0.9, "b": 0.1}); p.admit("a", size=1, cost=0.0)
    >>> p.admit("b", size=1, cost=0.0); next(p.victims())
    'b'
    """

    name = "oracle-popularity"

    def __init__(self, popularity: Mapping[Hashable, float]) -> None:
        self._popularity = popularity
        self._resident: set[Hashable] = set()

    def admit(self, key: Hashable, *, size: int, cost: float) -> None:
        self._resident.add(key)

    def touch(self, key: Hashable) -> None:
        """Known popularity does not change with use."""

    def remove(self, key: Hashable, *, evicted: bool) -> None:
        self._resident.discard(key)

    def victims(self) -> Iterator[Hashable]:
        return iter(sorted(self._resident, key=self._popularity.__getitem__))


def model_like_sizes(
    n_shards: int, *, full_bytes: int = 128 << 20, small_fraction: float = 0.25, seed: int = 0
) -> dict[int, int]:
    """Shard sizes like a sharded checkpoint: mostly "full" shards just under
    ``full_bytes`` (balanced packing leaves some slack), and a ``small_fraction`` of small
    ones (norms, biases, a tail shard) from 1/128 to 1/4 of ``full_bytes``, log-uniform.

    >>> sizes = model_like_sizes(8, full_bytes=1024, seed=0); max(sizes.values()) <= 1024
    True
    """
    rng = np.random.default_rng(seed)
    sizes = {}
    for i in range(n_shards):
        if rng.random() < small_fraction:
            sizes[i] = int(full_bytes * 2 ** rng.uniform(-7, -2))
        else:
            sizes[i] = int(full_bytes * rng.uniform(0.85, 1.0))
    return sizes
