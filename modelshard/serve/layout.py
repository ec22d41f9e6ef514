"""How a served version is held in memory: the units of the budget and where each tensor is.

A forward pass needs each tensor in one piece, but a balanced shard may hold part of a
tensor split across shards. Joining such a tensor for every batch cost more than the rest
of a batch for the larger models of the serving benchmark (docs/benchmarks.md, issue 14),
so it is held joined instead. The units of a version, each fetched, counted against the
budget and evicted as a whole:

* a shard that no split tensor crosses: the shard itself (:class:`ShardRef`), mapped or read
  as stored, its tensors views of it (no copy);
* a tensor split across shards: :class:`PartRef`, its pieces copied into one buffer;
* the other tensors of a shard that a split tensor crosses: :class:`PartRef`, copied out
  together, so that no byte is held twice (the split tensor's bytes are in its own unit).

Every byte copied into a part comes from a shard checked whole as fetched, whose header
has been checked against the manifest. With a preload cache, a part copied once is kept
there and mapped next time (:meth:`ModelPool._keep <modelshard.serve.pool.ModelPool._keep>`).

>>> layout = Layout.of(manifest, refs, "bert@3")                       # doctest: +SKIP
>>> layout.where["0.weight"]                                           # doctest: +SKIP
('shard-00000.safetensors', 88, 4184)
"""

from __future__ import annotations

from dataclasses import dataclass

from modelshard.cache.preload import ShardRef
from modelshard.catalog.manifest import Manifest

_ALIGN = 64  # tensors copied into a part start at multiples of this (torch views need alignment)


@dataclass(frozen=True)
class PartRef:
    """Tensors of version ``model`` held copied out of its shards, as one unit: ``name`` is
    ``tensor:<tensor>`` (a split tensor, joined) or ``shard:<path>`` (the other tensors of a
    shard that a split tensor crosses)."""

    model: str
    name: str
    size: int


@dataclass(frozen=True)
class Span:
    """Bytes ``begin..end`` of a shard, copied to ``at`` in a part."""

    begin: int
    end: int
    at: int


@dataclass(frozen=True)
class Layout:
    """``units``: label -> unit (the shard path for a :class:`ShardRef`, ``PartRef.name``
    for a part); ``where``: tensor -> (label, begin, end) in its unit's buffer; ``plans``:
    part label -> {shard path: the spans copied from it}."""

    units: dict[str, ShardRef | PartRef]
    where: dict[str, tuple[str, int, int]]
    plans: dict[str, dict[str, list[Span]]]

    @property
    def nbytes(self) -> int:
        return sum(u.size for u in self.units.values())

    @classmethod
    def of(cls, manifest: Manifest, refs: dict[str, ShardRef], model: str) -> Layout:
        """The layout of a version whose shards are ``refs`` (by the manifest's shard path)."""
        crossed = {p.shard for t in manifest.tensors.values() if len(t.pieces) > 1 for p in t.pieces}
        units: dict[str, ShardRef | PartRef] = {}
        where: dict[str, tuple[str, int, int]] = {}
        plans: dict[str, dict[str, list[Span]]] = {}
        ends: dict[str, int] = {}  # part label -> its bytes so far
        for name, t in manifest.tensors.items():
            if len(t.pieces) == 1 and t.pieces[0].shard not in crossed:
                p = t.pieces[0]
                units[p.shard] = refs[p.shard]
                where[name] = (p.shard, p.begin, p.end)
                continue
            label = f"tensor:{name}" if len(t.pieces) > 1 else f"shard:{t.pieces[0].shard}"
            plan = plans.setdefault(label, {})
            at = start = -(-ends.get(label, 0) // _ALIGN) * _ALIGN
            for p in t.pieces:
                plan.setdefault(p.shard, []).append(Span(p.begin, p.end, at))
                at += p.end - p.begin
            ends[label] = at
            where[name] = (label, start, at)
        for label, size in ends.items():
            units[label] = PartRef(model, label, size)
        return cls(units, where, plans)
