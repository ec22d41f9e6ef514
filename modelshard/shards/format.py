"""The safetensors file format, read with a validating parser and written as a stream.

A file is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON (``{name: {dtype,
shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}``, offsets relative to the
end of the header), then the tensor bytes, C order, little-endian. Every shard modelshard
writes is such a file, loadable by ``safetensors.safe_open`` and Hugging Face tools.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from modelshard import safejson
from modelshard.errors import FormatError, IntegrityError
from modelshard.fs.base import FileSystem
from modelshard.shards import dtypes
from modelshard.shards.checksums import Checksums, ChunkWriter, chunk_ends
from modelshard.shards.dtypes import DType

# The safetensors library refuses larger headers; a bigger length means a damaged file.
MAX_HEADER = 100 * 1024 * 1024
CHUNK = 8 * 1024 * 1024
# Hugging Face transformers refuses a file whose metadata lacks a known "format".
METADATA = {"format": "pt"}


@dataclass(frozen=True)
class Entry:
    """One tensor in a safetensors file; ``begin``/``end`` are absolute file offsets."""

    key: str
    dtype: DType
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    entries: dict[str, Entry]  # in file order
    metadata: dict[str, str]
    data_start: int


def nbytes_of(shape: Sequence[int], dtype: DType) -> int:
    return math.prod(shape) * dtype.itemsize


def check_tensor_name(name: object, *, where: str) -> str:
    """A tensor name is any non-empty string without ``/``, ``..`` or NUL. Names are never used
    as paths; refusing these keeps a name from meaning a path to any tool downstream."""
    if not isinstance(name, str):
        raise FormatError(f"{where}: tensor name {name!r} is a {type(name).__name__}, not a "
                          "string; tensor names must be strings")
    bad = not name or "/" in name or ".." in name or "\0" in name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        bad = True
    if bad:
        raise FormatError(f"{where}: tensor name {name!r} is not allowed: it must be non-empty "
                          "UTF-8 without '/', '..' or NUL; rename the tensor")
    return name


def read_header(fs: FileSystem, path: str) -> Header:
    """Parse and validate the header of the safetensors file at ``path``.

    Raises FormatError naming the file (and tensor) for a header that runs past the end of
    the file, bad JSON, an unknown dtype, a byte count that does not match the shape, or
    offsets that are out of range or overlap.
    """
    size = fs.stat(path).size
    if size < 8:
        raise FormatError(f"{path}: {size} bytes is too short for a safetensors file; "
                          "the file is truncated or not safetensors")
    (n,) = struct.unpack("<Q", fs.read_range(path, 0, 8))
    if n > MAX_HEADER or 8 + n > size:
        raise FormatError(f"{path}: header length {n} runs past the end of the file "
                          f"({size} bytes); the file is truncated or not safetensors")
    return parse_header(fs.read_range(path, 8, n), file_size=size, where=path)


def _no_duplicates(where: str) -> Callable[[list], dict]:
    def hook(pairs: list) -> dict:
        seen: dict = {}
        for key, value in pairs:
            if key in seen:
                raise FormatError(f"{where}: duplicate tensor name {key!r} in the header")
            seen[key] = value
        return seen

    return hook


def parse_header(raw: bytes, *, file_size: int, where: str) -> Header:
    """Validate the JSON header ``raw`` of a file of ``file_size`` bytes."""
    data_start = 8 + len(raw)
    doc = safejson.loads(raw, where=f"{where}: header", object_pairs_hook=_no_duplicates(where))
    if not isinstance(doc, dict):
        raise FormatError(f"{where}: the header is not a JSON object; not a safetensors file")
    metadata = doc.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict)
            and all(isinstance(v, str) for v in metadata.values())):
        raise FormatError(f"{where}: __metadata__ must map strings to strings")
    entries = []
    for key, spec in doc.items():
        at = f"{where}: tensor {key!r}"
        check_tensor_name(key, where=where)
        if not isinstance(spec, dict):
            raise FormatError(f"{at}: the header entry is not an object")
        dtype = dtypes.get(spec.get("dtype"), where=at)
        shape, offsets = spec.get("shape"), spec.get("data_offsets")
        if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
            raise FormatError(f"{at}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(_is_count(o) for o in offsets) and offsets[0] <= offsets[1]):
            raise FormatError(f"{at}: data_offsets {offsets!r} is not [begin, end] with "
                              "0 <= begin <= end")
        begin, end = data_start + offsets[0], data_start + offsets[1]
        expected = nbytes_of(shape, dtype)
        if end - begin != expected:
            raise FormatError(f"{at}: holds {end - begin} bytes but {dtype.name} "
                              f"{tuple(shape)} needs {expected}")
        if end > file_size:
            raise FormatError(f"{at}: bytes {begin}..{end} run past the end of the file "
                              f"({file_size} bytes); the file is truncated")
        entries.append(Entry(key, dtype, tuple(shape), begin, end))
    entries.sort(key=lambda e: (e.begin, e.end))
    for prev, cur in zip(entries, entries[1:], strict=False):
        if cur.begin < prev.end:
            raise FormatError(f"{where}: tensors {prev.key!r} and {cur.key!r} overlap "
                              f"(bytes {prev.begin}..{prev.end} and {cur.begin}..{cur.end})")
    return Header({e.key: e for e in entries}, metadata, data_start)


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


# -- writing -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardItem:
    """A tensor (or a row range of one) to write: ``read(offset, length)`` returns that many
    bytes of it, so a shard is written from any source without loading it whole."""

    key: str
    dtype: DType
    shape: tuple[int, ...]
    read: Callable[[int, int], bytes | memoryview]

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.shape, self.dtype)


@dataclass(frozen=True)
class Written:
    size: int
    sha256: str
    offsets: dict[str, tuple[int, int]]  # key -> absolute (begin, end)
    checksums: Checksums


def encode_header(items: Sequence[ShardItem]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The length prefix and JSON header for ``items`` in order, padded so the data starts at
    a multiple of 8, and each item's absolute (begin, end) offsets."""
    doc: dict[str, object] = {"__metadata__": METADATA}
    relative, pos = {}, 0
    for item in items:
        relative[item.key] = (pos, pos + item.nbytes)
        doc[item.key] = {"dtype": item.dtype.name, "shape": list(item.shape),
                         "data_offsets": [pos, pos + item.nbytes]}
        pos += item.nbytes
    raw = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)
    start = 8 + len(raw)
    offsets = {k: (start + b, start + e) for k, (b, e) in relative.items()}
    return struct.pack("<Q", len(raw)) + raw, offsets


def write_shard(out: BinaryIO, items: Sequence[ShardItem],
                progress: Callable[[int], object] | None = None) -> Written:
    """Stream ``items`` into ``out`` as one safetensors file, hashing while writing: memory
    use is one chunk, whatever the shard size. Both the sha256 and the CRC32C checksums
    (:mod:`modelshard.shards.checksums`) come from this one pass. ``progress(n)`` is told
    of every n bytes."""
    header, offsets = encode_header(items)
    ends = chunk_ends(data_start=len(header), spans=offsets.values(),
                      size=len(header) + sum(i.nbytes for i in items))
    crcs = ChunkWriter(ends, sha256=True)
    size = 0
    for chunk in _chunks(header, items):
        out.write(chunk)
        crcs.update(chunk)
        size += len(chunk)
        if progress:
            progress(len(chunk))
    return Written(size, crcs.sha256(), offsets, crcs.finish())


def _chunks(header: bytes, items: Iterable[ShardItem]) -> Iterable[bytes | memoryview]:
    yield header
    for item in items:
        for pos in range(0, item.nbytes, CHUNK):
            want = min(CHUNK, item.nbytes - pos)
            chunk = item.read(pos, want)
            if len(chunk) != want:
                raise IntegrityError(f"tensor {item.key!r}: its source gave {len(chunk)} bytes "
                                     f"at offset {pos}, expected {want}; the source is truncated")
            yield chunk

