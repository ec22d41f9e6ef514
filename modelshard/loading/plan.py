"""What to read: the byte ranges of the shards that hold a tensor, or some of its rows.

>>> from modelshard.catalog.manifest import PieceRecord, TensorRecord
>>> from modelshard.shards import dtypes
>>> t = TensorRecord(dtypes.get("F32", where=""), (4, 2), (
...     PieceRecord("shards/a.safetensors", "w[0:2]", 80, 96, (0, 2)),
...     PieceRecord("shards/b.safetensors", "w[2:4]", 80, 96, (2, 4))))
>>> segments(t, (1, 3))
((2, 2), [('shards/a.safetensors', 88, 96), ('shards/b.safetensors', 80, 88)])
"""

from __future__ import annotations

from modelshard.catalog.manifest import TensorRecord


def segments(t: TensorRecord, rows: tuple[int, int] | None
             ) -> tuple[tuple[int, ...], list[tuple[str, int, int]]]:
    """The result's shape and the (shard, begin, end) byte ranges holding it, in order;
    ``rows`` None: the whole tensor."""
    if rows is None and not t.is_split:
        p = t.pieces[0]
        return t.shape, [(p.shard, p.begin, p.end)]
    start, stop = rows if rows is not None else (0, t.shape[0])
    row_bytes = t.nbytes // t.shape[0] if t.shape[0] else 0
    out = []
    for p in t.pieces:
        r0, r1 = p.rows if p.rows is not None else (0, t.shape[0])
        lo, hi = max(r0, start), min(r1, stop)
        if lo < hi and row_bytes:
            out.append((p.shard, p.begin + (lo - r0) * row_bytes, p.begin + (hi - r0) * row_bytes))
    return (stop - start, *t.shape[1:]), out
