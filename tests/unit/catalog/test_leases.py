"""Locks and claims are leases: renewed while their owner lives, taken over or collected
only once expired; a push either succeeds or leaves no version and no moved alias; rm says
what becomes of the aliases of the version it removes; gc removes every leftover it sees."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import modelshard
from modelshard.catalog import commit
from modelshard.catalog.catalog import Catalog
from modelshard.catalog.lease import Lease
from modelshard.cli import main
from modelshard.errors import StorageError, UsageError
from tests.store_data import tree

W = {"w": np.arange(6, dtype=np.float32)}


def test_gc_keeps_the_claim_and_staging_of_a_push_that_outlives_the_lease(catalog, monkeypatch):
    """A push (or a training pass) longer than the lease renews its claim: gc with
    ``older_than=0`` running meanwhile removes nothing of it, and the push commits."""
    catalog.lease_seconds = 2.5  # renewed every 0.8 s; HDFS keeps whole seconds
    staged, release = threading.Event(), threading.Event()
    real = commit.staged_manifest

    def slow(*args, **kwargs):
        staged.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(commit, "staged_manifest", slow)
    result = []
    pusher = threading.Thread(target=lambda: result.append(modelshard.push(W, "m", catalog=catalog)))
    pusher.start()
    assert staged.wait(30)
    time.sleep(5.5)  # over twice the lease: only renewals keep the claim alive
    assert modelshard.gc(older_than=0, catalog=catalog) == []
    release.set()
    pusher.join(60)
    assert [m.version for m in result] == ["1"]
    modelshard.verify("m@1", catalog=catalog)
    assert modelshard.gc(older_than=0, catalog=catalog) == []


def test_a_lock_whose_holder_died_is_taken_over_once_expired(catalog):
    modelshard.push(W, "m", catalog=catalog)
    catalog.lease_seconds = 2.0
    dead = Lease.create(catalog.fs, catalog._lock_path("m"), duration=2.0)  # never renewed
    started = time.monotonic()
    assert modelshard.alias("m@prod", 1, catalog=catalog) == "1"
    assert 1.0 <= time.monotonic() - started < 10  # waited for the lease (less HDFS's rounding)
    dead.release()  # too late: the file is someone else's now, or gone
    assert modelshard.alias("m@prod", catalog=catalog) == "1"
    assert [r.reason for r in modelshard.gc(older_than=0, catalog=catalog)] == []  # marker fresh
    time.sleep(3.1)
    assert [r.reason for r in modelshard.gc(older_than=0, catalog=catalog)] == ["marker of a broken lock"]


def test_a_live_lock_is_waited_for_then_refused_with_its_owner(catalog):
    modelshard.push(W, "m", catalog=catalog)
    catalog.lease_seconds = 3.0  # renewed every second: alive even with HDFS's whole seconds
    with catalog.lock("m"):
        other = Catalog(catalog.uri, lease_seconds=3.0)
        with pytest.raises(StorageError, match=f"model 'm' is locked by pid {os.getpid()} on .*retry"):
            modelshard.alias("m@prod", 1, catalog=other)
    assert modelshard.alias("m@prod", 1, catalog=other) == "1"


def test_a_push_whose_claim_was_lost_commits_nothing(catalog, monkeypatch):
    real = commit.staged_manifest

    def lose_claim(cat, name, version, *args, **kwargs):
        catalog.fs.delete(catalog._claim(name, version))  # as gc does to an expired claim
        return real(cat, name, version, *args, **kwargs)

    monkeypatch.setattr(commit, "staged_manifest", lose_claim)
    with pytest.raises(StorageError, match="lease .*/.claims/1 lost: its file was removed or taken over"):
        modelshard.push(W, "m", catalog=catalog)
    assert catalog.versions("m") == [] and tree(catalog) == []


def test_a_push_that_cannot_move_an_alias_leaves_no_version_and_no_moved_alias(catalog, monkeypatch):
    modelshard.push(W, "m", catalog=catalog, aliases=["prod"])
    before = tree(catalog)
    real = Catalog._write_alias

    def disk_full_at_prod(self, name, alias, version):
        if alias == "prod":
            raise StorageError("aliases/prod: no space left on device; free disk space and retry")
        return real(self, name, alias, version)

    monkeypatch.setattr(Catalog, "_write_alias", disk_full_at_prod)
    with pytest.raises(StorageError, match="no space left"):
        modelshard.push({"w": np.ones(3)}, "m", catalog=catalog, aliases=["prod", "canary"])
    assert tree(catalog) == before
    assert catalog.aliases("m") == {"latest": "1", "prod": "1"}
    monkeypatch.undo()
    assert modelshard.push(W, "m", catalog=catalog).version == "2"


def test_latest_only_moves_forward(catalog):
    modelshard.push(W, "m@5", catalog=catalog)
    modelshard.push(W, "m@2", catalog=catalog)
    assert catalog.resolve("m") == ("m", "5")
    modelshard.push(W, "m@10", catalog=catalog)
    assert catalog.resolve("m") == ("m", "10")


def test_rm_moves_or_drops_the_aliases_it_is_told_to(catalog):
    for _ in range(3):
        modelshard.push(W, "m", catalog=catalog)
    modelshard.alias("m@prod", 1, catalog=catalog)
    modelshard.alias("m@canary", 1, catalog=catalog)
    with pytest.raises(UsageError, match="m@1 is the target of alias\\(es\\) canary, prod; .*--move-aliases-to"):
        modelshard.rm("m@1", confirm=True, catalog=catalog)
    with pytest.raises(UsageError, match="is the version being removed"):
        modelshard.rm("m@1", confirm=True, move_aliases_to="prod", catalog=catalog)
    with pytest.raises(UsageError, match="not both"):
        modelshard.rm("m@1", confirm=True, move_aliases_to=2, drop_aliases=True, catalog=catalog)
    modelshard.rm("m@1", confirm=True, move_aliases_to=2, catalog=catalog)
    assert catalog.aliases("m") == {"canary": "2", "latest": "3", "prod": "2"}
    modelshard.rm("m@2", confirm=True, drop_aliases=True, catalog=catalog)
    assert catalog.aliases("m") == {"latest": "3"}
    with pytest.raises(modelshard.ModelShardError, match="m@1 was removed and version numbers are never reused"):
        modelshard.push(W, "m@1", catalog=catalog)


def test_rm_flags_on_the_command_line(catalog, capsys):
    for _ in range(2):
        modelshard.push(W, "m", catalog=catalog, aliases=["prod"])
    modelshard.alias("m@prod", 1, catalog=catalog)
    c = ["--catalog", catalog.uri]
    assert main(["rm", "m@1", "--yes", *c]) == 2
    assert "--move-aliases-to" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["rm", "m@1", "--yes", "--move-aliases-to", "2", "--drop-aliases", *c])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "not allowed with argument" in err
    assert main(["rm", "m@1", "--yes", "--move-aliases-to", "latest", *c]) == 0
    assert catalog.aliases("m") == {"latest": "2", "prod": "2"}


def test_a_removed_model_keeps_its_numbers(catalog):
    modelshard.push(W, "m", catalog=catalog)
    modelshard.push(W, "m", catalog=catalog)
    modelshard.rm("m", confirm=True, catalog=catalog)
    assert catalog.models() == []
    assert modelshard.push(W, "m", catalog=catalog).version == "3"


def test_gc_removes_empty_alias_folders_and_orphaned_temporary_files(catalog, capsys):
    modelshard.push(W, "m", catalog=catalog, aliases=["prod"])
    fs, aliases = catalog.fs, f"{catalog.model_dir('m')}/aliases"
    fs.mkdirs(f"{aliases}/broken")  # what a push killed at its first alias write leaves
    fs.write_bytes(f"{aliases}/dead/.000000000001.0123.tmp", b"{")  # an exclusive create killed
    fs.write_bytes(f"{aliases}/prod/.000000000002.4567.tmp", b"{")
    assert main(["ls", "m", "--catalog", catalog.uri]) == 0  # readers are not blocked by them
    assert "m@broken: no such alias" in str(pytest.raises(modelshard.ModelShardError, catalog.resolve,
                                                          "m@broken").value)
    removed = sorted((r.path.removeprefix(aliases), r.reason) for r in modelshard.gc(older_than=0, catalog=catalog))
    assert removed == [("/broken", "empty alias folder"), ("/dead", "empty alias folder"),
                       ("/prod/.000000000002.4567.tmp", "orphaned temporary file")]
    assert sorted(i.path.rsplit("/", 1)[-1] for i in fs.ls(aliases)) == ["latest", "prod"]
    assert catalog.aliases("m") == {"latest": "1", "prod": "1"}
    assert modelshard.gc(older_than=0, catalog=catalog) == []
    capsys.readouterr()


def test_the_next_lock_holder_finishes_a_publish_killed_after_its_rename(catalog, monkeypatch):
    modelshard.push(W, "m", catalog=catalog)
    with monkeypatch.context() as m:  # killed after the rename: no alias moved, the intent stays
        m.setattr(Catalog, "_point", lambda *args: None)
        m.setattr(Catalog, "_forget", lambda *args: None)
        modelshard.push(W, "m", catalog=catalog, aliases=["prod"])
    assert catalog.versions("m") == ["1", "2"] and catalog.aliases("m") == {"latest": "1"}
    modelshard.alias("m@canary", 1, catalog=catalog)  # any change under the lock finishes it first
    assert catalog.aliases("m") == {"canary": "1", "latest": "2", "prod": "2"}
    assert not catalog.fs.exists(catalog._intent_path("m"))


def test_an_intent_cut_short_before_the_rename_is_forgotten(catalog):
    modelshard.push(W, "m", catalog=catalog)
    catalog.fs.write_bytes(catalog._intent_path("m"), b'{"version": "2", "ali')
    before = catalog.aliases("m")
    assert modelshard.gc(older_than=0, catalog=catalog) == []
    assert catalog.aliases("m") == before and not catalog.fs.exists(catalog._intent_path("m"))


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan"])
def test_a_bad_lease_setting_is_a_usage_error(monkeypatch, catalog, value):
    monkeypatch.setenv("MODELSHARD_LEASE_SECONDS", value)
    with pytest.raises(UsageError, match="MODELSHARD_LEASE_SECONDS=.*give the lease duration in seconds"):
        Catalog(catalog.uri)
