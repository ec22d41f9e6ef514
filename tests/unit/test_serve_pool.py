"""The pool of many models under one budget (modelshard.serve.pool): results equal to the
module's own, the budget never exceeded under concurrency, refusals, pins, alias moves
without a mixed request, a damaged model never served while the others are."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

import modelshard
from modelshard.catalog.catalog import Catalog
from modelshard.jobs.models import SPEC_ATTR, ModelSpec, mlp
from modelshard.jobs.predict.task import InputSpec, OutputSpec, Predictor
from modelshard.scheduler import ShardScheduler
from modelshard.serve.pool import ModelPool, TooLargeError, UnavailableError
from tests.hf_data import SENTENCES, tiny_bert


def push_mlp(cat: str, name: str, sizes: list[int], *, seed: int = 0, aliases=("prod",),
             shard_size: int = 1 << 20) -> torch.nn.Module:
    model = mlp(sizes=sizes, seed=seed)
    modelshard.push({k: v.numpy() for k, v in model.state_dict().items()}, name, catalog=cat,
                    attrs={SPEC_ATTR: ModelSpec("mlp", {"sizes": sizes, "seed": seed}).dumps()},
                    aliases=aliases, shard_size=shard_size)
    return model


def rows(n: int, width: int, seed: int = 0) -> list[list[float]]:
    return np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32).tolist()


@pytest.fixture
def cat(tmp_path) -> str:
    return str(tmp_path / "catalog")


def manifest(cat: str, key: str):
    c = Catalog(cat)
    return c.manifest(*c.resolve(key))


def nbytes(cat: str, key: str) -> int:
    return sum(s.size for s in manifest(cat, key).shards)


def test_predictions_are_the_modules_own_and_bad_records_say_why(cat):
    model = push_mlp(cat, "a", [8, 16, 3])
    x = rows(4, 8)
    with ModelPool(cat, budget_bytes=1 << 20) as pool:
        target = pool.resolve("a@prod")
        got = pool.predict(target, [{"x": r} for r in x] + [{"x": [1, 2]}, {"x": "no"}], output="scores")
    want = model(torch.tensor(x)).softmax(-1).tolist()
    assert target == "a@1"
    np.testing.assert_allclose([v for _, v in got[:4]], want, atol=1e-6)
    assert got[4] == ("bad", "2 features; the model takes 8")
    assert got[5][0] == "bad" and "number" in got[5][1]


def test_a_weight_split_across_shards_is_joined_exactly(cat):
    # 64x256 F32 weight = 64 KiB in shards of 16 KiB: it spans several of them.
    model = push_mlp(cat, "a", [256, 64, 3], shard_size=16 << 10)
    m = manifest(cat, "a@prod")
    assert max(len(t.pieces) for t in m.tensors.values()) > 2
    x = rows(5, 256)
    with ModelPool(cat, budget_bytes=1 << 20) as pool:
        target = pool.resolve("a@prod")
        for _ in range(2):  # fetched, then from memory
            got = pool.predict(target, [{"x": r} for r in x], output="scores")
            want = model(torch.tensor(x)).softmax(-1).tolist()
            np.testing.assert_allclose([v for _, v in got], want, atol=1e-6)
        with pool.hold(target) as held:
            for name, t in model.state_dict().items():
                assert torch.equal(held.tensors[name], t), name
            first = held.tensors["0.weight"].data_ptr()
        with pool.hold(target) as held:  # held joined, not joined again for each batch
            assert held.tensors["0.weight"].data_ptr() == first
        # No byte is held twice: a crossed shard's other tensors are held apart from the
        # split one (each copied tensor starts 64-byte aligned).
        tensor_bytes = sum(t.nbytes for t in m.tensors.values())
        assert tensor_bytes <= pool.scheduler.stats().bytes_held <= tensor_bytes + 64 * len(m.tensors)
        assert pool.models()[0]["resident_bytes"] == pool.scheduler.stats().bytes_held


def test_a_joined_tensor_is_kept_in_the_preload_cache_and_mapped_from_there(cat, tmp_path,
                                                                           monkeypatch):
    from modelshard.cache.preload import PreloadCache
    from modelshard.serve import pool as pool_mod

    model = push_mlp(cat, "a", [256, 64, 3], shard_size=16 << 10)
    m = manifest(cat, "a@1")
    crossed = {os.path.basename(p.shard) for p in m.tensors["0.weight"].pieces}
    fetched: list[str] = []
    fetch = pool_mod.fetch_shard
    monkeypatch.setattr(pool_mod, "fetch_shard",
                        lambda fs, ref, **kw: fetched.append(os.path.basename(ref.path)) or fetch(fs, ref, **kw))
    cache = PreloadCache(str(tmp_path / "cache"), max_bytes=1 << 24)
    x = rows(3, 256)
    want = model(torch.tensor(x)).softmax(-1).tolist()
    with ModelPool(cat, budget_bytes=1 << 20, cache=cache, max_models=0) as pool:  # fetched per batch
        target = pool.resolve("a@prod")
        for batch in range(3):
            fetched.clear()
            got = pool.predict(target, [{"x": r} for r in x], output="scores")
            np.testing.assert_allclose([v for _, v in got], want, atol=1e-6)
            # The first batch copies the parts out of the crossed shards; the next ones map them.
            assert bool(crossed & set(fetched)) == (batch == 0), fetched
        kept = dict(pool._versions[target].kept)
        assert set(kept) == {label for label in pool._versions[target].layout.plans}
        # A kept part damaged on disk is never served: copied again from its shards, kept anew.
        entry = cache.entry_path(kept["tensor:0.weight"].sha256)
        with open(entry, "r+b") as f:
            f.seek(1000)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x10]))
        fetched.clear()
        got = pool.predict(target, [{"x": r} for r in x], output="scores")
        np.testing.assert_allclose([v for _, v in got], want, atol=1e-6)
        assert crossed <= set(fetched)
        assert cache.stats().corrupt_dropped == 1 and cache.lookup(kept["tensor:0.weight"]) is not None


def test_a_part_larger_than_the_cache_is_served_without_being_kept(cat, tmp_path):
    from modelshard.cache.preload import PreloadCache

    model = push_mlp(cat, "a", [256, 64, 3], shard_size=16 << 10)  # 0.weight: 64 KiB
    cache = PreloadCache(str(tmp_path / "cache"), max_bytes=32 << 10, lock_timeout_s=30)
    start = time.monotonic()
    with ModelPool(cat, budget_bytes=1 << 20, cache=cache, max_models=0) as pool:
        target = pool.resolve("a@prod")
        for _ in range(2):
            got = pool.predict(target, [{"x": [1.0] * 256}], output="scores")
            np.testing.assert_allclose(got[0][1], model(torch.ones(1, 256)).softmax(-1)[0].tolist(),
                                       atol=1e-6)
        assert "tensor:0.weight" not in pool._versions[target].kept
    assert time.monotonic() - start < 20  # no wait for room in the cache that cannot be made


@pytest.mark.parametrize("through_cache", [False, True])
def test_a_damaged_shard_under_a_joined_tensor_is_never_served(cat, tmp_path, through_cache):
    from modelshard.cache.preload import PreloadCache

    push_mlp(cat, "a", [256, 64, 3], shard_size=16 << 10)
    good = push_mlp(cat, "good", [8, 4], seed=3)
    m = manifest(cat, "a@1")
    crossed = m.tensors["0.weight"].pieces[1]
    with open(os.path.join(Catalog(cat).version_dir("a", "1"), crossed.shard), "r+b") as f:
        f.seek(crossed.begin + 5)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x10]))
    cache = PreloadCache(str(tmp_path / "cache"), max_bytes=1 << 24) if through_cache else None
    with ModelPool(cat, budget_bytes=1 << 20, cache=cache) as pool:
        for _ in range(2):
            with pytest.raises(UnavailableError, match="a@1 failed verification"):
                pool.predict(pool.resolve("a@prod"), [{"x": [0.0] * 256}])
            assert pool.predict(pool.resolve("good@prod"), [{"x": [1.0] * 8}])[0] == (
                "ok", good(torch.ones(1, 8)).argmax(-1).item())
        assert pool.scheduler.stats().bytes_held == nbytes(cat, "good@1")


def test_text_inputs_match_the_batch_predictor(cat, tmp_path):
    folder = tiny_bert(tmp_path / "bert")
    modelshard.push(str(folder), "bert", catalog=cat, aliases=["prod"])
    with ModelPool(cat, budget_bytes=8 << 20) as pool:
        got = pool.predict(pool.resolve("bert@prod"), [{"t": s} for s in SENTENCES],
                           inputs="text:t", output="topk:2")
    from modelshard.jobs.predict.task import open_predictor

    p = open_predictor(cat, "bert@prod", fmt="jsonl", batch_size=64, inputs=InputSpec("text", "t"),
                       output=OutputSpec("topk", 2))
    for i, s in enumerate(SENTENCES):
        p.add(f'{{"id": {i}, "t": "{s}"}}')
    want = [v for _, v in p.flush()]
    assert [k for k, _ in got] == ["ok"] * len(SENTENCES)
    for (_, g), w in zip(got, want, strict=True):
        assert [c for c, _ in g] == [c for c, _ in w]
        assert [s for _, s in g] == pytest.approx([s for _, s in w], abs=1e-5)


def test_many_models_share_one_budget_under_concurrency(cat):
    models = {f"m{i}": push_mlp(cat, f"m{i}", [32, 64, 64, 4], seed=i, shard_size=8 << 10)
              for i in range(5)}
    size = nbytes(cat, "m0")
    budget = int(size * 2.5)  # two models at once, of five
    x = rows(3, 32)
    want = {n: m(torch.tensor(x)).argmax(-1).tolist() for n, m in models.items()}
    errors: list[BaseException] = []
    with ModelPool(cat, budget_bytes=budget, wait_timeout_s=120) as pool:
        def client(seed: int) -> None:
            rng = np.random.default_rng(seed)
            try:
                for _ in range(30):
                    name = f"m{rng.integers(5)}"
                    got = pool.predict(pool.resolve(f"{name}@prod"), [{"x": r} for r in x])
                    assert [v for _, v in got] == want[name]
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=client, args=(s,)) for s in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        st = pool.scheduler.stats()
    assert not errors, errors[0]
    assert st.peak_bytes_held <= budget
    assert st.evictions > 0 and st.hits > 0


def test_a_model_larger_than_the_budget_is_refused_and_the_others_serve(cat):
    push_mlp(cat, "big", [64, 256, 4])
    push_mlp(cat, "small", [4, 3])
    with ModelPool(cat, budget_bytes=nbytes(cat, "big") - 1) as pool:
        with pytest.raises(TooLargeError, match=r"big@1 has \d+ bytes of weights; the memory budget"):
            pool.predict(pool.resolve("big@prod"), [{"x": [0.0] * 64}])
        assert pool.predict(pool.resolve("small@prod"), [{"x": [1, 2, 3, 4]}])[0][0] == "ok"


def test_a_pinned_model_stays_whole_while_others_churn(cat):
    for i in range(4):
        push_mlp(cat, f"m{i}", [32, 64, 4], seed=i, shard_size=4 << 10)
    size = nbytes(cat, "m0")
    with ModelPool(cat, budget_bytes=size * 2) as pool:
        pool.pin("m0@prod")
        for _ in range(3):
            for i in (1, 2, 3):
                pool.predict(pool.resolve(f"m{i}@prod"), [{"x": [0.5] * 32}])
        m0 = next(m for m in pool.models() if m["model"] == "m0@1")
        assert m0["pinned"] and m0["resident_shards"] == m0["shards"]
        pool.pin("m1@prod")
        with pytest.raises(TooLargeError, match="cannot pin m2@1"):
            pool.pin("m2@prod")
        # Two pinned models fill the budget: a third is refused, not waited for forever.
        with pytest.raises(TooLargeError):
            pool.predict(pool.resolve("m3@prod"), [{"x": [0.5] * 32}])


def test_alias_moves_are_picked_up_and_no_request_mixes_two_versions(cat):
    # Each layer in its own shard: a request that mixed versions would give neither output.
    sizes = [16, 64, 64, 3]
    v1 = push_mlp(cat, "m", sizes, seed=1, shard_size=4 << 10, aliases=("prod",))
    v2 = push_mlp(cat, "m", sizes, seed=2, shard_size=4 << 10, aliases=())
    assert len(manifest(cat, "m@1").shards) >= 3
    x = rows(2, 16)
    want = {"m@1": v1(torch.tensor(x)).tolist(), "m@2": v2(torch.tensor(x)).tolist()}
    seen: set[str] = set()
    errors: list[BaseException] = []
    stop = threading.Event()
    with ModelPool(cat, budget_bytes=nbytes(cat, "m@1") * 3, alias_ttl_s=0.0) as pool:
        def client() -> None:
            try:
                while not stop.is_set():
                    target = pool.resolve("m@prod")
                    got = pool.predict(target, [{"x": r} for r in x], output="tensor")
                    np.testing.assert_allclose([v for _, v in got], want[target], atol=1e-6)
                    seen.add(target)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        for i in range(20):
            modelshard.alias("m@prod", 2 if i % 2 == 0 else 1, catalog=cat)
        stop.set()
        for t in threads:
            t.join(60)
        modelshard.alias("m@prod", 2, catalog=cat)
        assert pool.resolve("m@prod") == "m@2"  # picked up without a restart
    assert not errors, errors[0]
    assert seen == {"m@1", "m@2"}


def test_a_damaged_model_is_never_served_and_the_others_are(cat):
    push_mlp(cat, "bad", [8, 4])
    good = push_mlp(cat, "good", [8, 4], seed=3)
    m = manifest(cat, "bad@1")
    shard = os.path.join(Catalog(cat).version_dir("bad", "1"), m.shards[0].path)
    with open(shard, "r+b") as f:  # flip one byte of the weights
        f.seek(m.shards[0].size - 3)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    with ModelPool(cat, budget_bytes=1 << 20) as pool:
        for _ in range(2):
            with pytest.raises(UnavailableError, match="bad@1 failed verification"):
                pool.predict(pool.resolve("bad@prod"), [{"x": [0.0] * 8}])
            got = pool.predict(pool.resolve("good@prod"), [{"x": [1.0] * 8}])
            assert got[0] == ("ok", good(torch.ones(1, 8)).argmax(-1).item())
        assert next(m for m in pool.models() if m["model"] == "bad@1")["failed"]


def test_a_model_that_cannot_be_built_for_a_moment_is_built_again(cat, monkeypatch):
    from modelshard.errors import StorageError
    from modelshard.serve import runner

    good = push_mlp(cat, "a", [8, 4], seed=3)
    build, calls = runner._build, []

    def flaky(pool, v):
        calls.append(v.key)
        if len(calls) == 1:
            raise StorageError("hdfs://nn/models/a/1/assets: connection refused")
        return build(pool, v)

    monkeypatch.setattr(runner, "_build", flaky)
    with ModelPool(cat, budget_bytes=1 << 20) as pool:
        with pytest.raises(UnavailableError, match="a@1 cannot be built now: .*connection refused; retry"):
            pool.predict(pool.resolve("a@prod"), [{"x": [1.0] * 8}])
        assert pool.models()[0]["failed"] is None
        assert pool.predict(pool.resolve("a@prod"), [{"x": [1.0] * 8}])[0] == (
            "ok", good(torch.ones(1, 8)).argmax(-1).item())
    assert calls == ["a@1", "a@1"]


def test_whole_model_lru_keeps_at_most_max_models(cat):
    for i in range(3):
        push_mlp(cat, f"m{i}", [8, 4], seed=i)
    with ModelPool(cat, budget_bytes=1 << 20, max_models=1) as pool:
        for i in range(3):
            pool.predict(pool.resolve(f"m{i}@prod"), [{"x": [0.0] * 8}])
            assert [m["model"] for m in pool.models() if m["resident_shards"]] == [f"m{i}@1"]
    with ModelPool(cat, budget_bytes=1 << 20, max_models=0) as pool:
        pool.predict(pool.resolve("m0@prod"), [{"x": [0.0] * 8}])
        assert pool.scheduler.stats().bytes_held == 0


def test_scheduler_add_and_remove_keys():
    sched = ShardScheduler(lambda k: bytes(4), {"a": 4}, budget_bytes=8)
    sched.add({"b": 4})
    with sched.acquire("b"), pytest.raises(Exception, match="in use"):
        sched.remove(["b"])
    assert sched.remove(["b"]) == 4 and sched.stats().bytes_held == 0
    with pytest.raises(Exception, match="not one of"):
        sched.acquire("b")
    with pytest.raises(Exception, match="budget smaller than the largest shard"):
        sched.add({"c": 9})


def test_predictor_forward_hook_is_used():
    model = torch.nn.Linear(2, 2)
    calls = []
    p = Predictor(model, fmt="jsonl", forward=lambda x: calls.append(x) or model(x))
    p.add('{"id": 1, "x": [1, 2]}')
    assert p.flush()[0][0] == 1 and len(calls) == 1


def test_a_pinned_alias_that_moves_is_pinned_at_its_new_version(cat):
    push_mlp(cat, "m", [8, 4], seed=1)
    push_mlp(cat, "m", [8, 4], seed=2, aliases=())
    with ModelPool(cat, budget_bytes=1 << 20, alias_ttl_s=0.0) as pool:
        assert pool.pin("m@prod") == "m@1"
        modelshard.alias("m@prod", 2, catalog=cat)
        pool.refresh()
        pinned = {m["model"]: m["pinned"] for m in pool.models()}
        assert pinned.get("m@2") is True and not pinned.get("m@1")
        assert pool.scheduler.stats().pinned_bytes == nbytes(cat, "m@2")


def test_shards_come_through_the_preload_cache_when_one_is_given(cat, tmp_path):
    from modelshard.cache.preload import PreloadCache

    model = push_mlp(cat, "a", [8, 16, 3])
    cache = PreloadCache(str(tmp_path / "cache"), max_bytes=1 << 24)
    for _ in range(2):  # a miss fills the cache, then its entry is mapped
        with ModelPool(cat, budget_bytes=1 << 20, cache=cache) as pool:
            got = pool.predict(pool.resolve("a@prod"), [{"x": [1.0] * 8}], output="tensor")
        np.testing.assert_allclose(got[0][1], model(torch.ones(1, 8))[0].tolist(), atol=1e-6)
    st = cache.stats()
    assert st.entries == 1 and st.hits == 1 and st.misses == 1
