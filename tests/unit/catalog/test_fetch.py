"""Reading versions back: bit-exact into memory, Hugging Face folders, damage detection."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.torch import load_file

import modelshard
from modelshard.catalog.commit import commit_version, staged_manifest
from modelshard.catalog.keys import LATEST
from modelshard.catalog.manifest import Manifest
from modelshard.errors import AlreadyExistsError, IntegrityError, UsageError
from modelshard.fs import LocalFileSystem
from modelshard.jobs.shardio import array_items, write_items
from modelshard.shards.planner import Piece, ShardPlan
from tests.store_data import assert_same, sample_state

STATE = sample_state()
SPLIT = 1024  # bytes: f32 (4800 bytes) is split by rows


@pytest.fixture(params=[SPLIT, 1 << 20], ids=["split", "whole"])
def pushed(request, catalog):
    return modelshard.push(STATE, "m", catalog=catalog, shard_size=request.param)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_pull_into_memory_is_bit_exact(catalog, pushed, framework):
    got = modelshard.pull("m", catalog=catalog, framework=framework)
    assert_same(got, STATE)


def test_pulled_arrays_are_writable(catalog, pushed):
    got = modelshard.pull("m", catalog=catalog)
    got["f32"][0, 0] = 1.0
    torch_got = modelshard.pull("m", catalog=catalog, framework="torch")
    torch_got["f32"][0, 0] = 1.0


def test_split_tensors_are_reassembled(catalog):
    m = modelshard.push(STATE, "m", catalog=catalog, shard_size=SPLIT)
    assert m.tensors["f32"].is_split and len(m.tensors["f32"].pieces) == 5
    assert_same(modelshard.pull("m", catalog=catalog), STATE)


def test_pulled_tensors_share_no_bytes(catalog, pushed):
    got = modelshard.pull("m", catalog=catalog)
    for name in got:  # each write lands in its own tensor only
        if got[name].size:
            got[name].reshape(-1).view(np.uint8)[:] = 0x5A
    for name, w in STATE.items():
        assert (got[name].reshape(-1).view(np.uint8) == 0x5A).all() or not w.size


def test_a_tensor_misaligned_in_its_shard_comes_back_aligned(catalog):
    # A shard written in name order by another tool: float32 at an odd offset after uint8.
    state = {"a": np.arange(3, dtype=np.uint8), "b": np.arange(5, dtype=np.float32)}

    def stage(version: str, staging: str) -> Manifest:
        items = array_items(sorted(state.items()))  # "b" after 3 bytes of "a": not aligned
        written = write_items(catalog.fs.uri(staging), "part.safetensors", items)
        plan = ShardPlan("part.safetensors", tuple(Piece(i.key, i.key, i.dtype, i.shape, None, 0) for i in items))
        return staged_manifest(catalog, "m", version, staging, [plan], [written],
                               shard_size=1 << 20, workers=1)

    m = commit_version(catalog, "m", None, stage, aliases=[LATEST])
    assert m.tensors["b"].pieces[0].begin % 4
    got = modelshard.pull("m", catalog=catalog)
    assert_same(got, state)
    assert got["b"].flags.aligned
    assert modelshard.pull("m", catalog=catalog, framework="torch")["b"].data_ptr() % 4 == 0


def load_folder(path) -> dict:
    """Load a pulled folder the way Hugging Face transformers does: index, then each file."""
    index = json.loads((path / "model.safetensors.index.json").read_text())
    out = {}
    for file in sorted(set(index["weight_map"].values())):
        part = load_file(path / file)
        assert all(index["weight_map"][n] == file for n in part)
        out.update(part)
    assert sorted(out) == sorted(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in STATE.values())
    return out


def test_pull_to_folder_loads_with_hugging_face_layout(catalog, pushed, tmp_path):
    uri = modelshard.pull("m", tmp_path / "out", catalog=catalog)
    assert uri == "file://" + str(tmp_path / "out")
    assert_same(load_folder(tmp_path / "out"), STATE)
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".")]


def test_unsplit_shards_are_copied_as_they_are(catalog, tmp_path):
    m = modelshard.push(STATE, "m", catalog=catalog, shard_size=8192)
    assert not any(t.is_split for t in m.tensors.values())
    modelshard.pull("m", tmp_path / "out", catalog=catalog)
    vdir = catalog.version_dir("m", m.version)
    for s in m.shards:
        stored = catalog.fs.read_bytes(f"{vdir}/{s.path}")
        assert (tmp_path / "out" / os.path.basename(s.path)).read_bytes() == stored


def test_pull_into_an_existing_empty_folder(catalog, pushed, tmp_path):
    (tmp_path / "out").mkdir()
    modelshard.pull("m", tmp_path / "out", catalog=catalog)
    assert_same(load_folder(tmp_path / "out"), STATE)


def test_pull_refuses_a_non_empty_folder(catalog, pushed, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(AlreadyExistsError, match="out is not empty"):
        modelshard.pull("m", tmp_path / "out", catalog=catalog)
    assert os.listdir(tmp_path / "out") == ["keep.txt"]


def damage(catalog, manifest, how: str) -> str:
    shard = f"{catalog.version_dir('m', manifest.version)}/{manifest.shards[0].path}"
    data = bytearray(catalog.fs.read_bytes(shard))
    if how == "flip":
        data[-1] ^= 1
    elif how == "truncate":
        data = data[:-1]
    with catalog.fs.open_write(shard) as f:
        f.write(bytes(data))
    return manifest.shards[0].path


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_shard_fails_pull_and_verify(catalog, pushed, tmp_path, how):
    shard = damage(catalog, pushed, how)
    said = r"(bytes \d+\.\.\d+ do not match their CRC32C|\d+ bytes where the manifest says)"
    with pytest.raises(IntegrityError, match=f"m@1: shard .*{shard}: {said}"):
        modelshard.pull("m", catalog=catalog)
    with pytest.raises(IntegrityError, match=shard):
        modelshard.pull("m", tmp_path / "out", catalog=catalog)
    assert not [n for n in os.listdir(tmp_path) if n.startswith("out")]  # nor a partial one
    count = len(pushed.shards)
    with pytest.raises(IntegrityError, match=f"1 of {count} shards damaged: .*{shard}"):
        modelshard.verify("m", catalog=catalog)


def test_verify_finds_a_missing_shard(catalog, pushed):
    catalog.fs.delete(f"{catalog.version_dir('m', '1')}/{pushed.shards[-1].path}")
    with pytest.raises(IntegrityError, match="no such file"):
        modelshard.verify("m", catalog=catalog)


def test_verify_checks_headers_against_the_manifest(catalog, monkeypatch):
    m = modelshard.push({"a": np.zeros(2, np.float32), "b": np.ones(2, np.float32)}, "m",
                        catalog=catalog)
    from modelshard.catalog import fetch
    real = fetch.read_header

    def swapped(fs, path):
        h = real(fs, path)
        return type(h)({"a": h.entries["b"], "b": h.entries["a"]}, h.metadata, h.data_start)

    monkeypatch.setattr(fetch, "read_header", swapped)
    with pytest.raises(IntegrityError, match="the header does not list"):
        modelshard.verify(f"m@{m.version}", catalog=catalog)


def test_unknown_framework(catalog, pushed):
    with pytest.raises(UsageError, match="framework='jax'"):
        modelshard.pull("m", catalog=catalog, framework="jax")


def test_pull_to_a_local_folder_with_the_local_fs(catalog, pushed, tmp_path):
    # dest may be any URI; the catalog may be elsewhere (HDFS in the integration run).
    modelshard.pull("m", "file://" + str(tmp_path / "o"), catalog=catalog)
    assert LocalFileSystem().exists(str(tmp_path / "o" / "model.safetensors.index.json"))
