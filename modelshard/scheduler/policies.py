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
    """Greedy-Dual-Size-Frequency: the lowest ``clock + frequency * cost / size`` goes first.

    ``cost`` is the time to fetch the shard again (latency + size / bandwidth), so ``cost /
    size`` favours small shards only as much as their fixed latency makes them dear per byte.
    The clock rises to the priority of each evicted shard, which ages out shards that were
    popular once (LFU with ageing).

    ``remember=True`` keeps the use count of shards after they are evicted (a few bytes per
    shard of the model), so a popular shard that was pushed out by a burst comes back with
    its history instead of starting again at 1: closer to perfect LFU, the best online
    policy for independent requests.
    """

    name = "gdsf"

    def __init__(self, *, remember: bool = True) -> None:
        self.remember = remember
        self.clock = 0.0
        self._freq: dict[Hashable, int] = {}
        self._weight: dict[Hashable, float] = {}  # cost / size of resident keys
        self._prio: dict[Hashable, float] = {}

    def admit(self, key: Hashable, *, size: int, cost: float) -> None:
        self._freq[key] = self._freq.get(key, 0) + 1
        self._weight[key] = cost / max(size, 1)
        self._prio[key] = self.clock + self._freq[key] * self._weight[key]

    def touch(self, key: Hashable) -> None:
        self._freq[key] += 1
        self._prio[key] = self.clock + self._freq[key] * self._weight[key]

    def remove(self, key: Hashable, *, evicted: bool) -> None:
        prio = self._prio.pop(key, None)
        self._weight.pop(key, None)
        if evicted and prio is not None:
            self.clock = max(self.clock, prio)
        if not self.remember:
            self._freq.pop(key, None)

    def victims(self) -> Iterator[Hashable]:
        # Sorting the resident shards (tens to thousands) per eviction is cheap next to a fetch.
        return iter(sorted(self._prio, key=self._prio.__getitem__))

    def priority(self, key: Hashable) -> float:
        return self._prio[key]


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
