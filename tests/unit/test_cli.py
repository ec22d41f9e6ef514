"""The modelshard command: JSON for scripts, one-line errors, extensible subcommands."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modelshard import api, cli
from modelshard.cli import Output, duration_arg, main, size_arg
from modelshard.errors import IntegrityError
from tests.privileges import without_file_mode_override
from tests.store_data import tree

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def source(tmp_path) -> str:
    path = tmp_path / "m.safetensors"
    save_file({"w": np.arange(600, dtype=np.float32).reshape(20, 30), "b": np.ones(3)}, path)
    return str(path)


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys, *argv):
    rc, out, err = run(capsys, *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


def test_every_verb_with_json(capsys, catalog, source, tmp_path):
    c = ["--catalog", catalog.uri]
    assert run_json(capsys, "push", source, "m", "--shard-size", "1K", "--alias", "prod", *c) \
        == {"name": "m", "version": "1", "tensors": 2, "shards": 3, "total_size": 2424,
            "assets": 0, "skipped": []}
    rows = run_json(capsys, "ls", *c)
    assert [(r["name"], r["version"], r["aliases"]) for r in rows] == \
        [("m", "1", ["latest", "prod"])]
    shown = run_json(capsys, "show", "m@prod", "--tensors", *c)
    assert shown["split_tensors"] == ["w"] and shown["spread"]["count"] == 3
    assert shown["tensor_list"]["w"] == {"dtype": "F32", "shape": [20, 30], "pieces": 3}
    assert run_json(capsys, "verify", "m", *c)["ok"] is True
    assert run_json(capsys, "pull", "m", tmp_path / "out", *c)["dest"].endswith("/out")
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    run_json(capsys, "push", source, "m", *c)
    assert run_json(capsys, "alias", "m@prod", "2", *c) == {"alias": "m@prod", "version": "2"}
    assert run_json(capsys, "rm", "m@1", "--yes", *c) == {"removed": "m@1"}
    assert run_json(capsys, "gc", "--older-than", "0", *c) == []
    assert run_json(capsys, "alias", "--rm", "m@prod", *c) == {"alias": "m@prod", "version": None}
    assert run_json(capsys, "rm", "m", "--yes", *c) == {"removed": "m"}
    assert run_json(capsys, "ls", *c) == []


def test_human_output(capsys, catalog, source, tmp_path):
    c = ["--catalog", catalog.uri]
    # Off a terminal there is no progress bar: stderr stays empty.
    assert run(capsys, "push", source, "m", *c) == (
        0, "pushed m@1: 2 tensors, 1 shards, 2.4 KiB\n", "")
    assert run(capsys, "pull", "m", tmp_path / "out", *c)[2] == ""
    rc, out, _ = run(capsys, "ls", *c)
    assert out.splitlines()[1].split()[:2] == ["m", "1"]
    rc, out, _ = run(capsys, "show", "m", *c)
    assert "imbalance 1.000 (max/mean)" in out
    assert run(capsys, "verify", "m", *c)[1] == "m@1: 1 shards ok\n"
    assert run(capsys, "gc", *c)[1] == "nothing to remove\n"


def test_options_before_the_subcommand_and_default_catalog(capsys, catalog, source,
                                                           monkeypatch):
    assert run(capsys, "--catalog", catalog.uri, "--json", "push", source, "m")[0] == 0
    monkeypatch.setenv("MODELSHARD_CATALOG", catalog.uri)
    assert json.loads(run(capsys, "--json", "ls")[1])[0]["name"] == "m"


@pytest.mark.parametrize("argv, rc, message", [
    (["show", "nope"], 1, "modelshard show: error: model 'nope' is not in catalog"),
    (["rm", "m@1"], 2, "modelshard rm: error: rm m@1: removing is permanent"),
    (["push", "/no/such.pt", "m"], 1, "modelshard push: error: push source /no/such.pt: no such"),
    (["pull", "m@9", "x"], 1, "modelshard pull: error: m@9 is not in catalog"),
    (["alias", "m@prod", "../1"], 2, "modelshard alias: error: alias '../1'"),
])
def test_errors_are_one_line_and_a_non_zero_exit(capsys, catalog, source, argv, rc, message):
    run(capsys, "push", source, "m", "--catalog", catalog.uri)
    before = tree(catalog)
    got_rc, out, err = run(capsys, *argv, "--catalog", catalog.uri)
    assert (got_rc, out) == (rc, "")
    assert err.startswith(message) and err.count("\n") == 1, err
    assert tree(catalog) == before


def test_a_multi_line_message_is_printed_as_one_line(capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise IntegrityError("shard x:\n  damaged\n")

    monkeypatch.setattr(api, "verify", fail)
    assert run(capsys, "verify", "m") == (1, "", "modelshard verify: error: shard x: damaged\n")


def test_argparse_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["push", "x", "m", "--shard-size", "big"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'big' is not a size" in err and "see 'modelshard push --help'" in err


@pytest.mark.parametrize("debug", ["flag", "env", None])
def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(capsys, monkeypatch, debug):
    def bug(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(api, "verify", bug)
    if debug == "env":
        monkeypatch.setenv("MODELSHARD_DEBUG", "1")
    rc, out, err = run(capsys, "verify", "m", *(["--debug"] if debug == "flag" else []))
    last = "modelshard verify: internal error: KeyError: 'oops'; rerun with --debug for the traceback and report it\n"
    assert rc == 1 and out == "" and err.endswith(last)
    assert ("Traceback (most recent call last)" in err) == (debug is not None)
    assert err == last or debug is not None


@pytest.mark.parametrize("text, n", [("4096", 4096), ("512K", 512 << 10), ("128M", 128 << 20),
                                     ("1.5GiB", 3 << 29), ("2g", 2 << 30)])
def test_size_arg(text, n):
    assert size_arg(text) == n


@pytest.mark.parametrize("text", ["", "0", "-1", "1X", "M"])
def test_bad_size_arg(text):
    with pytest.raises(argparse.ArgumentTypeError):
        size_arg(text)


@pytest.mark.parametrize("text, s", [("0", 0), ("90s", 90), ("15m", 900), ("24h", 86400),
                                     ("7d", 604800)])
def test_duration_arg(text, s):
    assert duration_arg(text) == s


def test_a_new_subcommand_module_plugs_in(capsys, monkeypatch):
    plugin = types.ModuleType("fake_plugin")

    def register(sub, common):
        p = sub.add_parser("hello", parents=[common])
        p.add_argument("who")
        p.set_defaults(run=lambda args: Output({"hi": args.who}, f"hi {args.who}"))

    plugin.register = register
    monkeypatch.setitem(sys.modules, "fake_plugin", plugin)
    monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "fake_plugin"])
    assert run(capsys, "hello", "you") == (0, "hi you\n", "")
    assert run(capsys, "hello", "you", "--json")[1] == '{\n  "hi": "you"\n}\n'


def test_permission_denied_is_one_line_and_changes_nothing(source):
    """A catalog the user may read but not write (as root too: the command runs without
    root's power over file modes)."""
    base = Path(tempfile.mkdtemp(prefix="modelshard-perm-"))
    try:
        os.chmod(base, 0o755)
        shutil.copy(source, base / "m.safetensors")
        catalog = base / "catalog"
        assert main(["push", str(base / "m.safetensors"), "m", "--catalog", str(catalog)]) == 0
        for folder, _, files in os.walk(base):
            os.chmod(folder, 0o555)
            for f in files:
                os.chmod(os.path.join(folder, f), 0o444)
        before = sorted(os.walk(catalog))
        env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(base)}

        def command(*argv):
            return subprocess.run([*without_file_mode_override(), sys.executable, "-m",
                                   "modelshard", *argv, "--catalog", str(catalog)],
                                  capture_output=True, text=True, env=env, cwd=base, timeout=120)

        pushed = command("push", str(base / "m.safetensors"), "m")
        assert pushed.returncode == 1, pushed.stderr
        assert pushed.stderr.startswith("modelshard push: error: ")
        assert "permission denied" in pushed.stderr and pushed.stderr.count("\n") == 1
        assert "Traceback" not in pushed.stderr
        assert sorted(os.walk(catalog)) == before
        # Reading needs no write access.
        assert command("verify", "m").returncode == 0
    finally:
        for folder, _, _ in os.walk(base):
            os.chmod(folder, 0o755)
        shutil.rmtree(base)
