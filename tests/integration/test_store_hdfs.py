"""The model store's tests, run again with the catalog on the real HDFS.

Every store test that reaches a catalog (through the ``catalog`` or ``catalog_root``
fixture, directly or through a fixture of its module) is collected here a second time, with
``catalog_root`` overridden by ``hdfs_root``: push/pull round trips of every dtype, split
tensors, Hugging Face folders, atomic commit races, crashes and gc, damage found by verify,
aliases, rm, unknown manifest schemas, a missing catalog, the CLI, leases and gc, the race
scenarios (on threads). Below them, what only HDFS has: a catalog of another HDFS user, and
Hugging Face folders stored on HDFS.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import modelshard
from modelshard.fs.hdfs import _pydoop_hdfs
from tests.store_data import assert_same, sample_state
from tests.unit import conftest as unit_fixtures
from tests.unit import test_api, test_cli
from tests.unit.catalog import test_catalog, test_commit, test_fetch, test_leases, test_manifest, test_races
from tests.unit.catalog.test_sources import hf_sharded

REPO = Path(__file__).resolve().parents[2]
STORE_MODULES = (test_catalog, test_commit, test_fetch, test_manifest, test_api, test_cli, test_leases,
                 test_races)
CATALOG_FIXTURES = {"catalog", "catalog_root"}


@pytest.fixture
def catalog_root(hdfs_root):
    return hdfs_root


catalog = unit_fixtures.catalog  # the unit tests' fixture, on this module's catalog_root


def _reaches_catalog(fn, module: ModuleType) -> bool:
    """Whether ``fn`` asks for the catalog, itself or through fixtures of ``module``."""
    args = set(inspect.signature(fn).parameters)
    return bool(args & CATALOG_FIXTURES) or any(
        _reaches_catalog(vars(module)[a], module) for a in args if a in vars(module))


def _collect(modules: tuple[ModuleType, ...]) -> dict[str, object]:
    """The catalog tests of ``modules`` and the module fixtures they use, by name."""
    found: dict[str, object] = {}
    for module in modules:
        for name, fn in vars(module).items():
            if not (name.startswith("test_") and callable(fn) and _reaches_catalog(fn, module)):
                continue
            needed = {name} | {a for a in inspect.signature(fn).parameters if a in vars(module)}
            for n in needed:
                if found.setdefault(n, vars(module)[n]) is not vars(module)[n]:
                    raise RuntimeError(f"{module.__name__}.{n}: another store test module has "
                                       "this name; rename one so both run on HDFS")
    return found


globals().update(_collect(STORE_MODULES))

STATE = sample_state()


def test_a_catalog_of_another_hdfs_user_is_read_only(hdfs_root, tmp_path):
    """Mode 755, owned by this (super)user: another user may pull and verify, not push."""
    fs, root = hdfs_root
    uri = fs.uri(f"{root}/catalog")
    modelshard.push(STATE, "m", catalog=uri)
    _pydoop_hdfs().hdfs("default", 0).chmod(f"{root}/catalog", 0o755)
    before = [(i.path, i.size) for i in fs.walk_files(root)]
    env = {**os.environ, "HADOOP_USER_NAME": "modelshard-nobody", "PYTHONPATH": str(REPO)}

    def command(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "modelshard", *argv, "--catalog", uri],
                              capture_output=True, text=True, env=env, timeout=180)

    modelshard.pull("m", tmp_path / "hf", catalog=uri)
    pushed = command("push", str(tmp_path / "hf"), "m")
    last = pushed.stderr.strip().splitlines()[-1]
    assert pushed.returncode == 1, pushed.stderr
    assert last.startswith("modelshard push: error: hdfs://"), pushed.stderr
    assert "permission denied" in last and "'modelshard-nobody'" in last
    assert "Traceback" not in pushed.stderr
    assert [(i.path, i.size) for i in fs.walk_files(root)] == before
    verified = command("verify", "m", "--json")
    assert verified.returncode == 0, verified.stderr


def test_hugging_face_folders_on_hdfs_round_trip_bit_exact(catalog, hdfs_root, tmp_path):
    """A sharded checkpoint stored on HDFS is a push source; pull writes one back to HDFS."""
    fs, root = hdfs_root
    hf_sharded(tmp_path, STATE, files=3)
    for f in sorted(tmp_path.iterdir()):
        fs.write_bytes(f"{root}/hf/{f.name}", f.read_bytes())
    m = modelshard.push(fs.uri(f"{root}/hf"), "m", catalog=catalog, shard_size=1024)
    assert any(t.is_split for t in m.tensors.values())
    out = modelshard.pull("m", fs.uri(f"{root}/out"), catalog=catalog)
    assert out == fs.uri(f"{root}/out")
    modelshard.push(out, "copy", catalog=catalog, shard_size=1024)
    assert_same(modelshard.pull("copy", catalog=catalog, framework="torch"), STATE)
    local = Path(modelshard.pull("m", tmp_path / "local", catalog=catalog)[len("file://"):])
    assert {i.path.rsplit("/", 1)[1]: fs.read_bytes(i.path) for i in fs.ls(f"{root}/out")} == \
        {p.name: p.read_bytes() for p in local.iterdir()}
