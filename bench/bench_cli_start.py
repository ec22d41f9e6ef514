"""Start-up time of the store's commands, this checkout against a baseline commit (issue 11).

    python bench/bench_cli_start.py [--baseline main] [--repeat 15]

Runs each command (``ls``, ``show``, ``pull`` and ``push`` of a small safetensors file) as a
fresh ``python -m modelshard`` process, alternating this checkout's code and the code of the
``--baseline`` git revision (exported with ``git archive`` to a temporary folder), on the same
small local catalog; prints the median wall time of each and the ratio of medians
(baseline / this checkout: above 1 means faster now). ``python -c pass`` is the floor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parents[1]


def export(revision: str, into: Path) -> Path:
    """The tree of ``revision`` as files under ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def timed(code: Path, argv: list[str], cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(code)}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, *argv], env=env, cwd=cwd, capture_output=True)
    elapsed = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"{' '.join(argv)} failed with {code}: {r.stderr.decode()[-500:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="main", help="git revision to compare with")
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = export(args.baseline, (tmp / "baseline").resolve())
        src = tmp / "m.safetensors"
        save_file({"w": np.ones((256, 256), np.float32), "b": np.ones(256, np.float32)}, str(src))
        cat = ["--catalog", str(tmp / "cat")]
        subprocess.run([sys.executable, "-m", "modelshard", "push", str(src), "m", *cat], check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
        commands = {"python -c pass": ["-c", "pass"],
                    "modelshard ls": ["-m", "modelshard", "ls", *cat],
                    "modelshard show": ["-m", "modelshard", "show", "m", "--tensors", *cat],
                    "modelshard pull": ["-m", "modelshard", "pull", "m", "{dest}", *cat],
                    "modelshard push": ["-m", "modelshard", "push", str(src), "m", *cat]}
        print(f"{os.cpu_count()} cores, median of {args.repeat} runs, alternating; baseline "
              f"{args.baseline}")
        print(f"  {'command':18s} {'baseline s':>10s} {'now s':>8s} {'ratio':>7s}")
        for name, argv in commands.items():
            times: dict[str, list[float]] = {"baseline": [], "now": []}
            for i in range(args.repeat):
                for label, code in (("baseline", base), ("now", REPO)):
                    run = [a.replace("{dest}", str(tmp / f"pull-{label}-{i}")) for a in argv]
                    times[label].append(timed(code, run, tmp))
            b, n = statistics.median(times["baseline"]), statistics.median(times["now"])
            print(f"  {name:18s} {b:10.3f} {n:8.3f} {b / n:6.2f}x")


if __name__ == "__main__":
    main()
