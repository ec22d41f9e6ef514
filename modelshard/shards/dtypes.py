"""The tensor dtypes a shard may hold, by their safetensors names, and their numpy and torch
counterparts. numpy has no bfloat16 of its own: ``ml_dtypes.bfloat16`` stands in, so BF16
round-trips bit-exactly without torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from modelshard.errors import FormatError


@dataclass(frozen=True)
class DType:
    name: str  # the safetensors name, e.g. "BF16"
    itemsize: int
    numpy: np.dtype
    torch_name: str  # attribute of the torch module; resolved lazily to keep torch optional

    @property
    def torch(self) -> Any:
        import torch

        return getattr(torch, self.torch_name)


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("F64", 8, np.dtype("<f8"), "float64"),
        DType("F32", 4, np.dtype("<f4"), "float32"),
        DType("F16", 2, np.dtype("<f2"), "float16"),
        DType("BF16", 2, np.dtype(ml_dtypes.bfloat16), "bfloat16"),
        DType("I64", 8, np.dtype("<i8"), "int64"),
        DType("I32", 4, np.dtype("<i4"), "int32"),
        DType("I16", 2, np.dtype("<i2"), "int16"),
        DType("I8", 1, np.dtype("i1"), "int8"),
        DType("U8", 1, np.dtype("u1"), "uint8"),
        DType("BOOL", 1, np.dtype("?"), "bool"),
    )
}
SUPPORTED = ", ".join(DTYPES)
_BY_NUMPY = {d.numpy: d for d in DTYPES.values()}
_BY_TORCH_NAME = {d.torch_name: d for d in DTYPES.values()}


def get(name: object, *, where: str) -> DType:
    """The dtype named ``name`` in a header or manifest; ``where`` names the file and tensor."""
    dtype = DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None:
        raise FormatError(f"{where}: unknown dtype {name!r}; modelshard stores {SUPPORTED}")
    return dtype


def of_numpy(dt: np.dtype, *, where: str) -> DType:
    dtype = _BY_NUMPY.get(dt.newbyteorder("<") if dt.byteorder == ">" else dt)
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
