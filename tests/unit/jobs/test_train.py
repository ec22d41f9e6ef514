import copy

import numpy as np
import pytest
import torch

from modelshard.errors import UsageError
from modelshard.jobs.models import ModelSpec, build, mlp
from modelshard.jobs.train import average, evaluate, train_split
from modelshard.jobs.wire import decode, encode


def test_average_is_count_weighted_and_order_independent():
    a, b = np.full(3, 1.0, np.float32), np.full(3, 4.0, np.float32)
    assert np.allclose(average([(1, a), (2, b)]), 3.0)
    assert average([(2, b), (1, a)]).tobytes() == average([(1, a), (2, b)]).tobytes()


def test_training_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = mlp(sizes=[2, 8, 2])
    for _ in range(5):
        train_split(model, x, y, lr=0.1, batch_size=32)
    assert evaluate(model, x, y).accuracy > 0.95


def test_empty_split_is_an_error():
    with pytest.raises(UsageError, match="training split is empty"):
        train_split(mlp(sizes=[2, 2]), np.zeros((0, 2)), np.zeros(0), lr=0.1, batch_size=4)


def test_spec_round_trip():
    spec = ModelSpec("mlp", {"sizes": [3, 2]})
    assert ModelSpec.parse(spec.dumps()) == spec
    assert isinstance(build(spec), torch.nn.Module)
    with pytest.raises(UsageError, match="not JSON"):
        ModelSpec.parse("mlp")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8, np.bool_])
def test_wire_round_trip(dtype):
    a = (np.arange(12) % 3).astype(dtype).reshape(3, 4)
    out = decode(copy.deepcopy(encode(a)))
    assert out.dtype == a.dtype and out.tobytes() == a.tobytes()
