"""A push onto a disk that really fills: the catalog on a small tmpfs, mounted in a mount
namespace of its own (``unshare --mount``, root only, as the bundled cluster's nodes are),
sized from the files the push writes so that it fills in the middle of the shards, at the
manifest or at an alias entry. Each time the ``modelshard push`` command, run inside that
namespace, exits 1 with one line on stderr naming the file and saying to free space; no new
version is visible, ``latest`` and ``prod`` stay where they were, ``modelshard gc`` leaves
the catalog as it was before the push, and the same push succeeds once the tmpfs is larger.
``tests/unit/test_disk_full.py`` does the same with ``/dev/full``, without root."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import modelshard
from modelshard.catalog.catalog import Catalog
from tests.store_data import tree

REPO = Path(__file__).resolve().parents[2]
PAGE = 4096  # tmpfs counts whole pages: a file of n bytes takes ceil(n / PAGE) of them
SOURCE = {f"t{i}": np.full((64, 256), i, np.float32) for i in range(16)}  # 16 x 64 KiB
SHARD_BYTES = 128 << 10  # 8 shards


def pages(n: int) -> int:
    return -(-n // PAGE)


class Tmpfs:
    """A tmpfs at ``folder`` that only a sleeping process's mount namespace sees: :meth:`run`
    runs a command in that namespace (``nsenter``), :attr:`here` is the folder as this
    process reaches it (``/proc/PID/root``: path lookups there cross into that namespace)."""

    def __init__(self, folder: Path, size: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount -t tmpfs -o size="$2" modelshard-full "$1" && echo mounted && exec sleep 600',
             "sh", str(folder), str(size)], stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout.readline() == "mounted\n", "unshare or mount failed (root needed)"
        self.here = Path(f"/proc/{self._proc.pid}/root{folder}")

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", f"--target={self._proc.pid}", "--mount", "--", *argv],
                              capture_output=True, text=True, cwd=REPO, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO)})

    def modelshard(self, *args: str) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "modelshard", *args)

    def resize(self, size: int) -> None:
        out = self.run("mount", "-o", f"remount,size={size}", str(self.folder))
        assert out.returncode == 0, out.stderr

    def used(self) -> int:
        s = os.statvfs(self.here)
        return (s.f_blocks - s.f_bfree) * s.f_frsize

    def close(self) -> None:
        self._proc.kill()  # the namespace, and the tmpfs with it, goes with its last process
        self._proc.wait(60)


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: int = 4 << 20) -> Iterator[Tmpfs]:
    fs = Tmpfs(folder, size)
    try:
        yield fs
    finally:
        fs.close()


def push_pages(tmp_path: Path, source: Path) -> tuple[int, int]:
    """Pages of the shards and of the manifest that the push of ``source`` as version 2 of
    ``m`` writes, found by making that version on the local disk."""
    probe = str(tmp_path / "probe")
    modelshard.push(str(tmp_path / "base.safetensors"), "m", catalog=probe)
    m = modelshard.push(str(source), "m", catalog=probe, shard_size=SHARD_BYTES)
    folder = Path(Catalog(probe).version_dir("m", m.version))
    return (sum(pages(p.stat().st_size) for p in (folder / "shards").iterdir()),
            pages((folder / "manifest.json").stat().st_size))


# Where the disk fills: the pages left for the push beyond its claim (one page), and what
# the file that cannot be written is.
ROOM = {
    "a shard": (lambda shards, manifest: shards // 2, r"/\.staging/2-\w+/shards/model-\d+-of-\d+\.safetensors"),
    "the manifest": (lambda shards, manifest: shards + manifest - 1, r"/\.staging/2-\w+/manifest\.json"),
    # After the manifest: the model's lock, the aliases owed (.publishing), latest's entry.
    "prod's entry": (lambda shards, manifest: shards + manifest + 3, r"/aliases/prod/0+2"),
}


@pytest.mark.parametrize("where", list(ROOM))
def test_a_push_that_fills_the_disk_is_one_line_and_changes_nothing(tmp_path, where):
    source = tmp_path / "m.safetensors"
    save_file(SOURCE, source)
    save_file({"w": np.zeros(3)}, tmp_path / "base.safetensors")
    shards, manifest = push_pages(tmp_path, source)
    room, failing = ROOM[where]
    with small_tmpfs(tmp_path / "disk") as disk:
        uri = str(disk.folder / "cat")
        push = ("push", str(source), "m", "--alias", "prod", "--shard-size", str(SHARD_BYTES),
                "--catalog", uri)
        first = disk.modelshard("push", str(tmp_path / "base.safetensors"), "m", "--alias", "prod",
                                "--catalog", uri)
        assert first.returncode == 0, first.stderr
        cat = Catalog(str(disk.here / "cat"))
        before = tree(cat)

        disk.resize(disk.used() + (1 + room(shards, manifest)) * PAGE)
        out = disk.modelshard(*push)
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        assert re.fullmatch(rf"modelshard push: error: {re.escape(uri)}/models/m{failing}: no space left on "
                            r"device; free disk space and retry\n", out.stderr), out.stderr
        assert cat.versions("m") == ["1"] and cat.aliases("m") == {"latest": "1", "prod": "1"}
        assert disk.modelshard("ls", "m", "--catalog", uri).returncode == 0

        gc = disk.modelshard("gc", "--older-than", "0", "--catalog", uri)
        assert gc.returncode == 0, gc.stderr
        assert tree(cat) == before

        disk.resize(16 << 20)
        again = disk.modelshard(*push)
        assert again.returncode == 0, again.stderr
        assert cat.aliases("m") == {"latest": "2", "prod": "2"}
        got = modelshard.pull("m@prod", catalog=cat)
        assert all(np.array_equal(got[k], v) for k, v in SOURCE.items()) and sorted(got) == sorted(SOURCE)
