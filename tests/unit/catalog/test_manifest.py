"""The manifest: round trip, Hugging Face index, and refusal of anything malformed."""

from __future__ import annotations

import json

import numpy as np
import pytest

import modelshard
from modelshard.catalog.manifest import MANIFEST, SCHEMA_VERSION, Manifest
from modelshard.errors import FormatError
from modelshard.shards.checksums import seal


@pytest.fixture
def manifest(catalog) -> Manifest:
    state = {"emb": np.ones((12, 100), np.float32), "b": np.zeros(3, np.int8)}
    return modelshard.push(state, "m", catalog=catalog, shard_size=1600)


def test_round_trip(manifest):
    assert Manifest.from_json(manifest.to_json(), where="x") == manifest


def test_content(manifest, catalog):
    doc = json.loads(catalog.fs.read_bytes(f"{catalog.version_dir('m', '1')}/{MANIFEST}"))
    assert doc["schema_version"] == SCHEMA_VERSION == 1
    assert (doc["name"], doc["version"], doc["total_size"]) == ("m", "1", 4803)
    assert doc["metadata"] == {"total_size": 4803}
    emb = doc["tensors"]["emb"]
    assert emb["dtype"] == "F32" and emb["shape"] == [12, 100]
    assert [p["rows"] for p in emb["pieces"]] == [[0, 4], [4, 8], [8, 12]]
    for p in emb["pieces"]:
        # Absolute offsets: one range read returns exactly the piece's bytes.
        shard = f"{catalog.version_dir('m', '1')}/{p['shard']}"
        assert catalog.fs.read_range(shard, p["begin"], p["end"] - p["begin"]) == \
            np.ones((4, 100), np.float32).tobytes()
    assert all(len(s["sha256"]) == 64 for s in doc["shards"])
    assert set(doc["weight_map"]) == {"emb", "b"}


def test_hf_index(manifest):
    index = manifest.hf_index()
    assert index == {"metadata": {"total_size": 4803}, "weight_map": manifest.weight_map}
    assert manifest.weight_map["emb"] != manifest.weight_map["b"]  # a split tensor has its own file


def edit(manifest: Manifest, change) -> bytes:
    """The manifest changed by ``change`` and sealed again, as a careless writer would."""
    doc = json.loads(manifest.to_json())
    doc.pop("sealed_crc32c")
    change(doc)
    return seal(doc)


def test_every_changed_byte_of_a_manifest_is_found(manifest):
    raw = manifest.to_json()
    assert b'"chunk_crc32c"' in raw and raw.endswith(b'"}')
    for i in range(len(raw)):
        for bit in (0x01, 0x10):
            damaged = raw[:i] + bytes([raw[i] ^ bit]) + raw[i + 1:]
            with pytest.raises(FormatError, match="m.json"):
                Manifest.from_json(damaged, where="m.json")


def test_a_manifest_from_before_the_checksums_still_loads(manifest):
    doc = json.loads(manifest.to_json())
    doc.pop("sealed_crc32c")
    for s in doc["shards"]:
        for key in ("crc32c", "chunk_ends", "chunk_crc32c"):
            s.pop(key)
    old = Manifest.from_json(json.dumps(doc).encode(), where="old.json")
    assert not old.has_checksums and manifest.has_checksums
    assert old.tensors == manifest.tensors and [s.sha256 for s in old.shards] == [
        s.sha256 for s in manifest.shards]


def test_checksums_that_do_not_cover_the_shard_are_refused(manifest):
    def shorten(d):
        d["shards"][0]["chunk_ends"][-1] -= 1
    with pytest.raises(FormatError, match="do not cover the shard"):
        Manifest.from_json(edit(manifest, shorten), where="m.json")


def test_unknown_schema_version(manifest):
    raw = edit(manifest, lambda d: d.update(schema_version=2))
    with pytest.raises(FormatError, match="where.json: manifest schema_version 2 is unknown.*"
                                          "upgrade modelshard"):
        Manifest.from_json(raw, where="where.json")


def first_piece(d):
    return d["tensors"]["emb"]["pieces"][0]


@pytest.mark.parametrize("change, match", [
    (lambda d: d["shards"][0].update(path="../../etc/passwd"), "shard path"),
    (lambda d: d["shards"][0].update(path="shards/a/../../x.safetensors"), "shard path"),
    (lambda d: d["shards"][0].update(sha256="xyz"), "sha256"),
    (lambda d: d["weight_map"].update(emb="../evil.safetensors"), "file name"),
    (lambda d: d["weight_map"].pop("b"), "weight_map"),
    (lambda d: first_piece(d).update(end=10**9), "outside its shard"),
    (lambda d: first_piece(d).update(shard="shards/nope.safetensors"), "outside its shard"),
    (lambda d: first_piece(d).update(rows=[1, 4]), "wrong bytes or rows"),
    (lambda d: d["tensors"]["emb"]["pieces"].pop(), "do not cover"),
    (lambda d: d["tensors"]["emb"].update(dtype="Q8"), "unknown dtype 'Q8'"),
    (lambda d: d["tensors"]["emb"].update(shape=[12, -1]), "non-negative"),
    (lambda d: d["tensors"].update({"a/b": d["tensors"]["b"]}), "tensor name 'a/b'"),
    (lambda d: d.update(name="../x"), "model name"),
    (lambda d: d["metadata"].update(total_size=1), "total_size"),
    (lambda d: d.pop("shards"), "KeyError"),
])
def test_malformed_manifest(manifest, change, match):
    with pytest.raises(FormatError, match=match):
        Manifest.from_json(edit(manifest, change), where="m.json")


@pytest.mark.parametrize("raw", [b"\xff", b"{", b"[]"])
def test_not_a_manifest(raw):
    with pytest.raises(FormatError, match="m.json"):
        Manifest.from_json(raw, where="m.json")
