"""A version's non-tensor files (config, tokenizer, model card...): stored as checked assets,
pulled back byte for byte, listed, carried by copy and reshard, checked by verify and on every
read, preloaded; hostile names and files over the limits are refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import modelshard
from modelshard import api, placement
from modelshard.catalog import sources
from modelshard.catalog.catalog import Catalog
from modelshard.catalog.manifest import MANIFEST, Manifest
from modelshard.cli import main
from modelshard.errors import FormatError, IntegrityError, UsageError
from modelshard.jobs.reshard.driver import reshard
from modelshard.shards.checksums import CHUNK_BYTES, seal
from tests.store_data import assert_same, sample_state

STATE = sample_state()
# The files of a Hugging Face folder besides its weights, as a user's would hold them.
FILES = {
    "config.json": b'{"model_type": "bert", "hidden_size": 8}\n',
    "tokenizer.json": os.urandom(3 * CHUNK_BYTES + 17),  # several 1 MiB chunks
    "README.md": "# a model card \u2713\n".encode(),
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    "added_tokens.json": b"",  # empty files too
}
SKIPPED = {".gitattributes": b"*.bin lfs", ".git/HEAD": b"ref", "tf_model.h5": b"\x89HDF"}


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "model"
    for name, data in {**FILES, **SKIPPED}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    save_file(STATE, str(root / "model.safetensors"))
    return root


def files_of(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def asset_path(catalog, m, name):
    return os.path.join(catalog.version_dir(m.name, m.version), "assets", name)


def test_push_stores_the_folder_and_pull_writes_it_back(catalog, folder, tmp_path):
    m = api.push(folder, "m", catalog=catalog, shard_size=2048)
    assert sorted(m.assets) == sorted(FILES)
    assert json.loads(m.attrs["push.skipped"]) == [".git/", ".gitattributes", "tf_model.h5"]
    assert m.assets["tokenizer.json"].checksums.chunks and m.assets["added_tokens.json"].size == 0
    api.pull("m", tmp_path / "out", catalog=catalog)
    pulled = files_of(tmp_path / "out")
    assert {n: pulled[n] for n in FILES} == FILES  # byte for byte
    assert_same(api.pull("m", catalog=catalog), STATE)
    assert set(pulled) - set(FILES) == {"model.safetensors.index.json", *m.weight_map.values()}


def test_show_lists_them_and_old_manifests_still_load(catalog, folder, capsys):
    api.push(folder, "m", catalog=catalog)
    assert main(["show", "m", "--catalog", catalog.uri]) == 0
    out = capsys.readouterr().out
    assert "5 assets" in out and "1_Pooling/config.json" in out and "tokenizer.json  3.0 MiB" in out
    shown = api.show("m", catalog=catalog).to_dict()
    assert {a["name"]: a["size"] for a in shown["assets"]} == {n: len(d) for n, d in FILES.items()}
    # A version without assets writes no "assets" key: manifests read as before.
    plain = api.push(STATE, "plain", catalog=catalog)
    raw = plain.to_json()
    assert b'"assets"' not in raw and Manifest.from_json(raw, where="x").assets == {}


def test_a_damaged_asset_is_found_by_every_read(catalog, folder, tmp_path):
    m = api.push(folder, "m", catalog=catalog)
    path = asset_path(catalog, m, "tokenizer.json")
    data = bytearray(Path(path).read_bytes())
    data[CHUNK_BYTES + 5] ^= 0x01
    Path(path).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="tokenizer.json.*do not match their CRC32C"):
        api.pull("m", tmp_path / "out", catalog=catalog)
    assert not (tmp_path / "out").exists()
    with pytest.raises(IntegrityError, match="1 of 1 shards and 5 assets damaged.*tokenizer.json"):
        api.verify("m", catalog=catalog)
    with pytest.raises(IntegrityError, match="tokenizer.json"):
        placement.copy("m", str(tmp_path / "other"), catalog=catalog)
    assert api.ls(catalog=str(tmp_path / "other")) == []
    with pytest.raises(IntegrityError, match="tokenizer.json"), modelshard.open("m", catalog=catalog) as h:
        h.asset("tokenizer.json")
    with modelshard.open("m", catalog=catalog) as h:
        assert h.asset("README.md") == FILES["README.md"]


def test_copy_and_reshard_carry_them(catalog, folder, tmp_path):
    api.push(folder, "m", catalog=catalog)
    other = Catalog(str(tmp_path / "other"))
    placement.copy("m", other, catalog=catalog)
    api.verify("m", catalog=other)
    api.pull("m", tmp_path / "copied", catalog=other)
    assert {n: files_of(tmp_path / "copied")[n] for n in FILES} == FILES
    m = reshard("m", shard_count=2, catalog=catalog.uri, runner="inline")
    assert len(m.shards) == 2 and m.assets == api.show("m@1", catalog=catalog).manifest.assets
    api.verify(f"m@{m.version}", catalog=catalog)
    with modelshard.open(f"m@{m.version}", catalog=catalog) as h:
        assert h.asset("1_Pooling/config.json") == FILES["1_Pooling/config.json"]


def test_preload_brings_them_to_the_node(catalog, folder, tmp_path):
    m = api.push(folder, "m", catalog=catalog)
    r = modelshard.preload("m", catalog=catalog, cache_dir=tmp_path / "cache")
    assert r.assets == 5 and r.fetched == len(m.shards) + 5
    with modelshard.open("m", catalog=catalog, cache_dir=tmp_path / "cache") as h:
        assert h.asset("tokenizer.json") == FILES["tokenizer.json"]
    for a in m.assets.values():
        entry = tmp_path / "cache" / "sha256" / a.sha256[:2] / a.sha256
        assert entry.read_bytes() == FILES[a.name]


def test_limits_are_stated_and_enforced(catalog, folder, monkeypatch):
    monkeypatch.setattr(sources, "MAX_ASSET_BYTES", 1 << 20)
    with pytest.raises(UsageError, match=r"tokenizer.json has \d+ bytes, over the 1 MiB limit"):
        api.push(folder, "m", catalog=catalog)
    monkeypatch.setattr(sources, "MAX_ASSET_BYTES", 64 << 20)
    monkeypatch.setattr(sources, "MAX_ASSETS", 3)
    with pytest.raises(UsageError, match="5 non-tensor files .* over the limit of 3 files"):
        api.push(folder, "m", catalog=catalog)
    assert not os.path.exists(catalog.root)  # refused before anything was written


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", ".hidden", "model.safetensors",
                                  "model.safetensors.index.json", "c:x", "a\\b"])
def test_hostile_asset_names_in_a_manifest_are_refused(catalog, folder, name):
    m = api.push(folder, "m", catalog=catalog)
    path = os.path.join(catalog.version_dir("m", m.version), MANIFEST)
    doc = json.loads(Path(path).read_bytes())
    doc["assets"][name] = doc["assets"].pop("README.md")
    del doc["sealed_crc32c"]
    Path(path).write_bytes(seal(doc))
    with pytest.raises(FormatError, match="asset name"):
        catalog.manifest("m", m.version)


def test_pytorch_bin_folders_are_converted_with_their_files(catalog, tmp_path):
    state = {k: v for k, v in STATE.items() if v.dtype in (np.float32, np.float16, np.int64, np.bool_)}
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    first, rest = sorted(state)[:2], sorted(state)[2:]
    root = tmp_path / "hf"
    root.mkdir()
    (root / "config.json").write_bytes(FILES["config.json"])
    torch.save({k: tensors[k] for k in first}, root / "pytorch_model-1.bin")
    torch.save({k: tensors[k] for k in rest}, root / "pytorch_model-2.bin")
    (root / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {
        **dict.fromkeys(first, "pytorch_model-1.bin"), **dict.fromkeys(rest, "pytorch_model-2.bin")}}))
    m = api.push(root, "m", catalog=catalog)
    assert sorted(m.assets) == ["config.json"] and "push.skipped" not in m.attrs
    assert_same(api.pull("m", catalog=catalog), state)
    single = tmp_path / "single"
    single.mkdir()
    torch.save(tensors, single / "pytorch_model.bin")
    assert_same(api.pull(api.push(single, "s", catalog=catalog).name, catalog=catalog), state)


def test_in_memory_arrays_have_no_assets(catalog):
    m = api.push({"w": np.ones(3, np.float32)}, "m", catalog=catalog)
    assert m.assets == {} and "push.skipped" not in m.attrs


def test_training_epochs_keep_the_model_files(tmp_path):
    from modelshard.jobs.models import SPEC_ATTR, ModelSpec, build
    from modelshard.jobs.train.driver import train

    spec = ModelSpec("mlp", {"sizes": [4, 3]})
    folder = tmp_path / "mlp"
    folder.mkdir()
    save_file({k: v.numpy() for k, v in build(spec).state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "labels.json").write_text('["a", "b", "c"]')
    cat = str(tmp_path / "cat")
    api.push(folder, "mlp", catalog=cat, attrs={SPEC_ATTR: spec.dumps()})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"id": i, "x": [i, 1, 0, 1], "y": i % 3}) + "\n"
                                                  for i in range(12)))
    r = train("mlp", str(tmp_path / "train.jsonl"), epochs=1, catalog=cat, )
    with modelshard.open(f"mlp@{r.epochs[0].version}", catalog=cat) as h:
        assert h.asset("labels.json") == b'["a", "b", "c"]'
