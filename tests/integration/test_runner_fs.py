"""The Hadoop runner's in-process HDFS calls answer as mrjob's ``hadoop fs`` commands do, and
a job on YARN starts no ``hadoop`` JVM but its submission."""

from __future__ import annotations

import mrjob.fs.hadoop
import pytest

from modelshard.jobs.launch import run_job
from modelshard.jobs.runner import InProcessHdfs
from tests.jobs.mr_smoke import MRSmoke
from tests.jobs.smoke import EXPECTED, TEXT


@pytest.fixture
def tree(hdfs_root, tmp_path):
    fs, root = hdfs_root
    fs.write_bytes(f"{root}/t/a.txt", b"alpha\n")
    fs.write_bytes(f"{root}/t/sub/b.txt", b"beta\n" * 1000)
    fs.mkdirs(f"{root}/t/empty")
    local = tmp_path / "up.txt"
    local.write_bytes(b"uploaded\n")
    return fs, root, local


def answers(hfs: mrjob.fs.hadoop.HadoopFilesystem, base: str, local, tag: str) -> dict:
    hfs.mkdir(f"{base}/made-{tag}/deep")
    hfs.put(str(local), f"{base}/put-{tag}.txt")
    hfs.touchz(f"{base}/z-{tag}")
    got = {
        "ls": sorted(p.replace(f"-{tag}", "") for p in hfs.ls(base)),
        "ls file": list(hfs.ls(f"{base}/a.txt")),
        "ls missing": list(hfs.ls(f"{base}/nothing")),
        "du": hfs.du(base) - len(b"uploaded\n"),
        "du missing": hfs.du(f"{base}/nothing"),
        "exists": (hfs.exists(f"{base}/a.txt"), hfs.exists(f"{base}/made-{tag}"), hfs.exists(f"{base}/nothing")),
        "cat": b"".join(hfs.cat(f"{base}/sub/b.txt")),
        "put": b"".join(hfs.cat(f"{base}/put-{tag}.txt")),
    }
    with pytest.raises(OSError):
        hfs.touchz(f"{base}/a.txt")
    for leftover in (f"put-{tag}.txt", f"z-{tag}", f"made-{tag}"):
        hfs.rm(f"{base}/{leftover}")
    hfs.rm(f"{base}/nothing")
    got["after rm"] = sorted(hfs.ls(base))
    return got


@pytest.mark.parametrize("form", ["hdfs://host:port/path", "hdfs:///path"])
def test_in_process_calls_answer_as_hadoop_fs_does(tree, form):
    fs, root, local = tree
    base = fs.uri(f"{root}/t") if form == "hdfs://host:port/path" else f"hdfs://{root}/t"
    hadoop_bin = None  # each finds `hadoop` as mrjob does
    mine = answers(InProcessHdfs(hadoop_bin), base, local, "mine")
    theirs = answers(mrjob.fs.hadoop.HadoopFilesystem(hadoop_bin), base, local, "theirs")
    assert mine == theirs
    assert all(p.startswith(f"{base}/") for p in mine["ls"])
    assert mine["ls missing"] == [] and mine["cat"] == b"beta\n" * 1000
    assert InProcessHdfs().get_hadoop_version() == mrjob.fs.hadoop.HadoopFilesystem().get_hadoop_version()


def test_a_job_starts_no_hadoop_fs_jvm(hdfs_root, monkeypatch):
    fs, root = hdfs_root
    fs.write_bytes(f"{root}/input.txt", TEXT.encode())
    spawned = []
    real_popen = mrjob.fs.hadoop.Popen
    monkeypatch.setattr(mrjob.fs.hadoop, "Popen", lambda args, **kw: spawned.append(args) or real_popen(args, **kw))
    result = run_job(MRSmoke, runner="hadoop", inputs=[fs.uri(f"{root}/input.txt")],
                     # as a reshard's staging folder: a hidden parent, the default NameNode
                     output_dir=f"hdfs://{root}/.staging/out", jobconf={}, catalog=fs.uri(root), flavour="slim")
    assert dict(result.output) == EXPECTED
    assert spawned == []  # `hadoop jar` is started by the runner itself, not by its filesystem
