"""Conversion: the bytes of a tensor as a numpy array or torch tensor, optionally cast.

>>> import numpy as np
>>> convert(np.ones(2, np.float32).tobytes(), as_dtype("F32"), (2,), "numpy", as_dtype("F16"))
array([1., 1.], dtype=float16)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelshard.errors import UsageError
from modelshard.shards import dtypes
from modelshard.shards.dtypes import DType

_FLOATS = frozenset({"F64", "F32", "F16", "BF16"})


def as_dtype(dtype: Any) -> DType:
    """A DType from its safetensors name, torch name (``"bfloat16"``), numpy or torch dtype."""
    if isinstance(dtype, DType):
        return dtype
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        for d in dtypes.DTYPES.values():
            if name in (d.name, d.torch_name):
                return d
        raise UsageError(f"dtype={dtype!r}: use one of {dtypes.SUPPORTED} or its torch name "
                         "(float16, bfloat16, ...)")
    if "torch" in type(dtype).__module__:
        return dtypes.of_torch(dtype, where="dtype=")
    try:
        return dtypes.of_numpy(np.dtype(dtype), where="dtype=")
    except TypeError as e:
        raise UsageError(f"dtype={dtype!r}: not a dtype") from e


def convert(raw: Any, dt: DType, shape: tuple[int, ...], framework: str,
            cast: DType | None) -> Any:
    """``raw`` (a buffer of ``dt`` values) as an array of ``shape``; ``cast`` applies to
    floating-point tensors only, as Hugging Face's ``torch_dtype`` does. Zero-copy where
    the framework allows (a read-only buffer is copied for torch, which has no read-only
    tensors)."""
    target = cast if cast is not None and dt.name in _FLOATS else None
    if framework == "numpy":
        arr = np.frombuffer(raw, dtype=dt.numpy).reshape(shape)
        return arr if target is None else arr.astype(target.numpy)
    import torch

    if not memoryview(raw).nbytes:  # torch.frombuffer refuses an empty buffer
        tensor = torch.empty(shape, dtype=dt.torch)
    else:
        if memoryview(raw).readonly:
            raw = bytearray(raw)
        tensor = torch.frombuffer(raw, dtype=dt.torch).reshape(shape)
    return tensor if target is None else tensor.to(target.torch)
