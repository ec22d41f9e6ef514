"""A trained version's optimizer state (``inner_momentum:<name>``, ``outer_momentum:<name>``) is
part of the version but not of the model: pull, load, load_into and reshard hand out the
model's tensors unless asked for the state; copy keeps the version as it is."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

import modelshard
from modelshard import loading, placement
from modelshard.catalog.manifest import INNER_MOMENTUM, OUTER_MOMENTUM, is_optimizer_state
from modelshard.cli import main
from modelshard.jobs.reshard.driver import reshard

MODEL = {"weight": np.arange(12, dtype=np.float32).reshape(3, 4), "bias": np.ones(3, np.float32)}
STATE = {**{OUTER_MOMENTUM + k: v * -0.5 for k, v in MODEL.items()}, INNER_MOMENTUM + "bias": MODEL["bias"] * 2}


def trained(catalog, *, shard_size: int = 1 << 20) -> str:
    """A version laid out as training writes it: the model and its momentum."""
    m = modelshard.push({**MODEL, **STATE}, "m", catalog=catalog, shard_size=shard_size)
    return f"m@{m.version}"


def same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert np.array_equal(np.asarray(got[k]), v), k


def folder_tensors(folder) -> dict[str, np.ndarray]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    out = {}
    for file in set(index["weight_map"].values()):
        with safe_open(str(folder / file), framework="numpy") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 (safe_open has no __iter__)
    assert sorted(index["weight_map"]) == sorted(out)
    return out


def test_without_optimizer_state_drops_the_state_and_shards_that_hold_only_it(catalog):
    key = trained(catalog, shard_size=16)  # tensors split over shards of their own
    full = catalog.manifest(*catalog.resolve(key))
    m = full.without_optimizer_state()
    assert sorted(m.tensors) == sorted(m.weight_map) == sorted(MODEL)
    holding = {name: {p.shard for p in t.pieces} for name, t in full.tensors.items()}
    assert {s.path for s in m.shards} == set().union(*(holding[n] for n in MODEL))
    assert len(m.shards) < len(full.shards)
    assert m.total_size == sum(v.nbytes for v in MODEL.values())
    plain = catalog.manifest(*catalog.resolve(f"m@{modelshard.push(MODEL, 'm', catalog=catalog).version}"))
    assert plain.without_optimizer_state() is plain
    assert is_optimizer_state("outer_momentum:w") and is_optimizer_state("inner_momentum:w")
    assert not is_optimizer_state("w")


@pytest.mark.parametrize("shard_size", [1 << 20, 16])  # model and state in one shard; in their own
def test_pull_gives_the_model_a_strict_load_state_dict_takes(catalog, tmp_path, shard_size):
    key = trained(catalog, shard_size=shard_size)
    same(modelshard.pull(key, catalog=catalog), MODEL)
    layer = torch.nn.Linear(4, 3)
    layer.load_state_dict(modelshard.pull(key, catalog=catalog, framework="torch"))  # strict
    assert torch.equal(layer.weight, torch.from_numpy(MODEL["weight"]))
    same(modelshard.pull(key, catalog=catalog, with_optimizer_state=True), {**MODEL, **STATE})

    modelshard.pull(key, tmp_path / "model", catalog=catalog)
    same(folder_tensors(tmp_path / "model"), MODEL)  # the files hold no momentum either
    assert not list((tmp_path / "model").glob(".*"))
    modelshard.pull(key, tmp_path / "all", catalog=catalog, with_optimizer_state=True)
    same(folder_tensors(tmp_path / "all"), {**MODEL, **STATE})


def test_cli_pull_with_optimizer_state(catalog, tmp_path, capsys):
    key = trained(catalog)
    assert main(["pull", key, str(tmp_path / "a"), "--catalog", catalog.uri]) == 0
    assert main(["pull", key, str(tmp_path / "b"), "--catalog", catalog.uri, "--with-optimizer-state"]) == 0
    same(folder_tensors(tmp_path / "a"), MODEL)
    same(folder_tensors(tmp_path / "b"), {**MODEL, **STATE})


def test_load_and_load_into_give_the_model_and_the_state_by_name(catalog):
    key = trained(catalog)
    same(loading.load(key, catalog=catalog), MODEL)
    name = OUTER_MOMENTUM + "bias"
    same(loading.load(key, catalog=catalog, names=[name]), {name: STATE[name]})
    layer = torch.nn.Linear(4, 3)
    report = loading.load_into(layer, key, catalog=catalog)
    assert sorted(report.loaded) == ["bias", "weight"] and report.unexpected_keys == ()
    assert torch.equal(layer.bias, torch.ones(3))


def test_reshard_leaves_the_state_out_unless_asked(catalog):
    key = trained(catalog)
    m = reshard(key, shard_count=1, catalog=catalog.uri)
    assert sorted(m.tensors) == sorted(MODEL) and m.attrs["reshard.optimizer_state"] == "dropped"
    same(modelshard.pull(f"m@{m.version}", catalog=catalog, with_optimizer_state=True), MODEL)
    m = reshard(key, shard_count=1, catalog=catalog.uri, with_optimizer_state=True)
    assert "reshard.optimizer_state" not in m.attrs
    same(modelshard.pull(f"m@{m.version}", catalog=catalog, with_optimizer_state=True), {**MODEL, **STATE})


def test_copy_keeps_the_version_as_it_is(catalog, tmp_path):
    key = trained(catalog)
    m = placement.copy(key, str(tmp_path / "other"), catalog=catalog)
    assert sorted(m.tensors) == sorted({**MODEL, **STATE})
    same(modelshard.pull(key, catalog=str(tmp_path / "other"), with_optimizer_state=True), {**MODEL, **STATE})
