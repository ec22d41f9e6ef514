"""The ``kill -9`` trials of ``tests/faults/test_kill_9.py``, the same functions, with the
catalog on HDFS: a push, a copy (into HDFS, from a local catalog) and a reshard (its job on
the inline runner), each killed 20 times at points spread over the whole operation, commit
whole or not at all; alias moves killed 20 times leave the alias on one of its targets.
Leases are 3 s: HDFS keeps modification times in whole seconds. Each trial starts a JVM
(seconds, most of a short operation), so the operations are shorter than on the local
disk, not the trials fewer: versions of 8 shards, reshards to 4, runs of 10 alias moves."""

from __future__ import annotations

from tests.faults.test_kill_9 import LEASE, alias_trials, commit_trials, fill_source

SHARDS = 8


def test_kill_9_anywhere_in_a_push_on_hdfs(hdfs_root):
    fs, root = hdfs_root
    print(commit_trials(fs.uri(f"{root}/catalog"), 20, shards=SHARDS))  # docs/reliability.md


def test_kill_9_anywhere_in_a_copy_to_hdfs(hdfs_root, tmp_path):
    fs, root = hdfs_root
    fill_source(str(tmp_path / "source"), shards=SHARDS)
    print(commit_trials(fs.uri(f"{root}/catalog"), 20, operation="copy", source=str(tmp_path / "source")))


def test_kill_9_anywhere_in_a_reshard_on_hdfs(hdfs_root):
    fs, root = hdfs_root
    print(commit_trials(fs.uri(f"{root}/catalog"), 20, operation="reshard", shards=SHARDS))


def test_kill_9_anywhere_in_alias_moves_on_hdfs(hdfs_root):
    fs, root = hdfs_root
    print(alias_trials(fs.uri(f"{root}/catalog"), 20, rounds=5, lease=LEASE))
