import numpy as np
import pytest
import torch

from modelshard.errors import UsageError
from modelshard.jobs.models import ModelSpec, build, mlp
from modelshard.jobs.train.task import StreamTrainer, evaluate, train_file, train_split


def test_a_stream_is_trained_in_batches_holding_at_most_the_shuffle_buffer():
    model = mlp(sizes=[2, 2])
    t = StreamTrainer(model, lr=0.1, batch_size=4, seed=0, buffer_bytes=64)  # 8 records of 8 bytes
    steps = []
    t._step = lambda step=t._step: (steps.append(len(t.batch)), step())
    for i in range(30):
        t.add(np.array([i, 1.0], np.float32), i % 2)
        assert len(t.held) < 8 and len(t.batch) < 4
    assert t.finish().count == 30 and steps == [4] * 7 + [2]


def test_a_split_read_as_a_stream_sets_bad_records_aside_once():
    lines = ['{"id": 1, "x": [0.5, 1], "y": 1}\n', "oops\n", '{"id": 2, "x": [1, 0], "y": 0}\n']
    run = train_file(mlp(sizes=[2, 2]), lambda: iter(lines), fmt="jsonl", n_features=2, lr=0.1,
                     batch_size=1, seed=0, epochs=3)
    bad = []
    try:
        while True:
            bad.append(next(run))
    except StopIteration as done:
        metrics = done.value
    assert [line for _, line in bad] == ["oops\n"] and metrics.count == 2


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
