"""Moving shards concurrently: a bounded thread pool (shard I/O and sha256 release the GIL)
and one byte-count progress bar, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

from tqdm import tqdm

from modelshard.errors import UsageError

T = TypeVar("T")
R = TypeVar("R")
Progress = Callable[[int], object]
DEFAULT_WORKERS = 4


def check_workers(workers: object) -> int:
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise UsageError(f"workers={workers!r}: give a whole number of threads, at least 1")
    return workers


@contextmanager
def progress_bar(total: int, desc: str) -> Iterator[Progress]:
    """A thread-safe ``update(nbytes)``; a bar on a terminal, silent otherwise."""
    lock = threading.Lock()
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
              disable=not sys.stderr.isatty(), leave=False) as bar:
        def update(n: int) -> None:
            with lock:
                bar.update(n)

        yield update


def run_all(fn: Callable[[T, Progress], R], items: Sequence[T], *, workers: int,
            total: int, desc: str) -> list[R]:
    """``[fn(item, progress) for item in items]`` on ``workers`` threads; the first error
    cancels what has not started and is raised once the running calls end."""
    check_workers(workers)
    with progress_bar(total, desc) as update, ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(fn, item, update) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if failed:
            for f in futures:
                f.cancel()
            raise failed[0].exception()
        return [f.result() for f in futures]
