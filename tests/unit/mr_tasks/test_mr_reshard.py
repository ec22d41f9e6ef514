"""mr_reshard through its driver: bit-exact without a cast, a cast touches only floating
point tensors, split tensors are resharded, bad targets are refused."""

import ml_dtypes
import numpy as np
import pytest

from modelshard import api
from modelshard.errors import NotFoundError, UsageError
from modelshard.jobs.reshard.driver import reshard

MiB = 1 << 20


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {"emb": rng.normal(size=(3000, 200)).astype(np.float32),  # 2.3 MiB: split at 1 MiB
               "w": rng.normal(size=(300, 300)).astype(np.float16), "steps": np.arange(7, dtype=np.int64),
               "mask": rng.random((64,)) > 0.5, "scale": np.array(2.5, dtype=np.float64)}
    cat = str(tmp_path / "cat")
    api.push(tensors, "m", catalog=cat, shard_size=MiB)
    return cat, tensors


@pytest.mark.parametrize("runner", ["inline", "local"])
def test_bit_exact_without_a_cast(model, runner):
    cat, tensors = model
    m = reshard("m@1", shard_size=3 * MiB, catalog=cat, runner=runner)
    assert m.version == "2" and len(m.shards) == 1 and m.attrs["reshard.parent"] == "1"
    out = api.pull("m@2", catalog=cat)
    for name, a in tensors.items():
        assert out[name].dtype == a.dtype and out[name].tobytes() == a.tobytes()


def test_cast_to_bf16_touches_floats_only(model):
    cat, tensors = model
    m = reshard("m", shard_count=2, dtype="BF16", catalog=cat, aliases=["small"])
    assert len(m.shards) == 2
    out = api.pull("m@small", catalog=cat)
    assert m.tensors["emb"].dtype.name == "BF16" and m.tensors["steps"].dtype.name == "I64"
    assert np.array_equal(out["emb"], tensors["emb"].astype(ml_dtypes.bfloat16))
    assert out["mask"].tobytes() == tensors["mask"].tobytes()


@pytest.mark.parametrize("count", [1, 3, 4, 7])
def test_shards_n_makes_exactly_n(model, count):
    cat, tensors = model
    m = reshard("m@1", shard_count=count, catalog=cat)
    assert len(m.shards) == count
    out = api.pull(f"m@{m.version}", catalog=cat)
    assert all(out[name].tobytes() == a.tobytes() for name, a in tensors.items())


def test_bad_targets(model):
    cat, _ = model
    with pytest.raises(UsageError, match="below 1 MiB"):
        reshard("m", shard_size=4096, catalog=cat)
    with pytest.raises(UsageError, match="exactly one of"):
        reshard("m", catalog=cat)
    with pytest.raises(UsageError, match="at most"):
        reshard("m", shard_count=100_000, catalog=cat)
    with pytest.raises(UsageError, match="floating-point"):
        reshard("m", shard_size=MiB, dtype="I8", catalog=cat)
    with pytest.raises(NotFoundError, match="nosuch"):
        reshard("nosuch", shard_size=MiB, catalog=cat)
    assert [v.version for v in api.ls("m", catalog=cat)] == ["1"]
