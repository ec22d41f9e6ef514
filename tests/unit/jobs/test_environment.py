"""The task environment: what the archives hold, that the packed interpreter runs on its own
(no virtualenv, no base install of the submitter's), shipping once per content, and the
edge-node look-ups of Hadoop."""

import os
import subprocess
import sys
import tarfile

import pytest

from modelshard.errors import UsageError
from modelshard.fs import LocalFileSystem
from modelshard.fs.hdfs import hadoop_conf_dir
from modelshard.jobs import environment as envmod
from modelshard.jobs.environment import TaskEnvironment, collect_code, collect_environment, ship, write_archive
from modelshard.jobs.hadoop import check_catalog, env_dir, runner_args, streaming_jar


def test_flavours_hold_the_dependency_closure_without_modelshard_itself():
    full, slim = collect_environment("full"), collect_environment("slim")
    for dist in ("numpy", "safetensors", "mrjob", "jinja2", "orjson", "ml-dtypes", "pydoop"):
        assert dist in full.distributions and dist in slim.distributions
    assert "torch" in full.distributions and "triton" in full.distributions
    assert not {d for d in slim.distributions if d == "torch" or d.startswith(("nvidia", "triton", "cuda"))}
    assert "modelshard" not in full.distributions  # it travels in the code archive
    assert full.key != slim.key and full.name == f"env-full-{full.key}.tar"
    assert collect_environment("full") is full  # looked up once per process


def test_unknown_flavour_is_refused():
    with pytest.raises(UsageError, match="flavour 'huge'"):
        collect_environment("huge")


def test_compiler_headers_stay_behind():
    names = collect_environment("full").files
    assert not [n for n in names if "/include/" in n and n.endswith(".h")]
    assert any(n.endswith("/torch/__init__.py") for n in names)


def test_code_archive_holds_modelshard_mr_tasks_and_metadata():
    code = collect_code()
    assert {"modelshard/__init__.py", "mr_tasks/mr_reshard.py", "modelshard/jobs/environment.py"} <= set(code.files)
    assert any(n.endswith(".dist-info/METADATA") for n in code.extra)
    assert collect_code().key == code.key


def test_the_packed_interpreter_runs_alone(tmp_path):
    """The slim archive, unpacked anywhere, runs with nothing of this virtualenv on its paths."""
    with open(tmp_path / "env.tar", "wb") as f:
        write_archive(collect_environment("slim"), f)
    with tarfile.open(tmp_path / "env.tar") as tar:
        tar.extractall(tmp_path / "env", filter="tar")
    code = ("import sys, numpy, mrjob, safetensors, orjson, jinja2; print(sys.prefix); "
            "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('modelshard'))")
    out = subprocess.run([tmp_path / "env" / "bin" / "python", "-c", code], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(tmp_path / "env"), "None", "None"]


def test_ship_uploads_once_and_never_shows_a_partial_archive(tmp_path, monkeypatch):
    fs, folder = LocalFileSystem(), str(tmp_path / "envs")
    code = collect_code()
    first = ship(code, fs, folder)
    assert first.uploaded > 0 and os.path.getsize(os.path.join(folder, code.name)) == first.uploaded
    assert ship(code, fs, folder).uploaded == 0
    assert os.listdir(folder) == [code.name]

    def broken(archive, out):
        out.write(b"x" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(envmod, "write_archive", broken)
    other = envmod.Archive("code-other.tar", "other", lambda: {})
    with pytest.raises(OSError):
        ship(other, fs, folder)
    assert os.listdir(folder) == [code.name]  # neither the archive nor its temporary file


def test_task_environment_args_unpack_env_and_put_code_on_the_path():
    shipped = TaskEnvironment(envmod.Shipped("hdfs://nn/e/env-full-1.tar", 0, 0.0),
                              envmod.Shipped("hdfs://nn/e/code-2.tar", 0, 0.0))
    assert shipped.mrjob_args() == [
        "--archives", "hdfs://nn/e/env-full-1.tar#env", "--python-bin", "env/bin/python",
        "--setup", "export PYTHONPATH=hdfs://nn/e/code-2.tar#/${PYTHONPATH:+:$PYTHONPATH}"]


def test_a_user_archive_must_be_on_hdfs(tmp_path):
    with pytest.raises(UsageError, match="give an hdfs:// URI"):
        envmod.task_environment("full", LocalFileSystem(), str(tmp_path), python_archive=str(tmp_path / "e.tar"))


def test_yarn_with_a_local_catalog_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(UsageError, match="cannot read this machine's disk.*hdfs://"):
        check_catalog("hadoop", str(tmp_path))
    with pytest.raises(UsageError, match="hdfs://"):
        runner_args("hadoop", catalog=str(tmp_path))
    check_catalog("local", str(tmp_path))  # local runners read local catalogs


def test_env_dir_is_beside_the_catalog_unless_configured(monkeypatch):
    monkeypatch.delenv(envmod.ARCHIVE_ENV_VAR, raising=False)
    monkeypatch.delenv("MODELSHARD_ENV_DIR", raising=False)
    monkeypatch.setattr("getpass.getuser", lambda: "ann")
    assert env_dir("hdfs://nn:8020/models") == "hdfs://nn:8020/user/ann/.modelshard/envs"
    monkeypatch.setenv("MODELSHARD_ENV_DIR", "hdfs:///apps/envs")
    assert env_dir("hdfs://nn:8020/models") == "hdfs:///apps/envs"


def test_streaming_jar_in_the_usual_layouts(tmp_path):
    tarball = tmp_path / "hadoop-3.3.6"
    jar = tarball / "share/hadoop/tools/lib/hadoop-streaming-3.3.6.jar"
    jar.parent.mkdir(parents=True)
    jar.touch()
    assert streaming_jar(tarball) == str(jar)
    bigtop = tmp_path / "usr/lib"
    (bigtop / "hadoop").mkdir(parents=True)
    (bigtop / "hadoop-mapreduce").mkdir()
    (bigtop / "hadoop-mapreduce/hadoop-streaming.jar").touch()
    assert streaming_jar(bigtop / "hadoop") == str(bigtop / "hadoop-mapreduce/hadoop-streaming.jar")


def test_hadoop_conf_dir_as_hadoops_scripts_choose(tmp_path, monkeypatch):
    monkeypatch.setenv("HADOOP_CONF_DIR", str(tmp_path / "conf"))
    assert hadoop_conf_dir() == tmp_path / "conf"
    monkeypatch.delenv("HADOOP_CONF_DIR")
    (tmp_path / "etc/hadoop").mkdir(parents=True)
    monkeypatch.setenv("HADOOP_HOME", str(tmp_path))
    assert hadoop_conf_dir() == tmp_path / "etc/hadoop"


def test_the_launcher_finds_its_own_lib_and_the_nodes_jvm():
    launcher = collect_environment("slim").extra["bin/python"].decode()
    assert launcher.startswith("#!/bin/sh") and '"$here/lib' in launcher and "$JAVA_HOME/lib/server" in launcher
    assert f'exec "$here/bin/{os.path.basename(os.path.realpath(sys._base_executable))}"' in launcher


def test_prune_removes_only_stale_archives_this_python_does_not_name(tmp_path, monkeypatch, capsys):
    from modelshard.cli import main

    folder = tmp_path / "envs"
    folder.mkdir()
    current = [collect_environment("full").name, collect_environment("slim").name, collect_code().name]
    old = ["env-full-0123456789abcdef0123.tar", "code-0123456789abcdef0123.tar"]
    new = "env-full-fedcba9876543210fedc.tar"
    for name in [*current, *old, new, ".env-full-x.tar.1.2.tmp"]:
        (folder / name).write_bytes(b"x" * 10)
    day_ago = os.stat(folder / new).st_mtime - 2 * 86400
    for name in [*current, *old, ".env-full-x.tar.1.2.tmp"]:
        os.utime(folder / name, (day_ago, day_ago))
    monkeypatch.setenv("MODELSHARD_ENV_DIR", str(folder))

    assert main(["envs", "prune", "--dry-run"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted([*current, *old, new, ".env-full-x.tar.1.2.tmp"])
    assert main(["envs", "prune"]) == 0  # written 2 days ago and not this Python's: removed
    assert sorted(p.name for p in folder.iterdir()) == sorted([*current, new])
    assert main(["envs", "prune", "--older-than", "0"]) == 0  # never what this Python's jobs name
    assert sorted(p.name for p in folder.iterdir()) == sorted(current)
    capsys.readouterr()
    assert main(["envs"]) == 0
    assert capsys.readouterr().out.count("(this Python)") == 3


def test_envs_needs_an_hdfs_catalog(tmp_path, monkeypatch, capsys):
    from modelshard.cli import main

    monkeypatch.delenv("MODELSHARD_ENV_DIR", raising=False)
    assert main(["envs", "--catalog", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "hdfs://" in err and len(err.strip().splitlines()) == 1
