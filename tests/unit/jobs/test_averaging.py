"""Averaging by streaming and the outer optimizer, without Hadoop: the pieces that mappers
write, the shard a reducer streams from them (checked against numpy), its memory, a damaged
or missing piece, the plans and the shuffle keys."""

import os
import tracemalloc

import numpy as np
import pytest

from modelshard import api
from modelshard.catalog.catalog import Catalog
from modelshard.errors import FormatError, IntegrityError, UsageError
from modelshard.jobs.train import reduce_task as averaging
from modelshard.jobs.train.reduce_task import (
    INNER,
    MOMENTUM,
    Outer,
    java_text_hash,
    reduce_shard,
    shard_key,
    train_plans,
    write_pieces,
)
from modelshard.loading import open as open_model
from modelshard.shards import format as shard_format
from modelshard.shards.format import read_header


def parent_version(tmp_path, state, *, shard_size):
    cat = str(tmp_path / "cat")
    m = api.push(state, "m", catalog=cat, shard_size=shard_size)
    return cat, m


def split_states(state, n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [{k: (v + rng.normal(size=v.shape).astype(v.dtype)) if v.dtype.kind == "f" else v
             for k, v in state.items() if not k.startswith((INNER, MOMENTUM))} for _ in range(n)]


def reduce_all(cat, m, splits, counts, outer, staging, momenta=None):
    plans = train_plans(m, outer=outer)
    momenta = momenta or [{} for _ in splits]
    reports = [write_pieces(s, b, plans, str(staging), split=i, count=c)
               for i, (s, b, c) in enumerate(zip(splits, momenta, counts, strict=True))]
    out = {}
    with open_model(f"m@{m.version}", catalog=cat, record_stats=False) as parent:
        for j, plan in enumerate(plans):
            r = reduce_shard(plan, [rs[j] for rs in reports], splits=len(splits), parent=parent,
                             staging_uri=str(staging), outer=outer, model="m")
            fs = Catalog(cat).fs
            path = str(staging / "shards" / r["file"])
            header = read_header(fs, path)
            data = fs.read_bytes(path)
            for key, e in header.entries.items():
                out[key] = np.frombuffer(data[e.begin:e.end], e.dtype.numpy).reshape(e.shape)
    return plans, reports, out


def joined(out, name, plans):
    """A tensor reassembled from the pieces of the plans (split tensors by rows)."""
    parts = sorted(((p.rows or (0, 0))[0], out[p.key]) for plan in plans for p in plan.pieces if p.name == name)
    return parts[0][1] if len(parts) == 1 else np.concatenate([a for _, a in parts])


def test_the_streamed_shard_is_the_weighted_average_after_the_outer_step(tmp_path, monkeypatch):
    # Small chunks: every tensor is read, averaged and written in several chunks.
    monkeypatch.setattr(shard_format, "CHUNK", 4096)
    monkeypatch.setattr(averaging, "CHUNK", 4096)
    rng = np.random.default_rng(1)
    state = {"w": rng.normal(size=(100, 200)).astype(np.float32), "b": rng.normal(size=200).astype(np.float32),
             "scale": np.array(2.5, np.float32), "steps": np.array(7, np.int64)}
    state[MOMENTUM + "w"] = rng.normal(size=(100, 200)).astype(np.float32)  # a parent that has momentum
    cat, m = parent_version(tmp_path, state, shard_size=64 * 1024)
    splits, counts = split_states(state), [10, 30, 60]
    # The splits' SGD momentum: "scale" has none (a buffer, not a parameter: zeros).
    momenta = [{k: v for k, v in s.items() if k in ("w", "b")} for s in split_states(state, seed=1)]
    outer = Outer(lr=0.7, momentum=0.9)
    plans, _, out = reduce_all(cat, m, splits, counts, outer, tmp_path / "staging", momenta)
    assert any(p.rows for plan in plans for p in plan.pieces)  # "w" is split by rows
    for name in ("w", "b", "scale"):
        avg = sum(s[name].astype(np.float64) * (c / 100) for s, c in zip(splits, counts, strict=True))
        old = state[name].astype(np.float64)
        m_old = state.get(MOMENTUM + name, np.zeros_like(old)).astype(np.float64)
        m_new = 0.9 * m_old + (old - avg)
        new = old - 0.7 * ((old - avg) + 0.9 * m_new)
        assert np.array_equal(joined(out, name, plans), new.astype(np.float32)), name
        assert np.array_equal(joined(out, MOMENTUM + name, plans), m_new.astype(np.float32)), name
        inner = sum(b.get(name, np.zeros_like(old)).astype(np.float64) * (c / 100)
                    for b, c in zip(momenta, counts, strict=True))  # averaged, no outer step
        assert np.array_equal(joined(out, INNER + name, plans), inner.astype(np.float32)), name
    assert not joined(out, INNER + "scale", plans).any()
    assert joined(out, "steps", plans) == 7 and not {INNER + "steps", MOMENTUM + "steps"} & set(out)


def test_plain_averaging_is_the_outer_step_of_rate_one_without_momentum():
    rng = np.random.default_rng(0)
    old, avg = rng.normal(size=5), rng.normal(size=5)
    new, m = Outer(lr=1, momentum=0).step(old, avg, np.zeros(5))
    assert np.allclose(new, avg) and np.allclose(m, old - avg)
    with pytest.raises(UsageError, match="outer momentum"):
        Outer(lr=0.7, momentum=1.0)


def test_a_reducer_holds_a_few_chunks_not_the_shard(tmp_path, monkeypatch):
    monkeypatch.setattr(shard_format, "CHUNK", 1 << 20)
    monkeypatch.setattr(averaging, "CHUNK", 1 << 20)
    state = {"w": np.ones((4096, 2048), np.float32)}  # 32 MiB, its inner momentum another 32 MiB
    cat, m = parent_version(tmp_path, state, shard_size=256 << 20)
    plans = train_plans(m, outer=Outer())
    staging = tmp_path / "staging"
    reports = [write_pieces(s, s, plans, str(staging), split=i, count=1) for i, s in enumerate(split_states(state))]
    with open_model("m@1", catalog=cat, record_stats=False) as parent:
        tracemalloc.start()
        r = reduce_shard(plans[0], [rs[0] for rs in reports], splits=3, parent=parent, staging_uri=str(staging),
                         outer=Outer(), model="m")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert r["size"] > 64 << 20 and peak < 24 << 20, peak  # output 64 MiB, inputs 3 x 32 MiB


def test_a_flipped_byte_in_a_piece_fails_the_shard_naming_the_split(tmp_path):
    state = {"w": np.arange(4096, dtype=np.float32)}
    cat, m = parent_version(tmp_path, state, shard_size=1 << 20)
    plans = train_plans(m, outer=Outer())
    staging = tmp_path / "staging"
    reports = [write_pieces(s, {}, plans, str(staging), split=i, count=1) for i, s in enumerate(split_states(state))]
    path = staging / reports[1][0]["path"]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with open_model("m@1", catalog=cat, record_stats=False) as parent, \
            pytest.raises(IntegrityError, match=r"piece of split 1.*do not match their CRC32C"):
        reduce_shard(plans[0], [rs[0] for rs in reports], splits=3, parent=parent, staging_uri=str(staging),
                     outer=Outer(), model="m")


def test_a_missing_or_repeated_piece_is_refused(tmp_path):
    state = {"w": np.arange(16, dtype=np.float32)}
    cat, m = parent_version(tmp_path, state, shard_size=1 << 20)
    plans = train_plans(m, outer=Outer())
    staging = tmp_path / "staging"
    reports = [write_pieces(s, {}, plans, str(staging), split=i, count=1)[0]
               for i, s in enumerate(split_states(state))]
    with open_model("m@1", catalog=cat, record_stats=False) as parent:
        for given in (reports[:2], [reports[0], reports[0], reports[2]]):
            with pytest.raises(FormatError, match="expected one from each of the 3 splits"):
                reduce_shard(plans[0], given, splits=3, parent=parent, staging_uri=str(staging),
                             outer=Outer(), model="m")
    assert not os.path.exists(staging / "shards")


@pytest.mark.parametrize("outer", [Outer(), Outer(lr=0.7, momentum=0.9)])
def test_plans_keep_each_momentum_beside_its_parameter_at_about_the_shard_size(tmp_path, outer):
    rng = np.random.default_rng(0)
    state = {f"l{i}.weight": rng.normal(size=(256, 256)).astype(np.float32) for i in range(8)}
    state["l0.steps"] = np.array(3, np.int64)
    _, m = parent_version(tmp_path, state, shard_size=1 << 20)
    prefixes = (INNER, MOMENTUM) if outer.momentum else (INNER,)  # no outer momentum to keep without one
    for plan in train_plans(m, outer=outer):
        keys = [p.key for p in plan.pieces]
        params = [k for k in keys if not k.startswith((INNER, MOMENTUM)) and k != "l0.steps"]
        assert sorted(prefix + k for prefix in prefixes for k in params) == sorted(k for k in keys if ":" in k)
        assert plan.nbytes <= (1 << 20) * 1.5  # 256 KiB tensors: the planner packs whole ones
        # Written in one pass: every parameter before its momenta, the outer momentum last.
        assert keys == [*(k for k in keys if ":" not in k), *(p + k for p in prefixes for k in params)]


def test_shard_keys_send_each_shard_to_its_own_reducer():
    assert java_text_hash(b"abc") == 126145  # Text.hashCode: ((1*31+97)*31+98)*31+99
    assert java_text_hash("é".encode()) == ((31 + (0xC3 - 256)) * 31 + (0xA9 - 256)) & 0xFFFFFFFF
    for reducers in range(1, 9):
        parts = [(java_text_hash(f'"{shard_key(i, reducers)}"'.encode()) & 0x7FFFFFFF) % reducers
                 for i in range(reducers)]
        assert parts == list(range(reducers))
