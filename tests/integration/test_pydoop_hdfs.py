"""The foundation proof: pydoop, as bin/build-pydoop built it, on the real HDFS. Everything
HdfsFileSystem relies on is checked here on pydoop itself: write with replication and block
size, pread at an offset, list, set and read back replication, block hosts, the Java
exception behind a failed call kept for the error message (per thread) instead of printed."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import uuid
from importlib import metadata
from pathlib import Path

import pytest

from modelshard.fs.hdfs import _pydoop_hdfs

REPO = Path(__file__).resolve().parents[2]
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
    # HdfsFileSystem shares a connection between threads, which only the patch makes safe.
    wheel = json.loads(metadata.distribution("pydoop").read_text("direct_url.json"))["url"]
    patch = hashlib.sha256((REPO / "bin" / "pydoop-2.0.0.patch").read_bytes()).hexdigest()
    assert f"/pydoop-2.0.0-{patch[:12]}/" in wheel, f"{wheel} is stale: run 'make pydoop'"


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


def test_a_failed_call_keeps_its_java_exception_for_the_error_not_for_stderr(pydoop_dir, capfd,
                                                                           monkeypatch):
    fs, root = pydoop_dir
    native = fs.fs  # the calls themselves, without the wrapper's own checks
    native.create_directory(f"{root}/d")
    native.open_file(f"{root}/d/x", "w").close()
    native.take_last_exception()  # whatever an earlier test left on this thread
    for printing in ("1", "0"):
        monkeypatch.setenv("LIBHDFS_PRINT_EXCEPTIONS", printing)  # read at each failure
        with pytest.raises(OSError) as e:
            native.delete(f"{root}/d", False)  # not empty: an exception libhdfs has no errno for
        assert e.value.errno == 255
        kept = native.take_last_exception()
        # The first line of each: the NameNode's exception arrives with its stack trace.
        assert kept.startswith("org.apache.hadoop.fs.PathIsNotEmptyDirectoryException: "
                               f"``{root}/d is non empty': Directory is not empty; caused by "
                               "org.apache.hadoop.ipc.RemoteException"), kept
        assert "\n" not in kept and native.take_last_exception() is None  # taking it cleared it
        printed = capfd.readouterr().err
        assert ("\tat org.apache.hadoop" in printed) == (printing == "1"), printed
    # Each thread keeps its own: another thread's failure leaves this one's alone.
    with pytest.raises(OSError):
        native.delete(f"{root}/d", False)
    seen = []

    def fail_elsewhere() -> None:
        try:
            native.create_directory(f"{root}/d/x/sub")
        except NotADirectoryError:
            seen.append(native.take_last_exception())

    other = threading.Thread(target=fail_elsewhere)
    other.start()
    other.join()
    assert seen[0].startswith("org.apache.hadoop.fs.ParentNotDirectoryException: "), seen
    assert native.take_last_exception().startswith("org.apache.hadoop.fs.PathIsNotEmptyDirectoryException")


def test_threads_share_one_connection(cluster):
    """8 threads x 200 rounds of open, read, list and stat on one connection, natively and
    through HdfsFileSystem. Unpatched, pydoop's open_file crashed the process (SIGSEGV)
    within seconds, so this runs in a process of its own."""
    run = subprocess.run([sys.executable, "-c", _HAMMER, "8", "200"], capture_output=True,
                         text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout == "1600 rounds\n"


_HAMMER = """
import sys, threading, uuid
from modelshard.fs.hdfs import HdfsFileSystem

threads, rounds = int(sys.argv[1]), int(sys.argv[2])
fs = HdfsFileSystem.for_netloc("")
native = fs._fs
root = f"/tmp/modelshard-test/threads-{uuid.uuid4().hex}"
data = [bytes([i]) * (1000 + i) for i in range(8)]
for i, d in enumerate(data):
    fs.write_bytes(f"{root}/f{i}", d)
done, errors = [], []

def work(t):
    try:
        for r in range(rounds):
            i = (t + r) % len(data)
            path = f"{root}/f{i}"
            f = native.open_file(path, "r")
            try:
                assert f.pread(10, 20) == data[i][10:30]
                assert f.read(len(data[i]) + 1) == data[i]
            finally:
                f.close()
            assert len(native.list_directory(root)) == len(data)
            assert native.get_path_info(path)["size"] == len(data[i])
            with fs.open_read(path) as g:
                assert g.read() == data[i]
            assert fs.read_range(path, 5, 7) == data[i][5:12]
            assert [e.size for e in fs.ls(root)] == [len(d) for d in data]
            done.append(1)
    except BaseException as e:
        errors.append(repr(e))

workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
fs.delete(root, recursive=True)
if errors:
    sys.exit(f"{len(errors)} threads failed, e.g. {errors[0]}")
print(f"{len(done)} rounds")
"""
