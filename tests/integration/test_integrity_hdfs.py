"""Issue 9 on HDFS: a shard rewritten with one byte changed (HDFS's own block checksums then
match the new bytes: only modelshard's CRC32C can tell) is found by every read path with
default options; a push checks what HDFS stored."""

from __future__ import annotations

import numpy as np
import pytest

import modelshard
from modelshard import placement
from modelshard.catalog.catalog import Catalog
from modelshard.catalog.commit import shard_block_size
from modelshard.errors import FormatError, IntegrityError
from tests.counting_fs import CountingFileSystem

STATE = {f"w{i}": np.full((64, 16), i, np.float32) for i in range(6)}
VICTIM = "w2"

READ_PATHS = {
    "get": lambda uri, tmp: modelshard.open("m", catalog=uri).get(VICTIM),
    "get_rows": lambda uri, tmp: modelshard.open("m", catalog=uri).get_rows(VICTIM, 3, 4),
    "load through the cache": lambda uri, tmp: modelshard.load(
        "m", catalog=uri, cache_dir=str(tmp / "cache"), fill_cache=True),
    "load under a budget": lambda uri, tmp: modelshard.load("m", catalog=uri,
                                                            budget_bytes=1 << 20),
    "pull into memory": lambda uri, tmp: modelshard.pull("m", catalog=uri),
    "pull to a folder": lambda uri, tmp: modelshard.pull("m", str(tmp / "out"), catalog=uri),
    "preload": lambda uri, tmp: modelshard.preload("m", catalog=uri, cache_dir=str(tmp / "c")),
    "copy": lambda uri, tmp: placement.copy("m", str(tmp / "other"), catalog=uri),
    "verify": lambda uri, tmp: modelshard.verify("m", catalog=uri),
}


@pytest.fixture
def pushed(hdfs_root):
    fs, root = hdfs_root
    uri = fs.uri(f"{root}/cat")
    return uri, modelshard.push(STATE, "m", catalog=uri, shard_size=8192)


def _rewrite_flipped(uri: str, m, where: str) -> str:
    cat = Catalog(uri)
    piece = m.tensors[VICTIM].pieces[0]
    path = f"{cat.version_dir('m', m.version)}/{piece.shard}"
    data = bytearray(cat.fs.read_bytes(path))
    data[(piece.begin + piece.end) // 2 if where == "tensor data" else 20] ^= 0x04
    cat.fs.write_bytes(path, bytes(data), block_size=shard_block_size(len(data)))
    return piece.shard


@pytest.mark.parametrize("where", ["tensor data", "header"])
@pytest.mark.parametrize("path", list(READ_PATHS))
def test_a_rewritten_shard_is_found_by_every_read_path(pushed, tmp_path, path, where):
    uri, m = pushed
    shard = _rewrite_flipped(uri, m, where)
    with pytest.raises((IntegrityError, FormatError)) as e:
        READ_PATHS[path](uri, tmp_path)
    assert shard in str(e.value) and "m@1" in str(e.value)


def test_an_intact_version_reads_by_every_path(pushed, tmp_path):
    uri, _ = pushed
    for i, read in enumerate(READ_PATHS.values()):
        read(uri, tmp_path / str(i))
    assert np.array_equal(modelshard.load("m", catalog=uri)[VICTIM], STATE[VICTIM])


def test_push_checks_what_hdfs_stored_without_reading_it_back(hdfs_root):
    fs, root = hdfs_root
    cat = Catalog(fs.uri(f"{root}/cat"))
    cat.fs = counted = CountingFileSystem(cat.fs)
    m = modelshard.push(STATE, "m", catalog=cat, shard_size=8192)
    assert counted.bytes_read < 4096  # the manifest and aliases, never a shard
    for s in m.shards:  # HDFS's COMPOSITE_CRC file checksum is the CRC32C of the file
        assert fs.stored_crc32c(f"{cat.version_dir('m', m.version)}/{s.path}") == \
            s.checksums.crc32c
    counted.reset()
    modelshard.push(STATE, "m", catalog=cat, shard_size=8192, paranoid=True)
    assert counted.bytes_read >= sum(s.size for s in m.shards)  # --paranoid reads back


def test_a_stored_shard_that_differs_aborts_the_push(hdfs_root, monkeypatch):
    fs, root = hdfs_root
    uri = fs.uri(f"{root}/cat")
    monkeypatch.setattr(type(fs), "stored_crc32c", lambda self, path: 0)
    with pytest.raises(IntegrityError, match="the storage holds other bytes than were written"):
        modelshard.push(STATE, "m", catalog=uri, shard_size=8192)
    assert not fs.exists(f"{root}/cat/models/m/1")
