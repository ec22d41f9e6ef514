"""A full disk during a push is one line on stderr and leaves the catalog as it was: the
shards, the manifest or an alias entry cannot be written (``/dev/full`` fails every write
with ENOSPC, at write time for a large buffer and at close for a small one). The same with a
disk that really fills, a small tmpfs (root only): ``tests/faults/test_full_tmpfs.py``."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

import modelshard
from modelshard.catalog.catalog import Catalog
from modelshard.cli import main
from modelshard.errors import StorageError
from modelshard.fs import LocalFileSystem
from tests.store_data import tree


def test_a_full_disk_is_a_storage_error_at_write_and_at_close():
    fs = LocalFileSystem()
    with pytest.raises(StorageError, match="^/dev/full: no space left on device; free disk space and retry$"):
        fs.write_bytes("/dev/full", b"x" * (1 << 20))  # fails in write
    with pytest.raises(StorageError, match="no space left on device"):
        fs.write_bytes("/dev/full", b"x")  # buffered: fails in close


@pytest.mark.parametrize("where, size", [("/shards/", 10), ("/shards/", 1 << 18), ("/manifest.json", 10)])
def test_push_onto_a_full_disk_is_one_line_and_changes_nothing(tmp_path, monkeypatch, capsys, where, size):
    cat = Catalog(str(tmp_path / "cat"))
    modelshard.push({"w": np.zeros(3)}, "m", catalog=cat, aliases=["prod"])
    before = tree(cat)
    source = tmp_path / "m.safetensors"
    save_file({"w": np.ones(size, np.float32)}, source)
    real = LocalFileSystem.open_write
    monkeypatch.setattr(LocalFileSystem, "open_write",
                        lambda self, path, **kw: real(self, "/dev/full" if where in path else path, **kw))
    rc = main(["push", str(source), "m", "--alias", "prod", "--catalog", cat.uri])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith("modelshard push: error: /dev/full: no space left on device; free disk space and retry")
    assert tree(cat) == before
    monkeypatch.undo()
    assert main(["ls", "m", "--catalog", cat.uri]) == 0
    assert cat.aliases("m") == {"latest": "1", "prod": "1"}
