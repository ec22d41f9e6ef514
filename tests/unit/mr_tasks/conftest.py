import json

import numpy as np
import pytest

from modelshard.jobs.models import ModelSpec
from modelshard.quickstart import digits

SPEC = ModelSpec("mlp", {"sizes": [64, 16, 10]})


@pytest.fixture(scope="session")
def digit_rows():
    x, y = digits()
    return x[:400], y[:400]


@pytest.fixture
def train_dir(tmp_path, digit_rows):
    """Two training splits of 150 labelled digits as JSON lines."""
    x, y = digit_rows
    folder = tmp_path / "train"
    folder.mkdir()
    for i in range(2):
        with open(folder / f"part-{i}.jsonl", "w") as f:
            for j in range(i * 150, (i + 1) * 150):
                f.write(json.dumps({"id": j, "x": x[j].tolist(), "y": int(y[j])}) + "\n")
    return folder


@pytest.fixture
def test_rows(digit_rows):
    x, y = digit_rows
    return np.asarray(x[300:]), np.asarray(y[300:])
