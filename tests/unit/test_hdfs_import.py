"""Without pydoop, HDFS fails with a message that says how to install it."""

import sys

import pytest

from modelshard.errors import ModelShardError
from modelshard.fs import get_fs


def test_missing_pydoop_says_make_pydoop(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydoop.hdfs", None)  # what a failed import leaves
    monkeypatch.setattr("modelshard.fs.hdfs.HdfsFileSystem._instances", {})
    with pytest.raises(ModelShardError, match="make pydoop"):
        get_fs("hdfs://127.0.0.1:9000/models")
