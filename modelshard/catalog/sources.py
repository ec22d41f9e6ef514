"""What ``push`` reads: every supported source becomes a list of :class:`SourceTensor`, whose
bytes are read on demand, so a model is never held twice in memory while it is pushed.

Sources: an in-memory mapping of numpy arrays / torch tensors; a ``.safetensors`` file; a
PyTorch state_dict file (``.pt``, ``.pth``, ``.bin``, loaded with ``weights_only=True``, never
unpickling code); a Hugging Face model folder (``model.safetensors``, or shards listed by
``model.safetensors.index.json``); a folder of ``.npy`` files (one tensor per file, named by
the file). Paths may be local or any URI :func:`modelshard.fs.get_fs` knows.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelshard.catalog.manifest import INDEX
from modelshard.errors import FormatError, NotFoundError, UsageError
from modelshard.fs import FileSystem, get_fs
from modelshard.shards import dtypes
from modelshard.shards.format import check_tensor_name, read_header
from modelshard.shards.planner import TensorMeta

SINGLE = "model.safetensors"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_PLAIN_FILE = re.compile(r"[^/\\\0]+\.safetensors")


@dataclass(frozen=True)
class SourceTensor(TensorMeta):
    """A tensor to push; ``read(offset, length)`` returns that slice of its bytes."""

    read: Callable[[int, int], bytes | memoryview]


def open_source(source: Any) -> list[SourceTensor]:
    """The tensors of ``source``, sorted by name. FormatError names the file and tensor."""
    if isinstance(source, Mapping):
        return _sorted([from_object(k, v, where="in-memory state dict") for k, v in source.items()])
    if not isinstance(source, str | os.PathLike):
        raise UsageError(f"push source {type(source).__name__}: give a path, a URI or a dict "
                         "of numpy arrays / torch tensors")
    fs, path = get_fs(os.fspath(source))
    try:
        info = fs.stat(path)
    except NotFoundError:
        raise NotFoundError(f"push source {source}: no such file or folder") from None
    if info.is_dir:
        return _sorted(_from_folder(fs, path))
    if path.endswith(".safetensors"):
        return _sorted(_from_safetensors(fs, path))
    if path.endswith(TORCH_SUFFIXES):
        return _sorted(_from_torch_file(fs, path))
    raise UsageError(f"push source {source}: unknown kind of file; give a .safetensors, "
                     f"{'/'.join(TORCH_SUFFIXES)} file or a model folder")


def _sorted(tensors: list[SourceTensor]) -> list[SourceTensor]:
    return sorted(tensors, key=lambda t: t.name)


def from_object(name: Any, value: Any, *, where: str) -> SourceTensor:
    """A numpy array or torch tensor as a SourceTensor (no copy if already C-contiguous)."""
    check_tensor_name(name, where=where)
    at = f"{where}: tensor {name!r}"
    if isinstance(value, np.generic):  # a numpy scalar is a 0-d tensor
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        return _from_array(name, value, where=at)
    if type(value).__module__.startswith("torch"):
        import torch

        if isinstance(value, torch.Tensor):
            return _from_torch(name, value, where=at)
    raise FormatError(f"{at}: a {type(value).__name__} is not a numpy array or torch tensor")


def _from_array(name: str, a: np.ndarray, *, where: str) -> SourceTensor:
    dtype = dtypes.of_numpy(a.dtype, where=where)
    shape = a.shape
    if a.dtype != dtype.numpy:  # big-endian input; shards are little-endian
        a = a.astype(dtype.numpy)
    if not a.flags.c_contiguous:
        a = a.copy(order="C")
    buf = memoryview(a.reshape(-1).view(np.uint8))
    return SourceTensor(name, dtype, shape, lambda offset, n: buf[offset:offset + n])


def _from_torch(name: str, t: Any, *, where: str) -> SourceTensor:
    import torch

    dtype = dtypes.of_torch(t.dtype, where=where)
    if t.layout != torch.strided or t.device.type == "meta":
        raise FormatError(f"{where}: a {t.layout} tensor on {t.device} holds no plain bytes; "
                          "convert it to a dense tensor with data")
    t = t.detach().cpu().contiguous()
    buf = memoryview(t.reshape(-1).view(torch.uint8).numpy())
    return SourceTensor(name, dtype, tuple(t.shape), lambda offset, n: buf[offset:offset + n])


def _from_safetensors(fs: FileSystem, path: str) -> list[SourceTensor]:
    header = read_header(fs, path)

    def reader(begin: int) -> Callable[[int, int], bytes]:
        return lambda offset, n: fs.read_range(path, begin + offset, n)

    return [SourceTensor(e.key, e.dtype, e.shape, reader(e.begin)) for e in header.entries.values()]


def _from_folder(fs: FileSystem, path: str) -> list[SourceTensor]:
    names = {posixpath.basename(i.path): i for i in fs.ls(path)}
    if INDEX in names:
        return _from_hf_index(fs, path)
    if SINGLE in names:
        return _from_safetensors(fs, posixpath.join(path, SINGLE))
    npys = sorted(n for n, i in names.items() if n.endswith(".npy") and not i.is_dir)
    if npys:
        return [_from_npy(fs, posixpath.join(path, n)) for n in npys]
    raise UsageError(f"push source {path}: the folder holds no {SINGLE}, {INDEX} or .npy files")


def _from_hf_index(fs: FileSystem, folder: str) -> list[SourceTensor]:
    index_path = posixpath.join(folder, INDEX)
    try:
        weight_map = json.loads(fs.read_bytes(index_path))["weight_map"]
        files = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise FormatError(f"{index_path}: not a Hugging Face index with a weight_map "
                          f"({type(e).__name__}: {e})") from e
    tensors: dict[str, tuple[str, SourceTensor]] = {}
    for file in files:
        # The index is input: its file names must not lead out of the folder.
        if not isinstance(file, str) or not _PLAIN_FILE.fullmatch(file) or ".." in file:
            raise FormatError(f"{index_path}: shard file name {file!r} is not a plain "
                              ".safetensors file name in the same folder")
        for t in _from_safetensors(fs, posixpath.join(folder, file)):
            if t.name in tensors:
                raise FormatError(f"{folder}: duplicate tensor name {t.name!r} in "
                                  f"{tensors[t.name][0]} and {file}")
            tensors[t.name] = (file, t)
    for name, file in weight_map.items():
        if tensors.get(name, (None,))[0] != file:
            raise FormatError(f"{index_path}: names tensor {name!r} in {file}, which does "
                              "not hold it")
    return [t for _, t in tensors.values()]


def _from_npy(fs: FileSystem, path: str) -> SourceTensor:
    local = fs.local_path(path)
    try:
        a = (np.load(local, mmap_mode="r", allow_pickle=False) if local
             else np.load(io.BytesIO(fs.read_bytes(path)), allow_pickle=False))
    except (ValueError, OSError, EOFError) as e:
        raise FormatError(f"{path}: not a readable .npy array without pickled objects ({e})") from e
    return from_object(posixpath.basename(path)[:-4], a, where=path)


def _from_torch_file(fs: FileSystem, path: str) -> list[SourceTensor]:
    import torch

    local = fs.local_path(path)
    try:
        try:
            source = local or io.BytesIO(fs.read_bytes(path))
            state = torch.load(source, weights_only=True, map_location="cpu", mmap=bool(local))
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            state = torch.load(local, map_location="cpu", weights_only=True)  # legacy format
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        raise FormatError(f"{path}: not a plain PyTorch state_dict that a weights-only load "
                          f"accepts ({str(e).splitlines()[0]})") from e
    if not isinstance(state, Mapping):
        raise FormatError(f"{path}: holds a {type(state).__name__}, not a state_dict mapping "
                          "tensor names to tensors")
    return [from_object(k, v, where=path) for k, v in state.items()]
