"""The verbs end to end on a catalog; every bad input is refused and changes nothing."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import modelshard
from modelshard.errors import AlreadyExistsError, FormatError, NotFoundError, UsageError
from tests.store_data import assert_same, sample_state, tree

STATE = sample_state()


def test_public_verbs():
    assert {"push", "pull", "ls", "show", "verify", "rm", "alias", "gc"} <= set(modelshard.__all__)


def test_round_trip_through_every_source_kind(catalog, tmp_path):
    torch.save({"a": torch.arange(6, dtype=torch.int32)}, tmp_path / "m.pt")
    save_file({"a": torch.arange(6, dtype=torch.int32)}, tmp_path / "m.safetensors")
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "a.npy", np.arange(6, dtype=np.int32))
    for source in (tmp_path / "m.pt", str(tmp_path / "m.safetensors"), tmp_path / "npy",
                   {"a": np.arange(6, dtype=np.int32)}):
        m = modelshard.push(source, "m", catalog=catalog)
        assert_same(modelshard.pull(f"m@{m.version}", catalog=catalog),
                    {"a": np.arange(6, dtype=np.int32)})


def test_pull_push_pull_of_a_folder_is_identical(catalog, tmp_path):
    modelshard.push(STATE, "m", catalog=catalog, shard_size=1024)
    modelshard.pull("m", tmp_path / "hf", catalog=catalog)
    m2 = modelshard.push(tmp_path / "hf", "copy", catalog=catalog, shard_size=1024)
    assert_same(modelshard.pull("copy", catalog=catalog), STATE)
    assert m2.weight_map == modelshard.show("m", catalog=catalog).manifest.weight_map


def test_ls_and_show(catalog):
    modelshard.push(STATE, "b", catalog=catalog)
    modelshard.push(STATE, "a", catalog=catalog, shard_size=1024, aliases=["prod"])
    rows = modelshard.ls(catalog=catalog)
    assert [(r.name, r.version, r.aliases) for r in rows] == [
        ("a", "1", ("latest", "prod")), ("b", "1", ("latest",))]
    assert rows[0].total_size == sum(a.nbytes for a in STATE.values())
    report = modelshard.show("a@prod", catalog=catalog)
    assert report.info == rows[0]
    assert report.spread.count == rows[0].shards > 1
    assert report.spread.imbalance < 1.25
    assert report.split_tensors == ("f32",)
    doc = report.to_dict()
    json.dumps(doc)
    assert doc["tensor_list"]["bf16"] == {"dtype": "BF16", "shape": [33, 4], "pieces": 1}


def test_ls_of_an_empty_or_unknown_model(catalog):
    modelshard.push(STATE, "a", catalog=catalog)
    assert modelshard.ls("zzz", catalog=catalog) == []


def test_verify_returns_the_version(catalog):
    modelshard.push(STATE, "a", catalog=catalog)
    assert modelshard.verify("a", catalog=catalog).version == "1"


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def bad_file(tmp_path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


BAD_SOURCES = {
    "unknown dtype": (lambda p: bad_file(p, "d.safetensors", safetensors_bytes(
        {"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"\0\0")),
        FormatError, "d.safetensors: tensor 'w': unknown dtype 'F8_E4M3'"),
    "header past end": (lambda p: bad_file(p, "h.safetensors", struct.pack("<Q", 10**6) + b"{}"),
                        FormatError, "h.safetensors: header length 1000000 runs past the end"),
    "overlapping offsets": (lambda p: bad_file(p, "o.safetensors", safetensors_bytes(
        {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
         "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, b"\0" * 6)),
        FormatError, "o.safetensors: tensors 'a' and 'b' overlap"),
    "truncated": (lambda p: bad_file(p, "t.safetensors", safetensors_bytes(
        {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 10)),
        FormatError, "t.safetensors: tensor 'a': bytes .* run past the end"),
    "non-string name": (lambda p: {7: np.zeros(1)}, FormatError, "tensor name 7 is a int"),
    "slash in name": (lambda p: {"a/../../b": np.zeros(1)}, FormatError, "'a/../../b'"),
    "dotdot name": (lambda p: {"..": np.zeros(1)}, FormatError, "tensor name '..'"),
    "nul in name": (lambda p: {"a\0b": np.zeros(1)}, FormatError, "not allowed"),
    "unsupported numpy dtype": (lambda p: {"c": np.zeros(1, np.complex128)}, FormatError,
                                "tensor 'c': numpy dtype complex128"),
    "missing source": (lambda p: str(p / "none.pt"), NotFoundError, "none.pt: no such file"),
}


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_bad_input_changes_nothing(catalog, tmp_path, case):
    make, error, match = BAD_SOURCES[case]
    modelshard.push(STATE, "m", catalog=catalog)
    before = tree(catalog)
    with pytest.raises(error, match=match):
        modelshard.push(make(tmp_path), "m", catalog=catalog)
    assert tree(catalog) == before


def test_duplicate_names_in_a_header_change_nothing(catalog, tmp_path):
    raw = (b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
           b'"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}')
    path = bad_file(tmp_path, "dup.safetensors", struct.pack("<Q", len(raw)) + raw + b"xy")
    modelshard.push(STATE, "m", catalog=catalog)
    before = tree(catalog)
    with pytest.raises(FormatError, match="dup.safetensors: duplicate tensor name 'a'"):
        modelshard.push(path, "m", catalog=catalog)
    assert tree(catalog) == before


@pytest.mark.parametrize("kwargs, error, match", [
    ({"key": "m@prod"}, UsageError, "'prod' is an alias; push to m and pass aliases"),
    ({"key": "m@1"}, AlreadyExistsError, "m@1 already exists"),
    ({"key": "../m"}, UsageError, "model name '../m'"),
    ({"key": "m", "shard_size": 0}, UsageError, "shard_size=0"),
    ({"key": "m", "workers": 0}, UsageError, "workers=0"),
    ({"key": "m", "aliases": ["9lives"]}, UsageError, "alias '9lives'"),
    ({"key": "m", "aliases": ["a/b"]}, UsageError, "alias 'a/b'"),
])
def test_bad_push_arguments_change_nothing(catalog, kwargs, error, match):
    modelshard.push(STATE, "m", catalog=catalog)
    before = tree(catalog)
    with pytest.raises(error, match=match):
        modelshard.push(STATE, catalog=catalog, **kwargs)
    assert tree(catalog) == before


def test_aliases_given_as_one_string(catalog):
    modelshard.push(STATE, "m", catalog=catalog, aliases="prod")
    assert catalog.aliases("m") == {"latest": "1", "prod": "1"}


@pytest.mark.parametrize("bad", [-1, "1d", True])
def test_gc_bad_age(catalog, bad):
    with pytest.raises(UsageError, match="older_than"):
        modelshard.gc(older_than=bad, catalog=catalog)


def test_unknown_manifest_schema_version_in_the_catalog(catalog):
    modelshard.push(STATE, "m", catalog=catalog)
    path = f"{catalog.version_dir('m', '1')}/manifest.json"
    doc = json.loads(catalog.fs.read_bytes(path))
    doc["schema_version"] = 99
    with catalog.fs.open_write(path) as f:
        f.write(json.dumps(doc).encode())
    for call in (lambda: modelshard.show("m", catalog=catalog),
                 lambda: modelshard.pull("m", catalog=catalog),
                 lambda: modelshard.ls(catalog=catalog)):
        with pytest.raises(FormatError, match="manifest.json: manifest schema_version 99 is "
                                              "unknown; this modelshard reads version 1"):
            call()
