"""``kill -9`` of store operations at points spread over the whole operation (a subprocess
each time, killed by its pid; start-up and commit included; for alias moves, over the moves):
a push, a copy and a reshard (its job on the inline runner) commit whole or not at all, an
alias move leaves the alias on one of its two targets; no kill damages a version committed
before, the next operation works (a lock left by the dead waits out its lease), and ``gc``
clears what the dead left once their leases expired. The trial functions take the catalog's
URI: ``tests/integration/test_faults_hdfs.py`` runs the same trials with the catalog on HDFS."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import modelshard
from modelshard.catalog.catalog import Catalog
from modelshard.catalog.keys import LATEST

LEASE = 3.0
REPO = Path(__file__).resolve().parents[2]
MODEL_BYTES = 16 * (256 << 10)
# Shards moved one at a time (argv[2] of a push: their size; of a reshard: their number), so
# the operation lasts long enough to be hit anywhere.
SCRIPTS = {
    "push": "from tests.faults.test_kill_9 import model\n"
            "modelshard.push(model(), 'm', catalog=argv[1], shard_size=int(argv[2]), workers=1, aliases=['prod'])",
    "copy": "modelshard.placement.copy(f'm@{argv[3]}', argv[1], catalog=argv[2], workers=1)",
    # Its start-up writes nothing: the kills aim at the moves, once it says they begin.
    "alias": "modelshard.alias('m@prod', catalog=argv[1])\nprint('moving', flush=True)\n"
             "for _ in range(int(argv[2])): [modelshard.alias('m@prod', v, catalog=argv[1]) for v in (1, 2)]",
    "reshard": "from modelshard.jobs.reshard.driver import reshard\n"
               "reshard('m@1', shard_count=int(argv[2]), tasks=int(argv[2]), runner='inline', "
               "catalog=argv[1], aliases=['prod'])",
}


def model() -> dict[str, np.ndarray]:
    """What every trial pushes: 16 tensors t0..t15 of 256 KiB, each full of its number."""
    return {f"t{i}": np.full((64, 1024), i, np.float32) for i in range(16)}


def start(operation: str, *args: str, lease: float = LEASE) -> subprocess.Popen:
    code = f"import sys, numpy as np, modelshard, modelshard.placement\nargv = sys.argv\n{SCRIPTS[operation]}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MODELSHARD_LEASE_SECONDS": str(lease)}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def begun(operation: str, proc: subprocess.Popen) -> None:
    """Wait until ``proc`` reached the part of ``operation`` that the kills aim at: the moves
    of an alias (which says so), the whole of any other operation."""
    if operation == "alias":
        assert proc.stdout.readline() == b"moving\n", proc.stderr.read().decode()


def finish(proc: subprocess.Popen) -> None:
    assert proc.wait(300) == 0, proc.stderr.read().decode()


def check_versions(cat: Catalog, versions: list[str]) -> None:
    """Each of ``versions`` complete and intact."""
    for v in versions:
        modelshard.verify(f"m@{v}", catalog=cat)
        got = modelshard.pull(f"m@{v}", catalog=cat)
        assert sorted(got) == sorted(f"t{i}" for i in range(16)) and got["t5"][3, 7] == 5


def check_aliases(cat: Catalog, *, settled: bool = True) -> list[str]:
    """Every alias on an existing version, ``latest`` on the highest (unless, right after a
    kill, a publish is owed its aliases: the next holder of the lock points them); the
    versions."""
    versions = cat.versions("m")
    aliases = cat.aliases("m") if versions else {}
    assert set(aliases.values()) <= set(versions), (aliases, versions)
    owed = not settled and cat.fs.exists(cat._intent_path("m"))
    assert aliases.get(LATEST) == (versions[-1] if versions else None) or owed, (aliases, versions)
    return versions


def check_gc(cat: Catalog) -> None:
    """Once the dead's leases expired, gc leaves no claim, staging folder or lock."""
    time.sleep(2 * cat.lease_seconds + 1)
    modelshard.gc(older_than=0, catalog=cat)
    model = cat.model_dir("m")
    leftovers = [i.path for sub in (".claims", ".staging") if cat.fs.exists(f"{model}/{sub}")
                 for i in cat.fs.ls(f"{model}/{sub}")]
    assert leftovers == [] and not cat.fs.exists(f"{model}/.lock")
    assert modelshard.gc(older_than=0, catalog=cat) == []


def whole_run(operation: str, args: Callable[[int], tuple[str, ...]], *, lease: float = LEASE
              ) -> float:
    """The quicker of two whole runs of ``operation`` (``args(-2)``, ``args(-1)``), from
    where the kills aim (:func:`begun`): a load spike must not push every kill past the end."""
    durations = []
    for k in (-2, -1):
        proc = start(operation, *args(k), lease=lease)
        begun(operation, proc)
        started = time.monotonic()
        finish(proc)
        durations.append(time.monotonic() - started)
    return min(durations)


def kill_spread(operation: str, args: Callable[[int], tuple[str, ...]], trials: int,
                duration: float, after_kill: Callable[[], object], *, lease: float = LEASE,
                seed: int = 10) -> int:
    """Start ``operation`` ``trials`` times (``args(k)``), ``kill -9`` trial k in the k-th
    slice of ``duration`` and call ``after_kill``; returns how many were still running."""
    rng = random.Random(seed)
    killed = 0
    for trial in range(trials):
        proc = start(operation, *args(trial), lease=lease)
        begun(operation, proc)
        # Trial k aims at the k-th slice of the operation (from where begun() says), and a
        # quarter more: one running slower than the timed one is still hit at its end.
        time.sleep(1.25 * duration * (trial + rng.random()) / trials)
        proc.kill()
        killed += proc.wait(60) == -9
        after_kill()
    assert killed >= trials // 3, f"only {killed} of {trials} were still running when killed"
    return killed


def fill_source(source: str, *, shards: int = 16, versions: int = 23) -> None:
    """The source catalog of the copy trials, versions of ``shards`` shards: trial k copies
    version k + 3 (the timing runs versions 1 and 2), as a dead copy's claim holds its
    version a lease long."""
    for _ in range(versions):
        modelshard.push(model(), "m", catalog=source, shard_size=MODEL_BYTES // shards)


def commit_trials(catalog: str, trials: int, *, operation: str = "push", source: str = "",
                  shards: int = 16, seed: int = 10) -> str:
    """``trials`` pushes of ``shards`` shards (reshards of such a version 1 to half as many, or
    copies from ``source`` filled by :func:`fill_source`) killed at points spread over a
    whole one; returns the figures."""
    def args(k: int) -> tuple[str, ...]:
        return {"push": (catalog, str(MODEL_BYTES // shards)), "copy": (catalog, source, str(k + 3)),
                "reshard": (catalog, str(shards // 2))}[operation]

    if operation == "reshard":
        finish(start("push", catalog, str(MODEL_BYTES // shards)))
    duration = whole_run(operation, args)
    cat = Catalog(catalog, lease_seconds=LEASE)
    before = check_aliases(cat)

    def after_kill() -> None:
        nonlocal before
        after = check_aliases(cat, settled=False)
        assert after[:len(before)] == before and len(after) - len(before) in (0, 1)  # whole or nothing
        check_versions(cat, after[len(before):])
        before = after

    killed = kill_spread(operation, args, trials, duration, after_kill, seed=seed)
    finish(start(operation, *args(trials)))  # the next one works despite the leftovers
    versions = check_aliases(cat)
    check_versions(cat, versions)  # nothing committed was damaged by any kill
    check_gc(cat)
    assert check_aliases(cat) == versions
    return (f"kill -9 of {operation}: {trials} trials over {duration:.2f} s, {killed} killed while "
            f"running, {len(versions) - 3 - (operation == 'reshard')} committed whole, 0 damaged")


def alias_trials(catalog: str, trials: int, *, rounds: int, lease: float, seed: int = 11) -> str:
    """``trials`` runs of ``rounds`` alias moves (prod to 1, then 2) killed at points spread
    over the moves of a whole one: prod is on 1 or 2 after each kill, and the next move waits
    out a lock the dead left; returns the figures."""
    cat = Catalog(catalog, lease_seconds=lease)
    for _ in range(2):
        modelshard.push({"w": np.zeros(2)}, "m", catalog=cat)
    modelshard.alias("m@prod", 1, catalog=cat)
    held = 0

    def after_kill() -> None:
        nonlocal held
        assert modelshard.alias("m@prod", catalog=cat) in ("1", "2")  # readers take no lock
        check_aliases(cat)
        held += cat.fs.exists(cat._lock_path("m"))
        assert modelshard.alias("m@prod", 1, catalog=cat) == "1"  # waits out a dead lock

    def args(k: int) -> tuple[str, ...]:
        return catalog, str(rounds)

    duration = whole_run("alias", args, lease=lease)
    killed = kill_spread("alias", args, trials, duration, after_kill, lease=lease, seed=seed)
    check_gc(cat)
    assert cat.aliases("m") == {"latest": "2", "prod": "1"}
    return (f"kill -9 of alias moves: {trials} trials over {duration:.2f} s, {killed} killed "
            f"while running, {held} holding the lock, 0 dangling")


def test_kill_9_anywhere_in_a_push(tmp_path):
    print(commit_trials(str(tmp_path / "catalog"), 24))  # the figures of docs/reliability.md


def test_kill_9_anywhere_in_a_copy(tmp_path):
    fill_source(str(tmp_path / "source"))
    print(commit_trials(str(tmp_path / "catalog"), 20, operation="copy", source=str(tmp_path / "source")))


def test_kill_9_anywhere_in_a_reshard(tmp_path):
    print(commit_trials(str(tmp_path / "catalog"), 20, operation="reshard"))


def test_kill_9_anywhere_in_alias_moves(tmp_path):
    # Local mtimes are precise: a short lease, waited out after each kill that held it.
    print(alias_trials(str(tmp_path / "catalog"), 20, rounds=300, lease=1.0))
