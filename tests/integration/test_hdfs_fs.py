"""HdfsFileSystem beyond the shared contract (tests/contract): what only HDFS has."""

from __future__ import annotations

import pytest

from modelshard.errors import StorageError
from modelshard.fs import get_fs
from modelshard.fs.hdfs import HdfsFileSystem, _pydoop_hdfs

MiB = 1 << 20


def test_one_cached_connection_per_namenode(hdfs_root):
    fs, root = hdfs_root
    assert HdfsFileSystem.for_netloc("") is fs
    assert HdfsFileSystem.for_netloc("default") is fs
    assert HdfsFileSystem.for_netloc(fs.netloc) is fs
    assert fs.uri(f"{root}/a") == f"hdfs://127.0.0.1:9000{root}/a"
    assert get_fs(f"hdfs://{root}/a") == (fs, f"{root}/a")


def test_permission_denied_says_so_and_names_the_path(hdfs_root):
    fs, root = hdfs_root
    fs.write_bytes(f"{root}/private", b"secret")
    _pydoop_hdfs().hdfs("default", 0).chmod(f"{root}/private", 0o600)
    other = HdfsFileSystem("default", 0, user="modelshard-nobody")
    for call in (
        lambda: other.write_bytes(f"{root}/new", b"x"),
        lambda: other.read_range(f"{root}/private", 0, 1),
        lambda: other.mkdirs(f"{root}/sub"),
        lambda: other.rename(f"{root}/private", f"{root}/moved"),
    ):
        with pytest.raises(StorageError, match=r"hdfs://127\.0\.0\.1:9000/.*: permission denied"):
            call()
    assert fs.read_bytes(f"{root}/private") == b"secret"


def test_a_refused_block_size_names_the_option(hdfs_root):
    fs, root = hdfs_root
    with pytest.raises(StorageError, match=r"/f: HDFS could not create the file.*block_size=1000"):
        fs.write_bytes(f"{root}/f", b"x", block_size=1000)


def test_an_unreachable_namenode_is_a_storage_error(cluster):
    fs = HdfsFileSystem.for_netloc("127.0.0.1:1")
    with pytest.raises(StorageError, match=r"hdfs://127\.0\.0\.1:1/x: .*NameNode"):
        fs.stat("/x")
