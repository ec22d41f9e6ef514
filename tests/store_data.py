"""Data and helpers shared by the model store's tests (unit now, HDFS integration later)."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from modelshard.catalog.catalog import Catalog
from modelshard.errors import NotFoundError


def sample_state(seed: int = 0) -> dict[str, np.ndarray]:
    """One tensor of every dtype, plus 0-d, empty and Unicode-named tensors."""
    rng = np.random.default_rng(seed)
    state = {
        "f64": rng.standard_normal((3, 5)),
        "f32": rng.standard_normal((40, 30)).astype(np.float32),
        "f16": rng.standard_normal((6, 2, 3)).astype(np.float16),
        "bf16": rng.standard_normal((33, 4)).astype(ml_dtypes.bfloat16),
        "i64": rng.integers(-2**62, 2**62, (4,), dtype=np.int64),
        "i32": rng.integers(-2**31, 2**31 - 1, (2, 2), dtype=np.int32),
        "i16": rng.integers(-2**15, 2**15 - 1, (7,), dtype=np.int16),
        "i8": rng.integers(-128, 127, (9,), dtype=np.int8),
        "u8": rng.integers(0, 255, (3, 3), dtype=np.uint8),
        "bool": rng.integers(0, 2, (5,)).astype(bool),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "encoder.layers.0.attn.q_proj.weight": rng.standard_normal((8, 8)).astype(np.float32),
        "größe-名前-😀": np.arange(6, dtype=np.int32),
    }
    # NaN payloads and -0.0 must survive bit for bit.
    state["f32"][0, :3] = [np.nan, -0.0, np.inf]
    state["bf16"].view(np.uint16)[0, :2] = [0x7FC1, 0x8000]
    return state


def assert_same(got: dict, want: dict) -> None:
    """Same names, dtypes, shapes and bytes (``got`` may hold torch tensors)."""
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        g = got[name]
        if not isinstance(g, np.ndarray):  # torch: compare raw bytes
            g = g.contiguous().reshape(-1).view(__import__("torch").uint8).numpy()
            assert g.tobytes() == np.ascontiguousarray(w).tobytes(), name
            continue
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert g.tobytes() == w.tobytes(), name


def tree(catalog: Catalog) -> list[tuple[str, int]]:
    """Every file under the catalog root with its size: to check nothing changed."""
    try:
        return [(i.path, i.size) for i in catalog.fs.walk_files(catalog.root)]
    except NotFoundError:
        return []
