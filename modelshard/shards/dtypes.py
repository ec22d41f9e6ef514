"""The tensor dtypes a shard may hold, by their safetensors names, and their numpy and torch
counterparts. numpy has no bfloat16 of its own: ``ml_dtypes.bfloat16`` stands in, so BF16
round-trips bit-exactly without torch. ml_dtypes is imported the first time a BF16 tensor
meets numpy: loading its extension costs 0.6-0.9 s, more than the rest of a command's start
(docs/benchmarks.md, issue 11)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelshard.errors import FormatError


@dataclass(frozen=True)
class DType:
    name: str  # the safetensors name, e.g. "BF16"
    itemsize: int
    numpy_name: str  # numpy's name of the dtype (``np.dtype(...).name``), little-endian
    torch_name: str  # attribute of the torch module; resolved lazily to keep torch optional

    @property
    def numpy(self) -> np.dtype:
        return _numpy_dtype(self.numpy_name)

    @property
    def torch(self) -> Any:
        import torch

        return getattr(torch, self.torch_name)


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("F64", 8, "float64", "float64"),
        DType("F32", 4, "float32", "float32"),
        DType("F16", 2, "float16", "float16"),
        DType("BF16", 2, "bfloat16", "bfloat16"),
        DType("I64", 8, "int64", "int64"),
        DType("I32", 4, "int32", "int32"),
        DType("I16", 2, "int16", "int16"),
        DType("I8", 1, "int8", "int8"),
        DType("U8", 1, "uint8", "uint8"),
        DType("BOOL", 1, "bool", "bool"),
    )
}
SUPPORTED = ", ".join(DTYPES)
_BY_NUMPY_NAME = {d.numpy_name: d for d in DTYPES.values()}
_BY_TORCH_NAME = {d.torch_name: d for d in DTYPES.values()}


def get(name: object, *, where: str) -> DType:
    """The dtype named ``name`` in a header or manifest; ``where`` names the file and tensor."""
    dtype = DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None:
        raise FormatError(f"{where}: unknown dtype {name!r}; modelshard stores {SUPPORTED}")
    return dtype


def of_numpy(dt: np.dtype, *, where: str) -> DType:
    # By name (either byte order): an array of bfloat16 means ml_dtypes is imported already.
    dtype = _BY_NUMPY_NAME.get(dt.name)
    if dtype is None:
        raise FormatError(f"{where}: numpy dtype {dt} is not supported; convert it to one of "
                          f"{SUPPORTED}")
    return dtype


def of_torch(dt: Any, *, where: str) -> DType:
    dtype = _BY_TORCH_NAME.get(str(dt).removeprefix("torch."))
    if dtype is None:
        raise FormatError(f"{where}: torch dtype {dt} is not supported; convert it to one of "
                          f"{SUPPORTED}")
    return dtype


@functools.cache
def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name).newbyteorder("<")
