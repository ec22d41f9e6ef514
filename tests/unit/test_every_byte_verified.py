"""Issue 9's guarantee on a local catalog: a byte changed in tensor data, in a shard's header
or in the manifest is found by every read path with default options, and the error names
the model, version and shard and says what to do; for manifests written before the CRC32C
checksums too (whole-shard sha256), and after ``verify --upgrade`` adds them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import modelshard
from modelshard import placement
from modelshard.catalog.catalog import Catalog
from modelshard.errors import FormatError, IntegrityError
from modelshard.fs import LocalFileSystem
from tests.counting_fs import CountingFileSystem

STATE = {f"w{i}": np.full((64, 16), i, np.float32) for i in range(6)}
VICTIM = "w2"  # the tensor whose byte is flipped


def _ranged(root: str) -> Catalog:
    cat = Catalog(root)
    cat.fs = CountingFileSystem(LocalFileSystem(), mappable=False)
    return cat


# Every way to get bytes of a version, with default options; each reads VICTIM.
READ_PATHS = {
    "get, memory-mapped": lambda root, tmp: modelshard.open("m", catalog=root).get(VICTIM),
    "get, by range": lambda root, tmp: modelshard.open("m", catalog=_ranged(root)).get(VICTIM),
    "get_rows, by range": lambda root, tmp: modelshard.open(
        "m", catalog=_ranged(root)).get_rows(VICTIM, 3, 4),
    "load through the cache": lambda root, tmp: modelshard.load(
        "m", catalog=root, cache_dir=str(tmp / "cache"), fill_cache=True),
    "load under a budget": lambda root, tmp: modelshard.load(
        "m", catalog=_ranged(root), budget_bytes=1 << 20),
    "load, torch": lambda root, tmp: modelshard.load("m", catalog=root, framework="torch"),
    "pull into memory": lambda root, tmp: modelshard.pull("m", catalog=root),
    "pull to a folder": lambda root, tmp: modelshard.pull("m", str(tmp / "out"), catalog=root),
    "preload": lambda root, tmp: modelshard.preload("m", catalog=root,
                                                    cache_dir=str(tmp / "cache")),
    "copy": lambda root, tmp: placement.copy("m", str(tmp / "other"), catalog=root),
    "verify": lambda root, tmp: modelshard.verify("m", catalog=root),
    "load, device=cpu": lambda root, tmp: modelshard.load("m", catalog=root, device="cpu"),
    "load through the device pipeline": lambda root, tmp: _staged(root, cache=None),
    "load through the device pipeline and the cache": lambda root, tmp: _staged(
        root, cache=str(tmp / "cache")),
    "load_into a meta module": lambda root, tmp: modelshard.load_into(
        _meta_module(), "m", catalog=root, device="cpu"),
}


def _staged(root: str, *, cache: str | None) -> dict:
    """The pipeline that loads onto accelerators, with the CPU as the device."""
    import torch

    from modelshard.loading.device import load_state_dict_to

    with modelshard.open("m", catalog=root, cache_dir=cache, fill_cache=cache is not None) as h:
        return load_state_dict_to(h, [(n, None) for n in h.names()], device=torch.device("cpu"))


def _meta_module():
    import torch

    module = torch.nn.Module()
    for name, a in STATE.items():
        module.register_parameter(name, torch.nn.Parameter(torch.empty(a.shape, device="meta")))
    return module


def _push(tmp_path) -> tuple[str, modelshard.Manifest]:
    root = str(tmp_path / "cat")
    # Small shards: several of them, the victim in the middle of one.
    return root, modelshard.push(STATE, "m", catalog=root, shard_size=8192)


def _shard_of(root: str, m, name: str) -> tuple[str, str]:
    piece = m.tensors[name].pieces[0]
    return piece.shard, os.path.join(root, "models", "m", m.version, piece.shard)


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x04]))


def _damage(root: str, m, where: str) -> str:
    """Flip one byte; return what the error must name."""
    shard, path = _shard_of(root, m, VICTIM)
    if where == "tensor data":
        p = m.tensors[VICTIM].pieces[0]
        _flip(path, (p.begin + p.end) // 2)
        return shard
    if where == "header":
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
        _flip(path, 8 + n // 2)
        return shard
    _flip(os.path.join(root, "models", "m", m.version, "manifest.json"), 200)
    return "models/m/1/manifest.json"


@pytest.mark.parametrize("where", ["tensor data", "header", "manifest"])
@pytest.mark.parametrize("path", list(READ_PATHS))
def test_a_flipped_byte_is_found_by_every_read_path(tmp_path, path, where):
    root, m = _push(tmp_path)
    named = _damage(root, m, where)
    with pytest.raises((IntegrityError, FormatError)) as e:
        READ_PATHS[path](root, tmp_path)
    msg = str(e.value)
    assert named in msg and ("m@1" in msg or "models/m/1/" in msg)
    assert any(hint in msg for hint in ("modelshard verify", "pushing the model again",
                                        "push the model again"))
    assert not (tmp_path / "out").exists() and not Catalog(str(tmp_path / "other")).fs.exists(
        str(tmp_path / "other" / "models" / "m" / "1"))


def _strip_checksums(root: str, m) -> None:
    """Rewrite the manifest as modelshard wrote it before the CRC32C checksums."""
    path = os.path.join(root, "models", "m", m.version, "manifest.json")
    doc = json.loads(Path(path).read_bytes())
    doc.pop("sealed_crc32c")
    for s in doc["shards"]:
        for key in ("crc32c", "chunk_ends", "chunk_crc32c"):
            s.pop(key)
    with open(path, "w") as f:
        json.dump(doc, f)


@pytest.mark.parametrize("old", [False, True], ids=["new manifest", "old manifest"])
def test_an_intact_version_reads_by_every_path(tmp_path, old):
    root, m = _push(tmp_path)
    if old:
        _strip_checksums(root, m)
    for i, read in enumerate(READ_PATHS.values()):
        read(root, tmp_path / str(i))
    assert np.array_equal(modelshard.load("m", catalog=_ranged(root))[VICTIM], STATE[VICTIM])


@pytest.mark.parametrize("where", ["tensor data", "header"])
@pytest.mark.parametrize("path", [p for p in READ_PATHS if p != "get_rows, by range"])
def test_an_old_manifest_falls_back_to_the_whole_shard_sha256(tmp_path, path, where):
    root, m = _push(tmp_path)
    _strip_checksums(root, m)
    assert not Catalog(root).manifest("m", "1").has_checksums
    named = _damage(root, m, where)
    with pytest.raises(IntegrityError, match=rf"{named}.*(sha256|header)"):
        READ_PATHS[path](root, tmp_path)


def test_verify_upgrade_adds_the_checksums_beside_an_old_manifest(tmp_path, capsys):
    root, m = _push(tmp_path)
    _strip_checksums(root, m)
    manifest = Path(root, "models", "m", "1", "manifest.json")
    manifest_before = manifest.read_bytes()
    from modelshard.cli import main

    assert main(["verify", "m", "--upgrade", "--catalog", root]) == 0
    assert "CRC32C checksums in place" in capsys.readouterr().out
    upgraded = Catalog(root).manifest("m", "1")
    assert upgraded.has_checksums and upgraded.shards == m.shards  # as a push writes them
    assert manifest.read_bytes() == manifest_before  # a committed version is never changed
    assert modelshard.verify("m", catalog=root, upgrade=True).version == "1"  # again: no-op
    cat = _ranged(root)
    with modelshard.open("m", catalog=cat, record_stats=False) as h:
        cat.fs.reset()
        h.get(VICTIM)
        # Checked by its chunk, not by hashing the whole shard first.
        assert cat.fs.bytes_read < m.shards[0].size
    checksums = os.path.join(root, "models", "m", "1", "checksums.json")
    _flip(checksums, 40)
    with pytest.raises(FormatError, match="checksums.json: its bytes do not match"):
        modelshard.load("m", catalog=root)


def test_upgrade_refuses_a_damaged_shard_and_adds_nothing(tmp_path):
    root, m = _push(tmp_path)
    _strip_checksums(root, m)
    _damage(root, m, "tensor data")
    with pytest.raises(IntegrityError, match="1 of .* shards damaged"):
        modelshard.verify("m", catalog=root, upgrade=True)
    assert not os.path.exists(os.path.join(root, "models", "m", "1", "checksums.json"))


def test_the_benchmark_opt_out_serves_unchecked_bytes(tmp_path):
    root, m = _push(tmp_path)
    _damage(root, m, "tensor data")
    for catalog in (root, _ranged(root)):
        with modelshard.open("m", catalog=catalog, unverified_for_benchmarks=True) as h:
            assert not np.array_equal(h.get(VICTIM), STATE[VICTIM])
