"""The safetensors shard format: streamed writing, and a parser that refuses damaged headers."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open

from modelshard.errors import FormatError, IntegrityError
from modelshard.fs import LocalFileSystem
from modelshard.shards import dtypes, format
from modelshard.shards.format import ShardItem, check_tensor_name, read_header, write_shard
from tests.store_data import sample_state

FS = LocalFileSystem()


def items_of(state: dict[str, np.ndarray]) -> list[ShardItem]:
    out = []
    for name, a in state.items():
        buf = memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
        out.append(ShardItem(name, dtypes.of_numpy(a.dtype, where=name), a.shape,
                             lambda o, n, buf=buf: buf[o:o + n]))
    return out


def write(path, state) -> format.Written:
    with open(path, "wb") as f:
        return write_shard(f, items_of(state))


def test_written_shard_is_valid_safetensors_for_every_dtype(tmp_path):
    state = sample_state()
    path = tmp_path / "s.safetensors"
    written = write(path, state)
    data = path.read_bytes()
    assert written.size == len(data)
    assert written.sha256 == hashlib.sha256(data).hexdigest()
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == sorted(state)
        assert f.metadata() == {"format": "pt"}
        for name, a in state.items():
            t = f.get_tensor(name)
            assert tuple(t.shape) == a.shape
            assert t.dtype == dtypes.of_numpy(a.dtype, where=name).torch
            raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            assert raw == a.tobytes(), name


def test_header_round_trip_gives_absolute_offsets(tmp_path):
    state = sample_state()
    path = tmp_path / "s.safetensors"
    written = write(path, state)
    header = read_header(FS, str(path))
    assert header.data_start % 8 == 0
    assert header.metadata == {"format": "pt"}
    for name, a in state.items():
        e = header.entries[name]
        assert (e.begin, e.end) == written.offsets[name]
        assert FS.read_range(str(path), e.begin, e.nbytes) == a.tobytes()
        assert e.shape == a.shape


def test_write_streams_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(format, "CHUNK", 64)
    asked = []
    buf = memoryview(np.arange(100, dtype=np.float64).view(np.uint8))

    def read(offset, n):
        asked.append(n)
        return buf[offset:offset + n]

    item = ShardItem("x", dtypes.DTYPES["F64"], (100,), read)
    with open(tmp_path / "s", "wb") as f:
        write_shard(f, [item])
    assert max(asked) == 64 and sum(asked) == 800


def test_short_source_is_an_integrity_error(tmp_path):
    item = ShardItem("x", dtypes.DTYPES["F32"], (4,), lambda o, n: b"\0" * (n - 1))
    with open(tmp_path / "s", "wb") as f, pytest.raises(IntegrityError, match="'x'"):
        write_shard(f, [item])


def raw_file(tmp_path, header: dict | bytes, data: bytes = b"", length: int | None = None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return str(path)


@pytest.mark.parametrize("header, data, match", [
    ({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8,
     "tensor 'w': unknown dtype 'C64'"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8,
     "tensor 'w': holds 8 bytes but F32 \\(3,\\) needs 12"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8,
     "tensor 'w': bytes .* run past the end of the file"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12,
     "tensors 'a' and 'b' overlap"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"",
     "shape \\[-1\\] is not a list of non-negative integers"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4,
     "data_offsets \\[4, 0\\] is not"),
    ({"w": [1, 2]}, b"", "tensor 'w': the header entry is not an object"),
    ({"__metadata__": {"a": 1}}, b"", "__metadata__ must map strings to strings"),
    ([1, 2], b"", "not a JSON object"),
    (b'{"w": ', b"", "header: not valid JSON"),
    (b'{"a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}, '
     b'"a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}', b"",
     "duplicate tensor name 'a'"),
    ({"x/../../etc": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}, b"",
     "tensor name 'x/../../etc' is not allowed"),
    ({"a\u0000b": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}, b"",
     "tensor name 'a\\\\x00b' is not allowed"),
])
def test_bad_headers_are_format_errors_naming_the_file(tmp_path, header, data, match):
    path = raw_file(tmp_path, header, data)
    with pytest.raises(FormatError, match=match) as e:
        read_header(FS, path)
    assert path in str(e.value)


def test_header_length_past_end_of_file(tmp_path):
    path = raw_file(tmp_path, {}, length=1000)
    with pytest.raises(FormatError, match="header length 1000 runs past the end of the file"):
        read_header(FS, path)


def test_file_shorter_than_the_length_prefix(tmp_path):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\1\0")
    with pytest.raises(FormatError, match="too short"):
        read_header(FS, str(path))


def test_truncated_shard_is_detected(tmp_path):
    path = tmp_path / "s.safetensors"
    write(path, sample_state())
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(FormatError, match="run past the end of the file"):
        read_header(FS, str(path))


@pytest.mark.parametrize("name", ["", "a/b", "..", "x..y", "nul\0", 3, None, b"bytes", "\ud800"])
def test_bad_tensor_names(name):
    with pytest.raises(FormatError, match="tensor name"):
        check_tensor_name(name, where="src")


@pytest.mark.parametrize("name", ["w", "model.layers.0.weight", "größe 名前 😀", "a.b-c_d[0]"])
def test_good_tensor_names(name):
    assert check_tensor_name(name, where="src") == name
