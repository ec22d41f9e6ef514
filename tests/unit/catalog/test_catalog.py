"""The catalog: layout, resolving keys, aliases, removal."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import modelshard
from modelshard.catalog.catalog import ENV, Catalog, default_uri
from modelshard.errors import NotFoundError, UsageError
from tests.store_data import tree

W = {"w": np.arange(4, dtype=np.float32)}


def test_default_catalog(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_uri() == str(tmp_path / ".modelshard" / "catalog")
    monkeypatch.setenv(ENV, "hdfs:///models")
    assert default_uri() == "hdfs:///models"


def test_default_catalog_is_used_by_the_verbs(monkeypatch, catalog):
    monkeypatch.setenv(ENV, catalog.uri)
    modelshard.push(W, "m")
    assert [v.version for v in modelshard.ls("m", catalog=catalog)] == ["1"]


def test_layout(catalog):
    modelshard.push(W, "m", catalog=catalog, aliases=["prod"])
    rel = [p[len(catalog.root) + 1:] for p, _ in tree(catalog)]
    assert rel == ["models/m/1/manifest.json",
                   "models/m/1/shards/model-00001-of-00001.safetensors",
                   "models/m/aliases/latest/000000000001",
                   "models/m/aliases/prod/000000000001"]


def test_missing_catalog(catalog_root):
    fs, root = catalog_root
    cat = Catalog(fs.uri(f"{root}/nowhere"))
    for call in (lambda: modelshard.ls(catalog=cat), lambda: modelshard.show("m", catalog=cat),
                 lambda: modelshard.pull("m", catalog=cat), lambda: modelshard.gc(catalog=cat),
                 lambda: modelshard.rm("m", confirm=True, catalog=cat)):
        with pytest.raises(NotFoundError, match="nowhere does not exist; check --catalog"):
            call()
    assert not fs.exists(f"{root}/nowhere")


def test_resolve(catalog):
    modelshard.push(W, "m", catalog=catalog)
    modelshard.push(W, "m", catalog=catalog, aliases=["prod"])
    modelshard.push(W, "m", catalog=catalog)
    assert catalog.resolve("m") == ("m", "3")
    assert catalog.resolve("m@latest") == ("m", "3")
    assert catalog.resolve("m@prod") == ("m", "2")
    assert catalog.resolve("m@1") == ("m", "1")
    with pytest.raises(NotFoundError, match="m@4 is not in catalog"):
        catalog.resolve("m@4")
    with pytest.raises(NotFoundError, match="m@staging: no such alias"):
        catalog.resolve("m@staging")
    with pytest.raises(NotFoundError, match="model 'x' is not in catalog"):
        catalog.resolve("x")


def test_alias_moves_and_removal(catalog):
    for _ in range(3):
        modelshard.push(W, "m", catalog=catalog)
    assert modelshard.alias("m@prod", 1, catalog=catalog) == "1"
    assert modelshard.alias("m@prod", "2", catalog=catalog) == "2"
    assert modelshard.alias("m@prod", catalog=catalog) == "2"
    assert modelshard.alias("m@stable", "prod", catalog=catalog) == "2"  # copies the target
    assert catalog.aliases("m") == {"latest": "3", "prod": "2", "stable": "2"}
    modelshard.alias("m@prod", remove=True, catalog=catalog)
    assert catalog.aliases("m") == {"latest": "3", "stable": "2"}
    with pytest.raises(NotFoundError, match="m@prod: no such alias"):
        modelshard.alias("m@prod", catalog=catalog)
    # Old entries are pruned; the log stays short.
    for v in (1, 2, 3, 1, 2, 3):
        modelshard.alias("m@stable", v, catalog=catalog)
    assert len(catalog.fs.ls(f"{catalog.model_dir('m')}/aliases/stable")) == 2


@pytest.mark.parametrize("key, target, match", [
    ("m", 1, "give name@alias"), ("m@1", 1, "give name@alias"),
    ("m@prod", 9, "m@9 is not in catalog"), ("m@prod", "nope", "m@nope: no such alias"),
    ("m@prod", "../1", "alias '../1'"),
])
def test_bad_alias_calls(catalog, key, target, match):
    modelshard.push(W, "m", catalog=catalog)
    before = tree(catalog)
    with pytest.raises(modelshard.ModelShardError, match=match):
        modelshard.alias(key, target, catalog=catalog)
    assert tree(catalog) == before


def test_concurrent_alias_moves_end_on_one_of_them(catalog):
    for _ in range(4):
        modelshard.push(W, "m", catalog=catalog)
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            seen.add(catalog.alias_target("m", "prod"))

    modelshard.alias("m@prod", 1, catalog=catalog)
    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=modelshard.alias, args=("m@prod", v),
                                kwargs={"catalog": catalog}) for v in (2, 3, 4) * 5]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    reader.join()
    assert None not in seen  # a reader never finds the alias missing
    assert catalog.alias_target("m", "prod") in {"2", "3", "4"}


def test_rm_version_and_latest_falls_back(catalog):
    for _ in range(3):
        modelshard.push(W, "m", catalog=catalog)
    modelshard.rm("m@3", confirm=True, catalog=catalog)
    assert catalog.versions("m") == ["1", "2"]
    assert catalog.resolve("m") == ("m", "2")
    modelshard.rm("m@1", confirm=True, catalog=catalog)
    modelshard.rm("m@2", confirm=True, catalog=catalog)
    with pytest.raises(NotFoundError, match="model 'm' is not in catalog"):
        catalog.resolve("m")
    assert modelshard.gc(older_than=0, catalog=catalog) == []  # nothing left in the trash
    assert modelshard.push(W, "m", catalog=catalog).version == "4"  # numbers are never reused
    assert catalog.resolve("m") == ("m", "4")


def test_rm_refuses_a_version_held_by_an_alias(catalog):
    modelshard.push(W, "m", catalog=catalog, aliases=["prod"])
    before = tree(catalog)
    with pytest.raises(UsageError, match="m@1 is the target of alias\\(es\\) prod"):
        modelshard.rm("m@1", confirm=True, catalog=catalog)
    assert tree(catalog) == before


def test_rm_whole_model(catalog):
    modelshard.push(W, "m", catalog=catalog)
    modelshard.push(W, "n", catalog=catalog)
    modelshard.rm("m", confirm=True, catalog=catalog)
    assert catalog.models() == ["n"]
    with pytest.raises(NotFoundError, match="model 'm' is not in catalog"):
        modelshard.rm("m", confirm=True, catalog=catalog)


@pytest.mark.parametrize("key, confirm, match", [
    ("m@1", False, "pass confirm=True"), ("m", False, "pass confirm=True"),
    ("m@prod", True, "not an alias"), ("m@9", True, "m@9 is not in catalog"),
    ("../m", True, "model name"),
])
def test_bad_rm_calls_change_nothing(catalog, key, confirm, match):
    modelshard.push(W, "m", catalog=catalog, aliases=["prod"])
    before = tree(catalog)
    with pytest.raises(modelshard.ModelShardError, match=match):
        modelshard.rm(key, confirm=confirm, catalog=catalog)
    assert tree(catalog) == before
