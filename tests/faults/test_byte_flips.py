"""One flipped bit in a shard's data, in its header or in the manifest is found by every
read path (pull, pull to a folder, verify, a default load, a lazy read of one tensor,
preload, copy, reshard, the jobs' model loading), as a modelshard error, and nothing damaged
is written at a destination."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import pytest

import modelshard
from modelshard.catalog.catalog import Catalog
from modelshard.catalog.manifest import MANIFEST
from modelshard.errors import ModelShardError
from modelshard.jobs.modelio import SPEC_ATTR, load_model
from modelshard.jobs.models import mlp
from modelshard.jobs.reshard.driver import reshard
from modelshard.placement import copy


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))


def damage(cat: Catalog, part: str) -> None:
    """Flip one bit of version 1: in a tensor's bytes, in the header's shape, in the manifest's
    first shard sha256."""
    version = cat.version_dir("m", "1")
    manifest = cat.manifest("m", "1")
    shard = f"{version}/{manifest.shards[0].path}"
    if part == "data":
        piece = next(p for t in manifest.tensors.values() for p in t.pieces
                     if p.shard == manifest.shards[0].path and p.end > p.begin)
        flip(shard, (piece.begin + piece.end) // 2)
    elif part == "header":
        with open(shard, "rb") as f:
            head = f.read(4096)
        flip(shard, head.index(b'"shape":[') + len(b'"shape":['))
    else:
        raw = cat.fs.read_bytes(f"{version}/{MANIFEST}")
        flip(f"{version}/{MANIFEST}", raw.index(manifest.shards[0].sha256.encode()) + 3)


READS: dict[str, Callable[[Catalog, str], object]] = {
    "pull": lambda cat, out: modelshard.pull("m@1", catalog=cat),
    "pull to a folder": lambda cat, out: modelshard.pull("m@1", f"{out}/pulled", catalog=cat),
    "verify": lambda cat, out: modelshard.verify("m@1", catalog=cat),
    "load": lambda cat, out: modelshard.load("m@1", catalog=cat),
    "lazy read of one tensor": lambda cat, out: modelshard.load("m@1", catalog=cat, names=["0.weight"]),
    "preload": lambda cat, out: modelshard.preload("m@1", catalog=cat, cache_dir=f"{out}/cache"),
    "copy": lambda cat, out: copy("m@1", f"{out}/other", catalog=cat),
    "reshard": lambda cat, out: reshard("m@1", shard_count=1, catalog=cat.uri),
    "jobs' model loading": lambda cat, out: load_model(cat.uri, "m@1"),
}


@pytest.mark.parametrize("part", ["data", "header", "manifest"])
@pytest.mark.parametrize("read", list(READS))
def test_a_flipped_bit_is_found_by_every_verified_read(tmp_path, part, read):
    cat = Catalog(str(tmp_path / "catalog"))
    state = {k: v.detach().numpy() for k, v in mlp(sizes=[64, 32, 10]).state_dict().items()}
    modelshard.push(state, "m", catalog=cat, shard_size=4096,
                    attrs={SPEC_ATTR: json.dumps({"factory": "mlp", "kwargs": {"sizes": [64, 32, 10]}})})
    damage(cat, part)
    with pytest.raises(ModelShardError):
        READS[read](cat, str(tmp_path))
    assert cat.versions("m") == ["1"]  # reshard committed nothing
    assert not (tmp_path / "pulled").exists() or not any((tmp_path / "pulled").iterdir())
    other = tmp_path / "other" / "models" / "m"
    assert not other.exists() or not any(p.name[0].isdigit() for p in other.iterdir())
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and len(p.name) == 64]
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == p.name for p in cached)  # only intact shards
