"""Issue 9 on HDFS. A shard rewritten with one byte changed (HDFS's own block checksums then
match the new bytes: only modelshard's CRC32C can tell) is found by every read path with
default options; a push checks what HDFS stored.

A byte changed in the block files on the DataNodes' disks, as a failing disk changes it, is
found first by HDFS, which checks every read against the CRC32C it keeps of each 512 bytes:
in one replica, every read path falls back to another and serves the right data (and the
command prints nothing on stderr); in every replica (of a shard's data or header, or of the
manifest), every read path fails with a modelshard error naming the model, version, shard
or manifest, what happened and what to do, and the command says it in one line, without a
Java stack trace. Each test pushes its own version: the NameNode marks a replica that a
reader found damaged as corrupt, and no test depends on when."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import modelshard
from modelshard import placement
from modelshard.catalog.catalog import Catalog
from modelshard.catalog.commit import shard_block_size
from modelshard.catalog.manifest import MANIFEST
from modelshard.errors import FormatError, IntegrityError
from tests.cluster import blocks, flip_byte
from tests.counting_fs import CountingFileSystem
from tests.store_data import assert_same

REPO = Path(__file__).resolve().parents[2]

STATE = {f"w{i}": np.full((64, 16), i, np.float32) for i in range(6)}
VICTIM = "w2"

READ_PATHS = {
    "get": lambda uri, tmp: modelshard.open("m", catalog=uri).get(VICTIM),
    "get_rows": lambda uri, tmp: modelshard.open("m", catalog=uri).get_rows(VICTIM, 3, 4),
    "load through the cache": lambda uri, tmp: modelshard.load(
        "m", catalog=uri, cache_dir=str(tmp / "cache"), fill_cache=True),
    "load under a budget": lambda uri, tmp: modelshard.load("m", catalog=uri,
                                                            budget_bytes=1 << 20),
    "pull into memory": lambda uri, tmp: modelshard.pull("m", catalog=uri),
    "pull to a folder": lambda uri, tmp: modelshard.pull("m", str(tmp / "out"), catalog=uri),
    "preload": lambda uri, tmp: modelshard.preload("m", catalog=uri, cache_dir=str(tmp / "c")),
    "copy": lambda uri, tmp: placement.copy("m", str(tmp / "other"), catalog=uri),
    "verify": lambda uri, tmp: modelshard.verify("m", catalog=uri),
    "load_into a module": lambda uri, tmp: _load_into(uri),
}


def _load_into(uri: str) -> dict[str, np.ndarray]:
    """The version loaded into a module built on the meta device (each shard read straight
    into the module's host memory)."""
    module = torch.nn.Module()
    for name, a in STATE.items():
        module.register_buffer(name, torch.empty(a.shape, device="meta"))
    modelshard.load_into(module, "m", catalog=uri, device="cpu")
    return {n: t.numpy() for n, t in module.state_dict().items()}


@pytest.fixture
def pushed(hdfs_root):
    fs, root = hdfs_root
    uri = fs.uri(f"{root}/cat")
    return uri, modelshard.push(STATE, "m", catalog=uri, shard_size=8192)


def _target(uri: str, m, where: str) -> tuple[str, int, str]:
    """The HDFS path of version 1's file to damage, the offset of a byte in ``where`` (the
    victim's data, the first shard header's JSON, the manifest), and the file's name."""
    cat = Catalog(uri)
    if where == "manifest":
        path = f"{cat.version_dir('m', m.version)}/{MANIFEST}"
        return path, cat.fs.stat(path).size // 2, MANIFEST
    piece = m.tensors[VICTIM].pieces[0]
    path = f"{cat.version_dir('m', m.version)}/{piece.shard}"
    return path, (piece.begin + piece.end) // 2 if where == "tensor data" else 20, piece.shard


def _rewrite_flipped(uri: str, m, where: str) -> str:
    cat = Catalog(uri)
    path, offset, shard = _target(uri, m, where)
    data = bytearray(cat.fs.read_bytes(path))
    data[offset] ^= 0x04
    cat.fs.write_bytes(path, bytes(data), block_size=shard_block_size(len(data)))
    return shard


@pytest.mark.parametrize("where", ["tensor data", "header"])
@pytest.mark.parametrize("path", list(READ_PATHS))
def test_a_rewritten_shard_is_found_by_every_read_path(pushed, tmp_path, path, where):
    uri, m = pushed
    shard = _rewrite_flipped(uri, m, where)
    with pytest.raises((IntegrityError, FormatError)) as e:
        READ_PATHS[path](uri, tmp_path)
    assert shard in str(e.value) and "m@1" in str(e.value)


def test_an_intact_version_reads_by_every_path(pushed, tmp_path):
    uri, _ = pushed
    for i, read in enumerate(READ_PATHS.values()):
        read(uri, tmp_path / str(i))
    assert np.array_equal(modelshard.load("m", catalog=uri)[VICTIM], STATE[VICTIM])


def test_push_checks_what_hdfs_stored_without_reading_it_back(hdfs_root):
    fs, root = hdfs_root
    cat = Catalog(fs.uri(f"{root}/cat"))
    cat.fs = counted = CountingFileSystem(cat.fs)
    m = modelshard.push(STATE, "m", catalog=cat, shard_size=8192)
    assert counted.bytes_read < 4096  # the manifest and aliases, never a shard
    for s in m.shards:  # HDFS's COMPOSITE_CRC file checksum is the CRC32C of the file
        assert fs.stored_crc32c(f"{cat.version_dir('m', m.version)}/{s.path}") == \
            s.checksums.crc32c
    counted.reset()
    modelshard.push(STATE, "m", catalog=cat, shard_size=8192, paranoid=True)
    assert counted.bytes_read >= sum(s.size for s in m.shards)  # --paranoid reads back


def test_a_stored_shard_that_differs_aborts_the_push(hdfs_root, monkeypatch):
    fs, root = hdfs_root
    uri = fs.uri(f"{root}/cat")
    monkeypatch.setattr(type(fs), "stored_crc32c", lambda self, path: 0)
    with pytest.raises(IntegrityError, match="the storage holds other bytes than were written"):
        modelshard.push(STATE, "m", catalog=uri, shard_size=8192)
    assert not fs.exists(f"{root}/cat/models/m/1")


# -- a byte changed in the DataNodes' block files ---------------------------------------------
def _cached(tmp: Path, m) -> bool:
    """The preload cache holds every shard, each intact."""
    entries = [p for p in (tmp / "c").rglob("*") if p.is_file() and len(p.name) == 64]
    assert sorted(p.name for p in entries) == sorted(s.sha256 for s in m.shards)
    return all(hashlib.sha256(p.read_bytes()).hexdigest() == p.name for p in entries)


def _folder(folder: Path) -> dict[str, np.ndarray]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def _pushed_state(got: dict) -> bool:
    assert_same(got, STATE)
    return True


# What each read path served (or wrote) is the pushed data.
SERVED = {
    "get": lambda got, tmp, m: np.array_equal(got, STATE[VICTIM]),
    "get_rows": lambda got, tmp, m: np.array_equal(got, STATE[VICTIM][3:4]),
    "load through the cache": lambda got, tmp, m: _pushed_state(got),
    "load under a budget": lambda got, tmp, m: _pushed_state(got),
    "pull into memory": lambda got, tmp, m: _pushed_state(got),
    "pull to a folder": lambda got, tmp, m: _pushed_state(_folder(tmp / "out")),
    "preload": lambda got, tmp, m: _cached(tmp, m),
    "copy": lambda got, tmp, m: _pushed_state(modelshard.pull("m", catalog=str(tmp / "other"))),
    "verify": lambda got, tmp, m: True,  # it checked every shard's sha256 and CRC32C
    "load_into a module": lambda got, tmp, m: _pushed_state(got),
}


def _env(**extra: str) -> dict[str, str]:
    """The environment of a command run from this checkout."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelshard", *args], capture_output=True,
                          text=True, cwd=REPO, env=env or _env(), timeout=600)


def _read_right(path: str, uri: str, tmp: Path, m) -> None:
    """Read version 1 by ``path`` and check that what it served is the pushed data."""
    if path in READ_PATHS:
        assert SERVED[path](READ_PATHS[path](uri, tmp), tmp, m), path
        return
    command = ["load", "m"] if path == "modelshard load" else ["pull", "m", str(tmp / "cli")]
    out = _cli(*command, "--catalog", uri)
    assert (out.returncode, out.stderr) == (0, "")  # not even a warning of the HDFS client
    if command[0] == "pull":
        _pushed_state(_folder(tmp / "cli"))


# The commands read as the API does; what is theirs, a silent stderr while HDFS falls back,
# does not depend on where the byte is (and each of their tries costs a JVM start).
ONE_REPLICA = [(path, where) for where in ("tensor data", "header", "manifest")
               for path in READ_PATHS] + [("modelshard load", "tensor data"),
                                          ("modelshard pull", "tensor data")]


@pytest.mark.parametrize("path, where", ONE_REPLICA)
def test_a_byte_flipped_in_one_replica_is_read_from_another(pushed, tmp_path, path, where):
    uri, m = pushed
    hdfs_path, offset, _ = _target(uri, m, where)
    damaged = flip_byte(hdfs_path, offset, replicas=1)
    # A reader tries the replicas in the order the NameNode gives, shuffled at each open, and
    # reports one that fails HDFS's checksum; the NameNode then lists it no more. So read
    # until that happened: the damaged replica was met, and what was served is still right.
    for tries in range(1, 31):
        _read_right(path, uri, tmp_path / str(tries), m)
        if damaged[0] not in {f for b in blocks(hdfs_path) for f in b.replicas}:
            break
    else:
        raise AssertionError(f"30 reads by {path} never met the damaged replica {damaged[0]}")


def read_everywhere(uri: str, tmp: str) -> dict[str, str | None]:
    """Every read path of READ_PATHS on the catalog ``uri``: its error, or None if it read.
    Run in a process of its own by the test below."""
    errors: dict[str, str | None] = {}
    for name, read in READ_PATHS.items():
        try:
            read(uri, Path(tmp) / name)
            errors[name] = None
        except modelshard.ModelShardError as e:
            errors[name] = f"{type(e).__name__}: {e}"
    return errors


def _fast_retries(tmp: Path) -> dict[str, str]:
    """The environment of a client that gives up on a block after HDFS's usual three rounds
    over its replicas, without the 3 to 15 s it waits before each round
    (``dfs.client.retry.window.base``): a copy of the cluster's client configuration."""
    conf = tmp / "client-conf"
    shutil.copytree(os.environ["HADOOP_CONF_DIR"], conf)
    site = conf / "hdfs-site.xml"
    site.write_text(site.read_text().replace("</configuration>", (
        "  <property><name>dfs.client.retry.window.base</name><value>10</value></property>\n"
        "</configuration>")))
    return _env(HADOOP_CONF_DIR=str(conf))


def _says_it(error: str, part: str) -> None:
    """``error`` names the model, version and damaged file, says what happened and what to
    do, in one line without a Java stack trace."""
    assert "\n" not in error.rstrip("\n") and "\tat " not in error, error
    for words in ("m@1", part, "HDFS found no intact replica of", "hdfs fsck hdfs://",
                  "the model again", "'modelshard copy'"):
        assert words in error, (words, error)
    # What HDFS said: a read by range ends in the checksum error, a streamed one gives up on
    # the block after its rounds over the replicas.
    assert "fs.ChecksumException: Checksum CRC32C not matched" in error or \
        "hdfs.BlockMissingException: Could not obtain block" in error, error


@pytest.mark.parametrize("where", ["tensor data", "header", "manifest"])
def test_a_byte_flipped_in_every_replica_fails_every_read_path_in_one_line(pushed, tmp_path, where):
    uri, m = pushed
    hdfs_path, offset, part = _target(uri, m, where)
    assert len(flip_byte(hdfs_path, offset)) == 3
    env = _fast_retries(tmp_path)
    code = ("import json, sys\nfrom tests.integration.test_integrity_hdfs import read_everywhere\n"
            "print(json.dumps(read_everywhere(sys.argv[1], sys.argv[2])))")
    run = subprocess.run([sys.executable, "-c", code, uri, str(tmp_path)], capture_output=True,
                         text=True, cwd=REPO, env=env, timeout=600)
    assert (run.returncode, run.stderr) == (0, "")  # no stack trace, no log of the HDFS client
    errors = json.loads(run.stdout)
    assert sorted(errors) == sorted(READ_PATHS)
    for name, error in errors.items():
        assert error is not None and error.startswith("IntegrityError: "), (name, error)
        _says_it(error, part)
    for command in (["load", "m"], ["pull", "m", str(tmp_path / "cli")]):
        out = _cli(*command, "--catalog", uri, env=env)
        assert out.returncode == 1 and out.stdout == "", out
        assert out.stderr.startswith(f"modelshard {command[0]}: error: "), out.stderr
        _says_it(out.stderr, part)
    assert not (tmp_path / "cli").exists() or not any((tmp_path / "cli").iterdir())


def test_with_the_clusters_own_retries_the_command_waits_then_says_it_in_one_line(pushed):
    uri, m = pushed
    hdfs_path, offset, part = _target(uri, m, "tensor data")
    flip_byte(hdfs_path, offset)
    started = time.monotonic()
    out = _cli("load", "m", "--tensors", VICTIM, "--catalog", uri)
    print(f"modelshard load gave up after {time.monotonic() - started:.1f} s")  # docs/reliability.md
    assert out.returncode == 1 and out.stdout == ""
    _says_it(out.stderr, part)
