"""The ``kill -9`` trials of ``tests/faults`` with the catalog on HDFS."""

from __future__ import annotations

from tests.faults.test_kill_9 import commit_trials


def test_kill_9_anywhere_in_a_push_on_hdfs(hdfs_root):
    fs, root = hdfs_root
    print(commit_trials(fs.uri(f"{root}/catalog"), 20))  # the figures of docs/reliability.md
