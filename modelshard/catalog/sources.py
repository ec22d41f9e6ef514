"""What ``push`` reads: every supported source becomes a :class:`Source`: a list of
:class:`SourceTensor`, whose bytes are read on demand, so a model is never held twice in
memory while it is pushed, and, for a folder, its other files as assets.

Sources: an in-memory mapping of numpy arrays / torch tensors; a ``.safetensors`` file; a
PyTorch state_dict file (``.pt``, ``.pth``, ``.bin``, loaded with ``weights_only=True``, never
unpickling code); a Hugging Face model folder (``model.safetensors``, shards listed by
``model.safetensors.index.json``, or ``pytorch_model.bin`` and the shards listed by
``pytorch_model.bin.index.json``, converted); a folder of ``.npy`` files (one tensor per file,
named by the file). Paths may be local or any URI :func:`modelshard.fs.get_fs` knows.

Every other file of a folder (config.json, tokenizer files, generation config, model card,
subfolders such as ``1_Pooling/``) is an asset of the version, stored byte for byte, within
:data:`MAX_ASSET_BYTES` a file, :data:`MAX_ASSETS_BYTES` and :data:`MAX_ASSETS` files in all;
hidden files and weights in other formats (``tf_model.h5``, ``.onnx``...) are skipped and
reported.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelshard.catalog.manifest import INDEX, check_asset_name
from modelshard.errors import FormatError, NotFoundError, UsageError
from modelshard.fs import FileInfo, FileSystem, get_fs
from modelshard.shards import dtypes
from modelshard.shards.format import check_tensor_name, read_header
from modelshard.shards.planner import TensorMeta

SINGLE = "model.safetensors"
TORCH_SINGLE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
# Weights in formats push does not read: never stored as assets (they would be the bulk).
OTHER_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".ot",
                 ".onnx", ".onnx_data", ".gguf", ".tflite", ".pb", ".npz", ".npy", ".pkl")
MAX_ASSET_BYTES = 64 << 20  # a tokenizer.json of a large vocabulary is about 30 MB
MAX_ASSETS_BYTES = 256 << 20
MAX_ASSETS = 1000
_PLAIN_FILE = re.compile(r"[^/\\\0]+")


@dataclass(frozen=True)
class SourceTensor(TensorMeta):
    """A tensor to push; ``read(offset, length)`` returns that slice of its bytes."""

    read: Callable[[int, int], bytes | memoryview]


@dataclass(frozen=True)
class SourceAsset:
    """A non-tensor file to push as an asset named ``name``: ``path`` on ``fs``."""

    name: str
    size: int
    fs: FileSystem
    path: str


@dataclass(frozen=True)
class Source:
    """What a push stores: the tensors (sorted by name), the assets (sorted by name) and the
    files of the folder it skipped, with the reason."""

    tensors: list[SourceTensor]
    assets: list[SourceAsset] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def read_source(source: Any) -> Source:
    """The tensors and assets of ``source``. FormatError names the file and tensor;
    UsageError names an asset over the limits."""
    if isinstance(source, Mapping):
        return Source(_sorted([from_object(k, v, where="in-memory state dict")
                               for k, v in source.items()]))
    if not isinstance(source, str | os.PathLike):
        raise UsageError(f"push source {type(source).__name__}: give a path, a URI or a dict "
                         "of numpy arrays / torch tensors")
    fs, path = get_fs(os.fspath(source))
    try:
        info = fs.stat(path)
    except NotFoundError:
        raise NotFoundError(f"push source {source}: no such file or folder") from None
    if info.is_dir:
        return _from_folder(fs, path)
    if path.endswith(".safetensors"):
        return Source(_sorted(_from_safetensors(fs, path)))
    if path.endswith(TORCH_SUFFIXES):
        return Source(_sorted(_from_torch_file(fs, path)))
    raise UsageError(f"push source {source}: unknown kind of file; give a .safetensors, "
                     f"{'/'.join(TORCH_SUFFIXES)} file or a model folder")


def open_source(source: Any) -> list[SourceTensor]:
    """The tensors of ``source``, sorted by name (see :func:`read_source`)."""
    return read_source(source).tensors


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


def _walk(fs: FileSystem, folder: str, prefix: str = "") -> Iterator[tuple[str, FileInfo | None]]:
    """``(name relative to the folder, info)`` of every file below ``folder``; a hidden folder
    (``.git``, ``.cache``) is not entered and comes as ``("name/", None)``."""
    for info in fs.ls(folder):
        name = prefix + posixpath.basename(info.path)
        if info.is_dir and name.rpartition("/")[2].startswith("."):
            yield name + "/", None
        elif info.is_dir:
            yield from _walk(fs, info.path, name + "/")
        else:
            yield name, info


def _from_folder(fs: FileSystem, path: str) -> Source:
    files = dict(_walk(fs, path))
    top = {n for n in files if "/" not in n}
    if INDEX in top:
        tensors, used = _from_hf_index(fs, path, INDEX, ".safetensors", _from_safetensors)
    elif SINGLE in top:
        tensors, used = _from_safetensors(fs, posixpath.join(path, SINGLE)), {SINGLE}
    elif TORCH_INDEX in top:
        tensors, used = _from_hf_index(fs, path, TORCH_INDEX, ".bin", _from_torch_file)
    elif TORCH_SINGLE in top:
        tensors, used = _from_torch_file(fs, posixpath.join(path, TORCH_SINGLE)), {TORCH_SINGLE}
    elif npys := sorted(n for n in top if n.endswith(".npy")):
        tensors, used = [_from_npy(fs, posixpath.join(path, n)) for n in npys], set(npys)
    else:
        raise UsageError(f"push source {path}: the folder holds no {SINGLE}, {INDEX}, "
                         f"{TORCH_SINGLE}, {TORCH_INDEX} or .npy files")
    return Source(_sorted(tensors), *_assets(fs, path, files, used))


def _assets(fs: FileSystem, folder: str, files: dict[str, FileInfo | None], used: set[str]
            ) -> tuple[list[SourceAsset], list[tuple[str, str]]]:
    """The folder's files other than the weights read (``used``) as assets, checked against
    the limits, and the files skipped with the reason."""
    assets, skipped = [], []
    for name, info in sorted(files.items()):
        if name in used:
            continue
        if info is None or any(part.startswith(".") for part in name.split("/")):
            skipped.append((name, "hidden file or folder"))
        elif name.endswith(OTHER_WEIGHTS):
            skipped.append((name, "weights in another format or not listed by the index"))
        else:
            try:
                check_asset_name(name)
            except ValueError as e:
                raise UsageError(f"push source {folder}: {e}; rename or remove that file") from None
            if info.size > MAX_ASSET_BYTES:
                raise UsageError(f"push source {folder}: {name} has {info.size} bytes, over the "
                                 f"{MAX_ASSET_BYTES >> 20} MiB limit of a non-tensor file; remove "
                                 "it from the folder (store large data elsewhere)")
            assets.append(SourceAsset(name, info.size, fs, info.path))
    total = sum(a.size for a in assets)
    if len(assets) > MAX_ASSETS or total > MAX_ASSETS_BYTES:
        raise UsageError(f"push source {folder}: {len(assets)} non-tensor files of {total} bytes, "
                         f"over the limit of {MAX_ASSETS} files and {MAX_ASSETS_BYTES >> 20} MiB "
                         "in all; remove what the model does not need from the folder")
    return assets, skipped


def _from_hf_index(fs: FileSystem, folder: str, index: str, suffix: str,
                   read: Callable[[FileSystem, str], list[SourceTensor]]
                   ) -> tuple[list[SourceTensor], set[str]]:
    """The tensors of the weight files a Hugging Face index lists (safetensors, or PyTorch
    ``.bin`` files), and the names of the files used."""
    index_path = posixpath.join(folder, index)
    try:
        weight_map = json.loads(fs.read_bytes(index_path))["weight_map"]
        files = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise FormatError(f"{index_path}: not a Hugging Face index with a weight_map "
                          f"({type(e).__name__}: {e})") from e
    tensors: dict[str, tuple[str, SourceTensor]] = {}
    for file in files:
        # The index is input: its file names must not lead out of the folder.
        if not isinstance(file, str) or not _PLAIN_FILE.fullmatch(file) or ".." in file \
                or not file.endswith(suffix):
            raise FormatError(f"{index_path}: shard file name {file!r} is not a plain "
                              f"{suffix} file name in the same folder")
        for t in read(fs, posixpath.join(folder, file)):
            if t.name in tensors:
                raise FormatError(f"{folder}: duplicate tensor name {t.name!r} in "
                                  f"{tensors[t.name][0]} and {file}")
            tensors[t.name] = (file, t)
    for name, file in weight_map.items():
        if tensors.get(name, (None,))[0] != file:
            raise FormatError(f"{index_path}: names tensor {name!r} in {file}, which does "
                              "not hold it")
    return [t for _, t in tensors.values()], {index, *files}


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
