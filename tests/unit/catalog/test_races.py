"""Catalog operations racing each other, each scenario repeated 40 times, on threads (also
on HDFS: tests/integration/test_store_hdfs.py collects this module) and on forked processes
(local disk): an alias never points at a removed version, two removals never leave
``latest`` dangling, a push racing the removal of ``latest`` moves it forward, and version
numbers are never reused."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable

import numpy as np
import pytest

import modelshard
from modelshard.catalog.catalog import Catalog
from modelshard.catalog.keys import LATEST
from modelshard.errors import AlreadyExistsError, NotFoundError, UsageError

REPETITIONS = 40
OK = "ok"
# What a racer may meet, by exit code of a forked racer (its index + 10).
EXPECTED = (UsageError, NotFoundError, AlreadyExistsError)

Racer = Callable[[], object]


def on_threads(racers: list[Racer]) -> list[str]:
    """Run ``racers`` on threads released together; each one's outcome: OK or its error's
    class name (an unexpected error fails the test)."""
    barrier = threading.Barrier(len(racers))
    outcomes = [""] * len(racers)

    def run(i: int) -> None:
        barrier.wait()
        try:
            racers[i]()
            outcomes[i] = OK
        except EXPECTED as e:
            outcomes[i] = type(e).__name__

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(racers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(outcomes), "a racer failed with an unexpected error (see the thread's traceback)"
    return outcomes


def on_processes(racers: list[Racer]) -> list[str]:
    """The same on forked processes, which report their outcome by exit status."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(racers))

    def run(racer: Racer) -> None:
        barrier.wait()
        try:
            racer()
        except EXPECTED as e:
            os._exit(10 + EXPECTED.index(type(e)))
        except BaseException:  # noqa: BLE001 - a racer's crash is reported by its exit code
            os._exit(99)
        os._exit(0)

    procs = [ctx.Process(target=run, args=(r,)) for r in racers]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    codes = [p.exitcode for p in procs]
    assert all(c == 0 or 10 <= c < 10 + len(EXPECTED) for c in codes), codes
    return [OK if c == 0 else EXPECTED[c - 10].__name__ for c in codes]


RUNNERS = {"threads": on_threads, "processes": on_processes}


def push(catalog: Catalog, name: str, n: int = 1) -> list[str]:
    return [modelshard.push({"w": np.zeros(2)}, name, catalog=catalog.uri).version for _ in range(n)]


def assert_consistent(catalog: Catalog, name: str) -> None:
    """Every alias points at an existing version, ``latest`` at the highest, and no removed
    number is in use again."""
    versions = catalog.versions(name)
    aliases = catalog.aliases(name)
    assert set(aliases.values()) <= set(versions), (aliases, versions)
    assert aliases.get(LATEST) == (versions[-1] if versions else None), (aliases, versions)
    removed = {i.path.rsplit("/", 1)[-1] for i in catalog._ls(f"{catalog.model_dir(name)}/.removed")}
    assert not removed & set(versions)


def alias_move_vs_rm(catalog: Catalog, name: str, race) -> tuple[str, ...]:
    push(catalog, name, 3)
    modelshard.alias(f"{name}@prod", 1, catalog=catalog.uri)
    outcome = tuple(race([lambda: modelshard.alias(f"{name}@prod", 2, catalog=catalog.uri),
                          lambda: modelshard.rm(f"{name}@2", confirm=True, catalog=catalog.uri)]))
    # The move came first and the removal was refused, or the removal came first and the
    # move found no version 2: never an alias on a removed version.
    assert outcome in {(OK, "UsageError"), ("NotFoundError", OK)}, outcome
    assert catalog.resolve(f"{name}@prod")[1] == ("2" if outcome[0] == OK else "1")
    assert_consistent(catalog, name)
    return outcome


def two_removals(catalog: Catalog, name: str, race) -> tuple[str, ...]:
    push(catalog, name, 4)
    outcome = tuple(race([lambda: modelshard.rm(f"{name}@4", confirm=True, catalog=catalog.uri),
                          lambda: modelshard.rm(f"{name}@3", confirm=True, catalog=catalog.uri),
                          lambda: modelshard.rm(f"{name}@3", confirm=True, catalog=catalog.uri)]))
    assert outcome[0] == OK and sorted(outcome[1:]) == ["NotFoundError", OK], outcome
    assert catalog.versions(name) == ["1", "2"] and catalog.resolve(name)[1] == "2"
    assert_consistent(catalog, name)
    return outcome


def push_vs_rm_of_latest(catalog: Catalog, name: str, race) -> tuple[str, ...]:
    push(catalog, name, 2)
    outcome = tuple(race([lambda: push(catalog, name),
                          lambda: modelshard.rm(f"{name}@2", confirm=True, catalog=catalog.uri)]))
    assert outcome == (OK, OK)
    assert catalog.versions(name) == ["1", "3"] and catalog.resolve(name)[1] == "3"  # forward only
    assert_consistent(catalog, name)
    assert push(catalog, name) == ["4"]  # never 2 again
    return outcome


@pytest.mark.parametrize("scenario", [alias_move_vs_rm, two_removals, push_vs_rm_of_latest],
                         ids=lambda f: f.__name__)
def test_races_on_threads(catalog, scenario):
    outcomes = {scenario(catalog, f"m{i}", on_threads) for i in range(REPETITIONS)}
    assert outcomes


@pytest.mark.parametrize("scenario", [alias_move_vs_rm, two_removals, push_vs_rm_of_latest],
                         ids=lambda f: f.__name__)
def test_races_on_processes(tmp_path, scenario):
    catalog = Catalog(str(tmp_path / "catalog"))
    outcomes = {scenario(catalog, f"m{i}", on_processes) for i in range(REPETITIONS)}
    assert outcomes
