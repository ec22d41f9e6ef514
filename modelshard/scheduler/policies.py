"""Eviction policies shared by the live :class:`~.ShardScheduler` and the trace simulator.

A policy only orders the resident shards; the caller decides which of them may go (a shard
in use or pinned never does) and does the byte accounting. Both users drive the same policy
objects, so the benchmark measures exactly the code that runs.

>>> p = make_policy("lru")
>>> p.admit("a", size=10, cost=1.0); p.admit("b", size=10, cost=1.0); p.touch("a")
>>> next(p.victims())
'b'
"""

from __future__ import annotations

import abc
from collections import OrderedDict
from collections.abc import Hashable, Iterator

from modelshard.errors import UsageError

POLICIES = ("lru", "gdsf")


class EvictionPolicy(abc.ABC):
    """Orders resident shards from the best victim to the worst."""

    name: str = ""

    @abc.abstractmethod
    def admit(self, key: Hashable, *, size: int, cost: float) -> None:
        """``key`` became resident; ``cost`` is what fetching it again would cost (seconds)."""

    @abc.abstractmethod
    def touch(self, key: Hashable) -> None:
        """A resident ``key`` was used again (a hit)."""

    @abc.abstractmethod
    def remove(self, key: Hashable, *, evicted: bool) -> None:
        """``key`` left memory: ``evicted`` to make room, else released (idle, dropped)."""

    @abc.abstractmethod
    def victims(self) -> Iterator[Hashable]:
        """Resident keys, best victim first. Do not admit or remove while iterating."""


class LruPolicy(EvictionPolicy):
    """Least recently used first."""

    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def admit(self, key: Hashable, *, size: int, cost: float) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key: Hashable) -> None:
        self._order.move_to_end(key)

    def remove(self, key: Hashable, *, evicted: bool) -> None:
        self._order.pop(key, None)

    def victims(self) -> Iterator[Hashable]:
        return iter(self._order)


class GdsfPolicy(EvictionPolicy):
    """Cost-aware eviction: the lowest ``clock_weight * clock + frequency * cost / size`` goes.

    ``cost`` is the time to fetch the shard again (latency + size / bandwidth), so ``cost /
    size`` favours small shards only as much as their fixed latency makes them dear per byte.
    Use counts are kept for evicted shards too (one number per shard of the model), so a
    popular shard pushed out by a burst comes back with its history.

    Two ways to forget old popularity:

    * ``clock_weight``: the clock rises to the priority of each evicted shard; at 1.0 this is
      textbook Greedy-Dual-Size-Frequency. It also makes a shard not used for a few misses
      look cheaper than a newcomer, i.e. it adds recency, which on independent requests
      costs bytes;
    * ``halve_every``: all counts are halved each time the requests since the last halving
      reach ``halve_every`` times the number of shards seen (the TinyLFU reset), which
      forgets at a pace set by the model's size instead of by the misses.

    The defaults (no clock; halving after twice as many requests as shards seen) are what
    ``bench/bench_scheduler.py --tune`` picks on its tuning seeds, over steady and shifting
    Zipf traces: cost-aware LFU with ageing.
    """

    name = "gdsf"

    def __init__(self, *, clock_weight: float = 0.0, halve_every: float | None = 2.0) -> None:
        if clock_weight < 0 or (halve_every is not None and halve_every <= 0):
            raise UsageError("clock_weight must be >= 0 and halve_every > 0 (or None)")
        self.clock_weight = clock_weight
        self.halve_every = halve_every
        self.clock = 0.0
        self._since_halving = 0
        self._freq: dict[Hashable, float] = {}
        self._weight: dict[Hashable, float] = {}  # cost / size of resident keys
        self._prio: dict[Hashable, float] = {}

    def admit(self, key: Hashable, *, size: int, cost: float) -> None:
        self._weight[key] = cost / max(size, 1)
        self._use(key)

    def touch(self, key: Hashable) -> None:
        self._use(key)

    def _use(self, key: Hashable) -> None:
        self._freq[key] = self._freq.get(key, 0.0) + 1.0
        self._prio[key] = self._priority(key)
        self._since_halving += 1
        if self.halve_every is not None and self._since_halving >= self.halve_every * len(self._freq):
            self._since_halving = 0
            for k in self._freq:
                self._freq[k] /= 2
            for k in self._prio:
                self._prio[k] = self._priority(k)

    def _priority(self, key: Hashable) -> float:
        return self.clock_weight * self.clock + self._freq[key] * self._weight[key]

    def remove(self, key: Hashable, *, evicted: bool) -> None:
        prio = self._prio.pop(key, None)
        self._weight.pop(key, None)
        if evicted and prio is not None:
            self.clock = max(self.clock, prio)

    def victims(self) -> Iterator[Hashable]:
        # Sorting the resident shards (tens to thousands) per eviction is cheap next to a fetch.
        return iter(sorted(self._prio, key=self._prio.__getitem__))


def make_policy(policy: str | EvictionPolicy) -> EvictionPolicy:
    """A fresh policy from its name (``"lru"``, ``"gdsf"``), or ``policy`` itself."""
    if isinstance(policy, EvictionPolicy):
        return policy
    if policy == "lru":
        return LruPolicy()
    if policy == "gdsf":
        return GdsfPolicy()
    raise UsageError(
        f"policy={policy!r}: unknown eviction policy; use one of {', '.join(POLICIES)}"
    )
