"""The shard planner: balanced by bytes, deterministic, big tensors split by rows."""

from __future__ import annotations

import random

import pytest

from modelshard.errors import UsageError
from modelshard.shards.dtypes import DTYPES
from modelshard.shards.planner import DEFAULT_SHARD_SIZE, Spread, TensorMeta, plan, split

F32, U8, F64 = DTYPES["F32"], DTYPES["U8"], DTYPES["F64"]


def t(name, nbytes, dtype=U8):
    return TensorMeta(name, dtype, (nbytes // dtype.itemsize,))


def spread(plans):
    return Spread.of([p.nbytes for p in plans])


def test_default_target_is_an_hdfs_block():
    assert DEFAULT_SHARD_SIZE == 128 * 1024 * 1024


def test_every_tensor_is_placed_once():
    tensors = [t(f"w{i}", 100 + 37 * i) for i in range(50)]
    plans = plan(tensors, 10_000)
    placed = sorted(p.name for s in plans for p in s.pieces)
    assert placed == sorted(x.name for x in tensors)
    assert sum(s.nbytes for s in plans) == sum(x.nbytes for x in tensors)


def test_balanced_where_key_order_greedy_is_not():
    # Filling shards in key order would give [900], [900], [100 x 9] ...; LPT evens them out.
    k = 1000
    tensors = [t("a", 900 * k), t("b", 900 * k)] + [t(f"c{i}", 100 * k) for i in range(18)]
    s = spread(plan(tensors, 1000 * k))
    assert s.count == 4
    assert s.imbalance < 1.03


def test_random_sizes_are_within_a_few_percent():
    rng = random.Random(1)
    tensors = [t(f"w{i}", rng.randint(1, 5_000_000)) for i in range(400)]
    s = spread(plan(tensors, 64 * 1024 * 1024))
    assert s.imbalance < 1.02


def test_plan_is_deterministic_and_independent_of_input_order():
    rng = random.Random(2)
    tensors = [t(f"w{i}", rng.choice([64, 128, 1000, 4096])) for i in range(200)]
    first = plan(tensors, 5000)
    shuffled = tensors[:]
    rng.shuffle(shuffled)
    assert plan(shuffled, 5000) == first == plan(tensors, 5000)


def test_big_tensor_is_split_into_row_ranges():
    big = TensorMeta("emb", F32, (10, 100))  # 4000 bytes, 400 a row
    pieces = split(big, 1500)
    assert [p.rows for p in pieces] == [(0, 4), (4, 7), (7, 10)]
    assert [p.key for p in pieces] == ["emb[0:4]", "emb[4:7]", "emb[7:10]"]
    assert [p.offset for p in pieces] == [0, 1600, 2800]
    assert [p.shape for p in pieces] == [(4, 100), (3, 100), (3, 100)]
    assert sum(p.nbytes for p in pieces) == big.nbytes


def test_split_pieces_go_to_different_shards():
    plans = plan([TensorMeta("emb", F32, (12, 100))], 1600)
    assert sorted([p.rows for p in s.pieces] for s in plans) == [[(0, 4)], [(4, 8)], [(8, 12)]]


@pytest.mark.parametrize("shape", [(1, 5000), (), (0, 10)])
def test_tensors_that_cannot_be_split_stay_whole(shape):
    tensor = TensorMeta("w", U8, shape)
    assert [p.rows for p in split(tensor, 100)] == [None]


def test_empty_and_scalar_tensors_are_placed():
    plans = plan([TensorMeta("e", F32, (0, 3)), TensorMeta("s", F64, ())], 1000)
    assert len(plans) == 1
    assert [p.name for p in plans[0].pieces] == ["s", "e"]


def test_larger_items_first_keeps_offsets_aligned():
    plans = plan([TensorMeta("a", U8, (3,)), TensorMeta("b", F64, (2,)),
                  TensorMeta("c", F32, (1,))], 10_000)
    assert [p.name for p in plans[0].pieces] == ["b", "c", "a"]


def test_shard_names_follow_hugging_face():
    plans = plan([t(f"w{i}", 100) for i in range(3)], 100)
    assert [p.filename for p in plans] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]


def test_piece_key_colliding_with_a_tensor_name_is_refused():
    with pytest.raises(UsageError, match="'emb\\[0:5\\]'"):
        plan([TensorMeta("emb", U8, (10, 10)), TensorMeta("emb[0:5]", U8, (1,))], 60)


@pytest.mark.parametrize("bad", [0, -5, 1.5, "128M", True])
def test_bad_shard_size(bad):
    with pytest.raises(UsageError, match="shard_size"):
        plan([t("w", 10)], bad)


def test_header_bytes_count_towards_balance():
    # 40 one-byte tensors with long names take about as much file as one 7000-byte tensor.
    tiny = [TensorMeta("x" * 100 + str(i), U8, (1,)) for i in range(40)]
    plans = plan([*tiny, t("big", 7000)], 8000)
    assert len(plans) == 2
    with_big = next(p for p in plans if any(x.name == "big" for x in p.pieces))
    assert len(with_big.pieces) <= 3


def test_spread():
    s = Spread.of([100, 200, 300])
    assert (s.count, s.min, s.max, s.mean) == (3, 100, 300, 200)
    assert s.imbalance == 1.5


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_a_count_gives_exactly_that_many_shards(count):
    # Header entries make the shards' costs exceed total / count: sizing alone gave count + 1.
    tensors = [TensorMeta("emb", F32, (3000, 200))] + [t(f"w{i}", 4096 * (i + 1)) for i in range(6)]
    size = -(-sum(x.nbytes for x in tensors) // count)
    plans = plan(tensors, size, count=count)
    assert len(plans) == count and all(p.pieces for p in plans)
    assert sorted({p.name for s in plans for p in s.pieces}) == sorted(x.name for x in tensors)


def test_a_count_beyond_the_pieces_is_refused():
    with pytest.raises(UsageError, match="only 2 tensors .* at most 2"):
        plan([t("a", 10), t("b", 10)], 100, count=3)
