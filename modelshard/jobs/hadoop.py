"""Where mrjob finds Hadoop: the user's own install on an edge node, else the bundled one.

The bundled Hadoop is the one ``make hadoop`` fetched from Maven Central into ``.hadoop/``
of a source checkout, driven by ``bin/hadoop`` and ``bin/modelshard-cluster``.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

from modelshard.errors import UsageError

RUNNERS = ("inline", "local", "hadoop")
CHECKOUT = Path(__file__).resolve().parents[2]
BUNDLED_HOME = CHECKOUT / ".hadoop"


def hadoop_home() -> Path | None:
    """$HADOOP_HOME if set, else the bundled Hadoop if it was fetched, else None."""
    home = os.environ.get("HADOOP_HOME")
    if home:
        return Path(home)
    return BUNDLED_HOME if (BUNDLED_HOME / "lib").is_dir() else None


def runner_args(runner: str) -> list[str]:
    """mrjob command-line options that run a job on ``runner`` (inline, local or hadoop).

    For ``hadoop`` they name the ``hadoop`` binary, the streaming jar, the log folders (so a
    failed task's error is reported) and this interpreter as the tasks' Python (so tasks
    import numpy, torch and modelshard; on a multi-node cluster the same path must exist on
    every node).

    >>> runner_args("inline")
    ['-r', 'inline']
    """
    if runner not in RUNNERS:
        raise UsageError(f"unknown runner {runner!r}; use one of: {', '.join(RUNNERS)}")
    args = ["-r", runner]
    if runner != "hadoop":
        return args
    home = hadoop_home()
    if home is None:
        raise UsageError(
            "no Hadoop found for --runner hadoop: set HADOOP_HOME, or run 'make hadoop' in the "
            "modelshard checkout for the bundled one"
        )
    hadoop_bin = home / "bin" / "hadoop"
    jars = sorted(glob.glob(str(home / "lib" / "hadoop-streaming-*.jar")))
    jars += sorted(glob.glob(str(home / "share/hadoop/tools/lib/hadoop-streaming-*.jar")))
    if not jars:
        raise UsageError(f"no hadoop-streaming jar under {home}; is HADOOP_HOME a full Hadoop install?")
    args += ["--hadoop-bin", str(hadoop_bin), "--hadoop-streaming-jar", jars[0], "--python-bin", sys.executable]
    # The tasks' interpreter already has mrjob installed: skip uploading a copy of it.
    args.append("--no-bootstrap-mrjob")
    # The drivers check their inputs before submitting; mrjob would check each again with a
    # `hadoop fs` JVM of its own (about 2 s apiece).
    args.append("--no-check-input-paths")
    if home == BUNDLED_HOME:
        run = Path(os.environ.get("MODELSHARD_RUN", CHECKOUT / ".run"))
        args += ["--hadoop-log-dirs", str(run / "logs")]
    return args
