"""Atomic commit: concurrent pushes, crashes at every step, gc."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from crc32c import crc32c

import modelshard
from modelshard.catalog import commit
from modelshard.catalog.catalog import Catalog
from modelshard.catalog.lease import Lease
from modelshard.errors import AlreadyExistsError, IntegrityError, StorageError
from modelshard.fs import LocalFileSystem
from tests.store_data import tree

STATE = {"w": np.arange(3000, dtype=np.float32).reshape(30, 100), "b": np.ones(7, np.int64)}


def race(n: int, fn) -> list:
    """Run ``fn(i)`` on ``n`` threads released together; each result or exception."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_pushes_of_one_version_exactly_one_wins(catalog):
    states = [{"w": np.full(500, i, np.float32)} for i in range(6)]
    results = race(6, lambda i: modelshard.push(states[i], "m@7", catalog=catalog,
                                                shard_size=512))
    won = [r for r in results if not isinstance(r, Exception)]
    lost = [r for r in results if isinstance(r, Exception)]
    assert len(won) == 1 and len(lost) == 5
    assert all(isinstance(e, AlreadyExistsError) and "m@7" in str(e) for e in lost)
    got = modelshard.pull("m@7", catalog=catalog)["w"]
    assert got.tobytes() == states[int(got[0])]["w"].tobytes()
    assert catalog.versions("m") == ["7"]
    assert modelshard.gc(older_than=0, catalog=catalog) == []  # the losers left nothing


def test_concurrent_auto_numbered_pushes_get_distinct_versions(catalog):
    results = race(5, lambda i: modelshard.push({"w": np.full(3, i)}, "m", catalog=catalog))
    assert sorted(int(m.version) for m in results) == [1, 2, 3, 4, 5]
    pulled = {int(modelshard.pull(f"m@{m.version}", catalog=catalog)["w"][0])
              for m in results}
    assert pulled == {0, 1, 2, 3, 4}


def test_committed_versions_are_immutable(catalog):
    modelshard.push(STATE, "m@1", catalog=catalog)
    before = tree(catalog)
    with pytest.raises(AlreadyExistsError, match="m@1 already exists and versions are immutable"):
        modelshard.push({"x": np.zeros(1)}, "m@1", catalog=catalog)
    assert tree(catalog) == before


def test_auto_numbering_continues_after_given_versions(catalog):
    modelshard.push(STATE, "m@5", catalog=catalog)
    assert modelshard.push(STATE, "m", catalog=catalog).version == "6"
    modelshard.push(STATE, "m@2.0.0", catalog=catalog)
    assert modelshard.push(STATE, "m", catalog=catalog).version == "7"


class Crash(BaseException):
    """A process dying: not an Exception, so nothing may treat it as an ordinary error."""


def crash_at(monkeypatch, point: str, catalog: Catalog):
    """Make the push die at ``point`` without cleaning up, like a killed process: its staging
    folder stays, and so does its claim, no longer renewed."""
    monkeypatch.setattr(commit, "_abandon", lambda *a: None)
    real_release = Lease.release
    # Every point is outside the model's lock, whose release stays real.
    monkeypatch.setattr(Lease, "release", lambda lease: lease._stop.set() if "/.claims/" in lease.path
                        else real_release(lease))

    def die(*args, **kwargs):
        raise Crash(point)

    if point == "first shard written":
        real = commit.write_shard
        calls = []

        def write_then_die(*args, **kwargs):
            calls.append(1)
            if len(calls) > 1:
                raise Crash(point)
            return real(*args, **kwargs)

        monkeypatch.setattr(commit, "write_shard", write_then_die)
    elif point == "shards verified":
        monkeypatch.setattr(commit, "_manifest", die)
    elif point == "manifest written":
        monkeypatch.setattr(Catalog, "publish", die)
    elif point == "published":
        real_publish = Catalog.publish

        def publish_then_die(*args, **kwargs):
            real_publish(*args, **kwargs)
            raise Crash(point)

        monkeypatch.setattr(Catalog, "publish", publish_then_die)


def expire_leases(catalog: Catalog) -> None:
    """Let every lease of the dead pushes expire (HDFS keeps whole seconds)."""
    catalog.lease_seconds = 1.0
    time.sleep(2.1)


POINTS = ["first shard written", "shards verified", "manifest written", "published"]


@pytest.mark.parametrize("point", POINTS)
def test_crash_leaves_no_partial_version_and_gc_cleans(catalog, monkeypatch, point):
    modelshard.push(STATE, "m", catalog=catalog)
    with monkeypatch.context() as m:
        crash_at(m, point, catalog)
        with pytest.raises(Crash):
            modelshard.push({"x": np.ones((40, 100))}, "m@2", catalog=catalog, shard_size=4096,
                            workers=1)
    committed = point == "published"
    assert catalog.versions("m") == (["1", "2"] if committed else ["1"])
    assert modelshard.pull("m@1", catalog=catalog)["w"].tobytes() == STATE["w"].tobytes()
    assert catalog.resolve("m") == ("m", "2" if committed else "1")
    if committed:  # complete, with its aliases; only its claim was left behind
        modelshard.verify("m@2", catalog=catalog)
    expire_leases(catalog)
    removed = modelshard.gc(older_than=0, catalog=catalog)
    assert removed, "the crash left a staging folder or a claim"
    assert modelshard.gc(older_than=0, catalog=catalog) == []
    if not committed:  # the version number is free again
        modelshard.push({"x": np.ones(3)}, "m@2", catalog=catalog)


def test_gc_keeps_young_leftovers(catalog, monkeypatch):
    with monkeypatch.context() as m:
        crash_at(m, "manifest written", catalog)
        with pytest.raises(Crash):
            modelshard.push(STATE, "m@1", catalog=catalog)
    assert modelshard.gc(older_than=0, catalog=catalog) == []  # its lease has not expired yet
    with pytest.raises(AlreadyExistsError, match="another push of this version is in progress"):
        modelshard.push(STATE, "m@1", catalog=catalog)
    expire_leases(catalog)
    assert modelshard.gc(catalog=catalog) == []  # expired, but younger than the default day
    assert [r.reason for r in modelshard.gc(older_than=0, dry_run=True, catalog=catalog)] == \
        ["expired claim", "abandoned staging folder"]
    assert len(modelshard.gc(older_than=0, catalog=catalog)) == 2
    modelshard.push(STATE, "m@1", catalog=catalog)


def test_failed_push_cleans_up_after_itself(catalog, monkeypatch):
    modelshard.push(STATE, "m", catalog=catalog)
    before = tree(catalog)

    def fail(*args, **kwargs):
        raise StorageError("disk full")

    monkeypatch.setattr(commit, "_manifest", fail)
    with pytest.raises(StorageError, match="disk full"):
        modelshard.push(STATE, "m", catalog=catalog)
    assert tree(catalog) == before


class DamagingFs(LocalFileSystem):
    """A local disk whose writes lose one bit of every shard after it was checksummed, and
    which may report each file's CRC32C as HDFS's COMPOSITE_CRC file checksum does."""

    def __init__(self, *, reports_crc: bool) -> None:
        self.reports_crc, self.read_back = reports_crc, 0

    def open_write(self, path, **kw):
        f = super().open_write(path, **kw)
        if not path.endswith(".safetensors"):
            return f
        real = f.write
        f.write = lambda data: real(bytes([data[0] ^ 1]) + bytes(data[1:]))
        return f

    def stored_crc32c(self, path):
        return crc32c(open(path, "rb").read()) if self.reports_crc else None

    def open_read(self, path):
        self.read_back += path.endswith(".safetensors")
        return super().open_read(path)


@pytest.mark.parametrize("reports_crc, paranoid, caught", [
    (True, False, True),  # HDFS: the storage's own CRC32C, no read-back
    (False, True, True),  # --paranoid: read back, sha256 and every chunk
    (False, False, False),  # a local disk: fsync, no read-back (the page cache proves nothing)
])
def test_storage_damage_found_without_reading_back(catalog, reports_crc, paranoid, caught):
    catalog.fs = fs = DamagingFs(reports_crc=reports_crc)
    push = lambda: modelshard.push(STATE, "m", catalog=catalog, paranoid=paranoid)  # noqa: E731
    if caught:
        with pytest.raises(IntegrityError, match="model-00001-of-00001.safetensors: the storage "
                                                 "holds other bytes than were written.*push again"):
            push()
        assert catalog.versions("m") == []
        assert modelshard.gc(older_than=0, catalog=catalog) == []
    else:
        push()
    assert fs.read_back == (1 if paranoid else 0)


def test_empty_source_is_refused(catalog):
    with pytest.raises(modelshard.ModelShardError, match="holds no tensors"):
        modelshard.push({}, "m", catalog=catalog)
    assert tree(catalog) == []


def test_each_shard_is_written_as_one_block(catalog, monkeypatch):
    asked = {}
    real = type(catalog.fs).open_write

    def open_write(self, path, **kwargs):
        asked[path.rsplit("/", 1)[-1]] = kwargs.get("block_size")
        return real(self, path, **kwargs)

    monkeypatch.setattr(type(catalog.fs), "open_write", open_write)
    m = modelshard.push({"w": np.zeros((3, 1 << 20), np.uint8)}, "m", catalog=catalog,
                        shard_size=2 << 20)
    for s in m.shards:
        block = asked[s.path.rsplit("/", 1)[-1]]
        assert block % (1 << 20) == 0 and s.size <= block < s.size + (1 << 20)
