"""``kill -9`` of a push at points spread over the whole operation (a subprocess each time,
killed by its pid): no trial leaves a half-visible version, an alias on a missing version,
or damage to a version committed before; the next push works, and ``gc`` clears what the
dead pushes left once their leases expired. ``tests/integration/test_faults_hdfs.py`` runs
the same trials with the catalog on HDFS."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import modelshard
from modelshard.catalog.catalog import Catalog
from modelshard.catalog.keys import LATEST

LEASE = 3.0
REPO = Path(__file__).resolve().parents[2]
# Sixteen shards written one at a time, so the push lasts long enough to be hit anywhere.
PUSH = """
import numpy as np, modelshard, sys
state = {f"t{i}": np.full((64, 1024), i, np.float32) for i in range(16)}
modelshard.push(state, "m", catalog=sys.argv[1], shard_size=256 << 10, workers=1, aliases=["prod"])
"""


def start_push(catalog: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MODELSHARD_LEASE_SECONDS": str(LEASE)}
    return subprocess.Popen([sys.executable, "-c", PUSH, catalog], env=env, cwd=REPO,
                            stderr=subprocess.PIPE)


def push_seconds(catalog: str) -> float:
    """How long one whole push takes here, start-up included."""
    started = time.monotonic()
    proc = start_push(catalog)
    assert proc.wait(300) == 0, proc.stderr.read().decode()
    return time.monotonic() - started


def check_versions(cat: Catalog, versions: list[str]) -> None:
    """Each of ``versions`` complete and intact."""
    for v in versions:
        modelshard.verify(f"m@{v}", catalog=cat)
        got = modelshard.pull(f"m@{v}", catalog=cat)
        assert sorted(got) == sorted(f"t{i}" for i in range(16)) and got["t5"][3, 7] == 5


def check_aliases(cat: Catalog) -> list[str]:
    """Every alias on an existing version, ``latest`` on the highest; the versions."""
    versions = cat.versions("m")
    aliases = cat.aliases("m") if versions else {}
    assert set(aliases.values()) <= set(versions), (aliases, versions)
    assert aliases.get(LATEST) == (versions[-1] if versions else None), (aliases, versions)
    return versions


def kill_9_trials(catalog: str, trials: int, *, seed: int = 10) -> str:
    """``trials`` pushes killed at points spread over a whole push; returns the figures."""
    duration = push_seconds(catalog)
    cat = Catalog(catalog, lease_seconds=LEASE)
    rng = random.Random(seed)
    killed = 0
    before = check_aliases(cat)
    for trial in range(trials):
        proc = start_push(catalog)
        # Trial k aims at the k-th slice of the push, start-up included, and a quarter more:
        # a push running slower than the timed one is still hit at its commit.
        time.sleep(1.25 * duration * (trial + rng.random()) / trials)
        proc.kill()
        killed += proc.wait(60) == -9
        after = check_aliases(cat)
        assert after[:len(before)] == before and len(after) - len(before) in (0, 1)  # whole or nothing
        check_versions(cat, after[len(before):])
        before = after
    assert killed >= trials // 2, f"only {killed} of {trials} pushes were still running when killed"
    proc = start_push(catalog)  # the next push works despite the leftovers
    assert proc.wait(300) == 0, proc.stderr.read().decode()
    versions = check_aliases(cat)
    check_versions(cat, versions)  # nothing committed was damaged by any kill
    time.sleep(2 * LEASE + 1)
    modelshard.gc(older_than=0, catalog=cat)
    model = cat.model_dir("m")
    leftovers = [i.path for sub in (".claims", ".staging") if cat.fs.exists(f"{model}/{sub}")
                 for i in cat.fs.ls(f"{model}/{sub}")]
    assert leftovers == [] and not cat.fs.exists(f"{model}/.lock")
    assert modelshard.gc(older_than=0, catalog=cat) == [] and check_aliases(cat) == versions
    return (f"kill -9 of push: {trials} trials over {duration:.2f} s, {killed} killed while running, "
            f"{len(versions) - 2} committed whole, 0 damaged")


def test_kill_9_anywhere_in_a_push(tmp_path):
    print(kill_9_trials(str(tmp_path / "catalog"), 24))  # the figures of docs/reliability.md
