"""The lazy model handle, load and preload on a local catalog: exact byte ranges, rows of
split tensors, integrity checks, the preload cache and the scheduler under a budget."""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os

import numpy as np
import pytest

import modelshard
from modelshard.cache import preload as preload_mod
from modelshard.catalog import access
from modelshard.catalog.catalog import Catalog
from modelshard.errors import IntegrityError, NotFoundError, StorageError, UsageError
from modelshard.fs import LocalFileSystem
from tests.counting_fs import CountingFileSystem
from tests.store_data import assert_same, sample_state


def model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = {f"layer.{i}.weight": rng.standard_normal((64, 32)).astype(np.float32)
             for i in range(40)}
    state["embed"] = rng.standard_normal((4000, 16)).astype(np.float32)  # split by rows
    return state


@pytest.fixture
def pushed(tmp_path):
    state = model()
    root = str(tmp_path / "cat")
    m = modelshard.push(state, "m", catalog=root, shard_size=64 * 1024)
    assert len(m.shards) > 4 and m.tensors["embed"].is_split
    return root, state, m


def counting(root: str) -> tuple[Catalog, CountingFileSystem]:
    cat = Catalog(root)
    cat.fs = fs = CountingFileSystem(LocalFileSystem(), mappable=False)
    return cat, fs


def test_every_dtype_round_trips_lazily_in_numpy_and_torch(tmp_path):
    state = sample_state()
    root = str(tmp_path / "cat")
    modelshard.push(state, "s", catalog=root, shard_size=256)
    with modelshard.open("s", catalog=root) as h:
        assert h.names() == sorted(state)
        assert_same({n: h.get(n) for n in h.names()}, state)
        assert_same(h.load_state_dict(framework="torch"), state)
    assert_same(modelshard.load("s", catalog=root), state)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5])
def test_loading_k_of_t_tensors_reads_only_their_bytes_plus_headers(pushed, fraction):
    root, state, m = pushed
    cat, fs = counting(root)
    fs.reset()  # resolving the key read the manifest
    names = sorted(state)[:: max(1, round(1 / fraction))]
    with modelshard.open("m", catalog=cat, record_stats=False) as h:
        fs.reset()
        got = h.load_state_dict(names)
        stats = h.stats()
    assert_same(got, {n: state[n] for n in names})
    needed = sum(m.tensors[n].nbytes for n in names)
    touched = {p.shard for n in names for p in m.tensors[n].pieces}
    headers = sum(_header_bytes(root, m, s) for s in touched)
    assert fs.bytes_read <= 1.05 * needed + headers
    assert stats.range_bytes == fs.bytes_read and stats.sources == {"range": len(touched)}


def _header_bytes(root: str, m, shard: str) -> int:
    path = os.path.join(root, "models", m.name, m.version, shard)
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def test_rows_of_a_split_tensor_read_only_those_rows(pushed):
    root, state, m = pushed
    cat, fs = counting(root)
    pieces = m.tensors["embed"].pieces
    start, stop = pieces[0].rows[1] - 5, pieces[1].rows[0] + 7  # across a piece boundary
    with modelshard.open("m", catalog=cat, record_stats=False) as h:
        fs.reset()
        rows = h.get_rows("embed", start, stop)
        headers = sum(_header_bytes(root, m, p.shard) for p in pieces[:2])
        assert np.array_equal(rows, state["embed"][start:stop])
        # A piece of up to 1 MiB is one checked chunk: it is read whole, and nothing else.
        assert fs.bytes_read == sum(p.end - p.begin for p in pieces[:2]) + headers
        assert h.get_rows("embed", 10, 10).shape == (0, 16)
        for bad in ((-1, 3), (5, 4), (0, 4001), (0.5, 2)):
            with pytest.raises(UsageError, match="rows"):
                h.get_rows("embed", *bad)


def test_rows_of_a_large_tensor_read_at_most_the_chunk_around_them(tmp_path):
    big = np.arange(4096 * 512, dtype=np.float32).reshape(4096, 512)  # 8 MiB: 8 chunks
    root = str(tmp_path / "cat")
    m = modelshard.push({"big": big}, "b", catalog=root)
    cat, fs = counting(root)
    with modelshard.open("b", catalog=cat, record_stats=False) as h:
        fs.reset()
        assert np.array_equal(h.get_rows("big", 1000, 1010), big[1000:1010])
    assert fs.bytes_read == (1 << 20) + _header_bytes(root, m, m.shards[0].path)


def test_local_shards_are_memory_mapped_zero_copy_and_writable_without_touching_the_file(pushed):
    root, state, m = pushed
    with modelshard.open("m", catalog=root) as h:
        a = h.get("layer.3.weight")
        assert not a.flags.owndata and a.flags.writeable
        a[:] = 0
        assert h.stats().sources == {"mmap": 1}
    assert np.array_equal(modelshard.load("m", catalog=root, names=["layer.3.weight"])
                          ["layer.3.weight"], state["layer.3.weight"])


def test_unknown_tensor_lists_close_matches(pushed):
    root, _, _ = pushed
    with modelshard.open("m", catalog=root) as h, pytest.raises(
            NotFoundError, match=r"no tensor 'layer\.3\.weigth'; close matches: layer\.3\.weight"):
        h.get("layer.3.weigth")
    with pytest.raises(NotFoundError, match="close matches: embed"):
        modelshard.preload("m", catalog=root, tensors=["embd"], cache_dir=root + "-cache")


def test_dtype_converts_floating_tensors_only(tmp_path):
    root = str(tmp_path / "cat")
    modelshard.push({"f": np.ones(3, np.float32), "i": np.arange(3)}, "d", catalog=root)
    sd = modelshard.load("d", catalog=root, dtype="bfloat16")
    assert sd["f"].dtype.name == "bfloat16" and sd["i"].dtype == np.int64
    import torch

    sd = modelshard.load("d", catalog=root, dtype=torch.float16, framework="torch")
    assert sd["f"].dtype == torch.float16 and sd["i"].dtype == torch.int64
    with pytest.raises(UsageError, match="dtype='float7'"):
        modelshard.load("d", catalog=root, dtype="float7")


def _two_in_other_shards(root: str, m) -> list[tuple[str, str, int]]:
    """(tensor, shard file, shard index) of two whole tensors in different shards."""
    found: dict[str, tuple[str, str, int]] = {}
    for n, t in m.tensors.items():
        shard = t.pieces[0].shard
        if not t.is_split and shard not in found:
            i = [s.path for s in m.shards].index(shard)
            found[shard] = (n, os.path.join(root, "models", m.name, m.version, shard), i)
    return list(found.values())[:2]


def test_a_damaged_tensor_and_a_replaced_header_are_caught_by_default(pushed):
    root, _, m = pushed
    (name, path, i), (other, _, j) = _two_in_other_shards(root, m)
    with open(path, "r+b") as f:  # flip one byte of tensor data: header still right
        f.seek(m.tensors[name].pieces[0].begin)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with modelshard.open("m", catalog=root) as h:
        for _ in range(2):  # the failure sticks: no byte of that shard is ever served
            with pytest.raises(IntegrityError, match=rf"m@1: shard .*{m.shards[i].path}: bytes "
                                                     r"\d+\.\.\d+ do not match their CRC32C"):
                h.get(name)
        h.get(other)  # other shards still load
        header = _header_bytes(root, m, m.shards[j].path)
        assert h.stats().verified_bytes >= header + m.tensors[other].nbytes
    with open(path, "r+b") as f:  # now change a header's dtype
        raw = f.read()
        f.seek(0)
        f.write(raw.replace(b'"F32"', b'"I32"', 1))
    cat, _ = counting(root)
    for catalog in (root, cat):  # memory-mapped and by range
        with modelshard.open("m", catalog=catalog) as h, pytest.raises(
                IntegrityError, match=r"bytes 0\.\.\d+ do not match their CRC32C"):
            h.get(name)


def test_preload_then_the_handle_reads_the_cache_and_refetches_a_corrupt_entry(pushed, tmp_path):
    root, state, m = pushed
    cache_dir = str(tmp_path / "cache")
    names = ["layer.0.weight", "embed"]
    report = modelshard.preload("m", catalog=root, tensors=names, cache_dir=cache_dir)
    held = {p.shard for n in names for p in m.tensors[n].pieces}
    assert (report.shards, report.fetched) == (len(held), len(held))
    assert modelshard.preload("m", catalog=root, tensors=names, cache_dir=cache_dir).fetched == 0
    entry = glob.glob(f"{cache_dir}/sha256/*/*")[0]
    with open(entry, "r+b") as f:
        f.seek(100)
        f.write(b"garbage")
    cat, fs = counting(root)
    with modelshard.open("m", catalog=cat, cache_dir=cache_dir, record_stats=False) as h:
        fs.reset()
        got = h.load_state_dict(names)
        stats = h.stats()
    assert_same(got, {n: state[n] for n in names})
    assert stats.sources == {"cache": len(held)} and stats.range_bytes == 0
    assert stats.cache.corrupt_dropped == 1 and stats.cache.misses == 1
    damaged = next(s for s in m.shards if hashlib.sha256(b"").hexdigest() != s.sha256
                   and s.sha256 == os.path.basename(entry))
    assert fs.bytes_read == damaged.size  # only the damaged entry was fetched again


def test_a_full_disk_during_preload_leaves_no_entry(pushed, tmp_path, monkeypatch):
    root, _, m = pushed
    cache_dir = str(tmp_path / "cache")
    real = preload_mod._write_all
    written = [0]

    def fill_up(fd, data):  # the disk fills up in the middle of the second shard
        if written[0] > m.shards[0].size:
            raise OSError(errno.ENOSPC, "No space left on device")
        written[0] += len(data)
        real(fd, data)

    monkeypatch.setattr(preload_mod, "_write_all", fill_up)
    monkeypatch.setattr(preload_mod.PreloadCache, "__init__", _small_chunks(
        preload_mod.PreloadCache.__init__))
    with pytest.raises(StorageError, match="disk full while caching"):
        modelshard.preload("m", catalog=root, cache_dir=cache_dir, workers=1)
    assert os.listdir(f"{cache_dir}/tmp") == []
    assert len(glob.glob(f"{cache_dir}/sha256/*/*")) == 1  # the shards before the fault


def _small_chunks(init):
    def patched(self, *a, **kw):
        init(self, *a, **{**kw, "chunk_bytes": 16 * 1024})
    return patched


def test_a_cache_folder_that_cannot_be_written_is_one_clear_error(pushed, tmp_path):
    root, _, _ = pushed
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(StorageError, match="cache folder cannot be written"):
        modelshard.preload("m", catalog=root, cache_dir=str(blocker / "cache"))
    with pytest.raises(StorageError, match="cache folder cannot be written"):
        modelshard.open("m", catalog=root, cache_dir=str(blocker / "cache"))


def test_budget_holds_whole_shards_and_is_never_exceeded(pushed):
    root, state, m = pushed
    largest = max(s.size for s in m.shards)
    with pytest.raises(UsageError, match="budget smaller than the largest shard"):
        modelshard.open("m", catalog=root, budget_bytes=largest - 1)
    budget = 2 * largest
    with modelshard.open("m", catalog=root, budget_bytes=budget, workers=3) as h:
        got = h.load_state_dict()
        first = h.stats().scheduler
        again = h.get("layer.0.weight")
        s = h.stats()
    assert_same(got, state)
    assert np.array_equal(again, state["layer.0.weight"]) and again.flags.writeable
    assert s.scheduler.peak_bytes_held <= budget and s.scheduler.evictions > 0
    # One read of each shard serves its header check and its tensors.
    assert first.misses == len(m.shards) and first.bytes_fetched == sum(x.size for x in m.shards)
    assert s.local_shards == len(m.shards) and s.sources == {"scheduler": len(m.shards)}


def test_access_statistics_are_recorded_beside_the_version(pushed):
    root, _, m = pushed
    for _ in range(3):
        with modelshard.open("m", catalog=root) as h:
            h.get("layer.0.weight")
    modelshard.load("m", catalog=root, names=["embed"])
    totals = access.totals(Catalog(root), "m", "1")
    shard0 = m.tensors["layer.0.weight"].pieces[0].shard
    assert totals.sessions == 4 and totals.reads[shard0] >= 3
    assert totals.local == sum(1 for _ in range(3)) + len(
        {p.shard for p in m.tensors["embed"].pieces})
    assert os.path.isdir(os.path.join(root, "models", "m", ".stats", "1"))
    assert [v.version for v in modelshard.ls("m", catalog=root)] == ["1"]  # the stats folder is not a version


def test_closed_handle_and_bad_framework(pushed):
    root, _, _ = pushed
    h = modelshard.open("m", catalog=root)
    with pytest.raises(UsageError, match="framework='jax'"):
        h.get("embed", framework="jax")
    h.close()
    with pytest.raises(UsageError, match="closed"):
        h.get("embed")


def test_cli_load_preload_stats_copy_and_bad_input(pushed, tmp_path, capsys):
    from modelshard.cli import main

    root, _, m = pushed
    cache = str(tmp_path / "cache")
    assert main(["--catalog", root, "preload", "m", "--cache-dir", cache, "--tensors", "embed"]) == 0
    assert main(["--catalog", root, "--json", "load", "m", "--cache-dir", cache, "--stats",
                 "--tensors", "embed"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out[out.index("{"):])["stats"]
    held = len({p.shard for p in m.tensors["embed"].pieces})
    assert stats["sources"] == {"cache": held} and stats["cache"]["hits"] == held
    assert main(["--catalog", root, "stats", "m"]) == 0
    assert "1 sessions" in capsys.readouterr().out
    assert main(["--catalog", root, "copy", "m", str(tmp_path / "other")]) == 0
    assert [v.version for v in modelshard.ls("m", catalog=str(tmp_path / "other"))] == ["1"]
    capsys.readouterr()
    for argv, msg in ((["load", "m", "--budget", "1K"], "budget smaller than the largest shard"),
                      (["load", "m", "--tensors", "embedd"], "close matches: embed"),
                      (["replicate", "m", "--replication", "0"], "at least 1"),
                      (["copy", "m", root], "destination is the source catalog")):
        assert main(["--catalog", root, *argv]) != 0
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
