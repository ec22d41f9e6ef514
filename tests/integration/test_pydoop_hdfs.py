"""The foundation proof: pydoop, as bin/build-pydoop built it, on the real HDFS. Everything
HdfsFileSystem relies on is checked here on pydoop itself: write with replication and block
size, pread at an offset, list, set and read back replication, block hosts."""

from __future__ import annotations

import uuid

import pytest

from modelshard.fs.hdfs import _pydoop_hdfs

MiB = 1 << 20
DATA = bytes(range(256)) * (5 * MiB // 2 // 256)  # 2.5 blocks of 1 MiB


@pytest.fixture
def pydoop_dir(cluster):
    """A fresh HDFS folder and a pydoop handle on fs.defaultFS."""
    hdfs = _pydoop_hdfs()
    fs = hdfs.hdfs("default", 0)
    path = f"/tmp/modelshard-test/pydoop-{uuid.uuid4().hex}"
    fs.create_directory(path)
    yield fs, path
    fs.delete(path, True)
    fs.close()


def test_pydoop_is_the_patched_2_0_0():
    _pydoop_hdfs()  # points pydoop at the project's Hadoop
    import pydoop

    assert pydoop.__version__ == "2.0.0"
    assert "hadoop-common-3.5.0.jar" in pydoop.hadoop_classpath()


def test_write_pread_list_replicate_and_locate(pydoop_dir):
    fs, root = pydoop_dir
    path = f"{root}/x.bin"
    with fs.open_file(path, "wb", replication=1, blocksize=MiB) as f:
        f.write(DATA)

    with fs.open_file(path, "rb") as f:
        assert f.pread(MiB + 100, 50) == DATA[MiB + 100 : MiB + 150]
        # One pread stops at a block boundary: HdfsFileSystem.read_range loops.
        head = f.pread(MiB - 3, 6)
        assert 0 < len(head) <= 6 and head == DATA[MiB - 3 : MiB - 3 + len(head)]

    [entry] = fs.list_directory(root)
    assert entry["name"].endswith(path) and entry["name"].startswith("hdfs://")
    assert (entry["kind"], entry["size"]) == ("file", len(DATA))
    assert (entry["replication"], entry["block_size"]) == (1, MiB)

    fs.set_replication(path, 2)
    assert fs.get_path_info(path)["replication"] == 2

    hosts = fs.get_hosts(path, 0, len(DATA))
    assert len(hosts) == 3 and all(hosts)  # one host list per block
    assert len(fs.get_hosts(path, MiB + 5, 10)) == 1


def test_errors_carry_errno(pydoop_dir):
    fs, root = pydoop_dir
    with pytest.raises(FileNotFoundError):
        fs.get_path_info(f"{root}/nope")
    fs.open_file(f"{root}/f", "wb").close()
    with pytest.raises(NotADirectoryError):
        fs.create_directory(f"{root}/f/sub")
