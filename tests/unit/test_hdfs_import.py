"""Without pydoop, or without a Hadoop install, HDFS fails with a message that says what to
install or set."""

import sys

import pytest

from modelshard.errors import ModelShardError
from modelshard.fs import get_fs


def test_missing_pydoop_says_make_pydoop(monkeypatch, tmp_path):
    monkeypatch.setenv("HADOOP_HOME", str(tmp_path))
    monkeypatch.setitem(sys.modules, "pydoop.hdfs", None)  # what a failed import leaves
    monkeypatch.setattr("modelshard.fs.hdfs.HdfsFileSystem._instances", {})
    with pytest.raises(ModelShardError, match="make pydoop"):
        get_fs("hdfs://127.0.0.1:9000/models")


def test_missing_hadoop_says_set_hadoop_home(monkeypatch, tmp_path):
    monkeypatch.delenv("HADOOP_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no `hadoop` on it
    monkeypatch.setattr("modelshard.fs.hdfs.HdfsFileSystem._instances", {})
    with pytest.raises(ModelShardError, match="set HADOOP_HOME"):
        get_fs("hdfs://127.0.0.1:9000/models")
