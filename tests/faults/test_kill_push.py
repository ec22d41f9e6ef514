"""``kill -9`` of a push at points spread over the whole operation (a subprocess each time,
killed by its pid): no trial leaves a half-visible version, an alias on a missing version,
or damage to a version committed before; the next push works, and ``gc`` clears what the
dead pushes left once their leases expired."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import modelshard
from modelshard.catalog.catalog import Catalog
from modelshard.catalog.keys import LATEST

TRIALS = 24
LEASE = 2.0
REPO = Path(__file__).resolve().parents[2]
# Sixteen shards written one at a time, so the push lasts long enough to be hit anywhere.
PUSH = """
import numpy as np, modelshard, sys
state = {f"t{i}": np.full((64, 1024), i, np.float32) for i in range(16)}
modelshard.push(state, "m", catalog=sys.argv[1], shard_size=256 << 10, workers=1, aliases=["prod"])
"""


def start_push(catalog: str) -> subprocess.Popen:
    env = {"PYTHONPATH": str(REPO), "MODELSHARD_LEASE_SECONDS": str(LEASE), "PATH": "/usr/bin:/bin"}
    return subprocess.Popen([sys.executable, "-c", PUSH, catalog], env=env, cwd=REPO,
                            stderr=subprocess.PIPE)


def check_catalog(cat: Catalog) -> list[str]:
    """Every version complete and intact, every alias on one of them, latest the highest."""
    versions = cat.versions("m") if cat.models() else []
    for v in versions:
        modelshard.verify(f"m@{v}", catalog=cat)
        got = modelshard.pull(f"m@{v}", catalog=cat)
        assert sorted(got) == sorted(f"t{i}" for i in range(16)) and got["t5"][3, 7] == 5
    aliases = cat.aliases("m") if versions else {}
    assert set(aliases.values()) <= set(versions), (aliases, versions)
    if versions:
        assert aliases[LATEST] == versions[-1]
    return versions


@pytest.fixture
def full_push_seconds(tmp_path) -> float:
    started = time.monotonic()
    proc = start_push(str(tmp_path / "timing"))
    assert proc.wait(120) == 0, proc.stderr.read().decode()
    return time.monotonic() - started


def test_kill_9_anywhere_in_a_push(tmp_path, full_push_seconds):
    cat = Catalog(str(tmp_path / "catalog"), lease_seconds=LEASE)
    cat.create()
    rng = random.Random(10)
    killed = committed = 0
    for trial in range(TRIALS):
        before = check_catalog(cat)
        proc = start_push(cat.uri)
        # Spread over the whole push, start-up included: trial k aims at the k-th slice.
        time.sleep(full_push_seconds * (trial + rng.random()) / TRIALS)
        proc.kill()
        rc = proc.wait(60)
        killed += rc == -9
        after = check_catalog(cat)
        assert after[:len(before)] == before  # nothing committed before was touched
        assert len(after) - len(before) in (0, 1)  # the push committed whole, or not at all
        committed += len(after) - len(before)
    assert killed >= TRIALS // 2, f"only {killed} of {TRIALS} pushes were still running when killed"
    print(f"kill -9 of push: {TRIALS} trials over {full_push_seconds:.2f} s, {killed} killed while "
          f"running, {committed} committed whole, 0 damaged")  # the figures of docs/reliability.md
    # The next push works despite the leftovers, and gc clears them once expired.
    proc = start_push(cat.uri)
    assert proc.wait(120) == 0, proc.stderr.read().decode()
    versions = check_catalog(cat)
    time.sleep(2 * LEASE + 1)
    modelshard.gc(older_than=0, catalog=cat)
    for sub in (".claims", ".staging"):
        assert not cat.fs.exists(f"{cat.model_dir('m')}/{sub}") or cat.fs.ls(f"{cat.model_dir('m')}/{sub}") == []
    assert not cat.fs.exists(f"{cat.model_dir('m')}/.lock")
    assert check_catalog(cat) == versions
    assert modelshard.gc(older_than=0, catalog=cat) == []
    assert np.all(modelshard.pull("m", catalog=cat)["t15"] == 15)
