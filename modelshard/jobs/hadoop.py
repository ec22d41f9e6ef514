"""Where a job finds Hadoop, and what its tasks run with, as on an edge node.

Hadoop is the one ``$HADOOP_HOME`` names, else the one whose ``hadoop`` is on ``PATH``; its
configuration is ``$HADOOP_CONF_DIR``, else ``$HADOOP_HOME/etc/hadoop``, else
``/etc/hadoop/conf``, as Hadoop's own scripts choose. The streaming jar is searched in the
usual distribution layouts, and else left to mrjob's own search. Tasks run with the
environment that :mod:`modelshard.jobs.environment` ships to HDFS beside the catalog.
"""

from __future__ import annotations

import getpass
import glob
import os
import posixpath
from collections.abc import Callable
from pathlib import Path

from modelshard.errors import UsageError
from modelshard.fs.hdfs import hadoop_home

RUNNERS = ("inline", "local", "hadoop")
ENV_DIR_VAR = "MODELSHARD_ENV_DIR"
# Nothing shipped: every node has this interpreter, with modelshard, at this path (a virtualenv
# on a filesystem that all nodes mount). What the bundled cluster did before it had nodes.
SHARED_PYTHON_VAR = "MODELSHARD_SHARED_PYTHON"
# Where distributions put hadoop-streaming: Apache's tarball, Bigtop/CDH/HDP packages, and
# the flat lib/ of the bundled cluster.
_STREAMING_JARS = ("share/hadoop/tools/lib/hadoop-streaming-*.jar", "../hadoop-mapreduce/hadoop-streaming*.jar",
                   "lib/hadoop-streaming-*.jar")
_STREAMING_ROOTS = ("/usr/lib/hadoop-mapreduce/hadoop-streaming*.jar",
                    "/usr/hdp/current/hadoop-mapreduce-client/hadoop-streaming*.jar")


def streaming_jar(home: Path) -> str | None:
    """The hadoop-streaming jar of ``home`` in the usual layouts; None leaves it to mrjob."""
    for pattern in [str(home / p) for p in _STREAMING_JARS] + list(_STREAMING_ROOTS):
        if jars := sorted(glob.glob(pattern)):
            return str(Path(jars[-1]).resolve())
    return None


def check_catalog(runner: str, catalog: str) -> None:
    """YARN tasks run on other hosts: they can reach an HDFS catalog, never this machine's
    disk."""
    if runner == "hadoop" and not catalog.startswith("hdfs://"):
        raise UsageError(f"--runner hadoop with catalog {catalog}: YARN tasks run on other nodes and "
                         "cannot read this machine's disk; push the model to an hdfs:// catalog "
                         "(modelshard copy KEY hdfs:///user/$USER/catalog) and pass --catalog hdfs://...")


def env_dir(catalog: str) -> str:
    """Where task environments are shipped: ``$MODELSHARD_ENV_DIR``, else
    ``/user/<you>/.modelshard/envs`` on the catalog's HDFS."""
    if configured := os.environ.get(ENV_DIR_VAR):
        return configured
    from urllib.parse import urlsplit

    netloc = urlsplit(catalog).netloc
    return f"hdfs://{netloc}{posixpath.join('/user', getpass.getuser(), '.modelshard', 'envs')}"


def runner_args(runner: str, *, catalog: str | None = None, flavour: str = "full",
                python_archive: str | None = None, echo: Callable[[str], object] | None = None) -> list[str]:
    """mrjob command-line options that run a job on ``runner`` (inline, local or hadoop).

    For ``hadoop``: the ``hadoop`` binary and streaming jar found as on an edge node, and the
    ``flavour`` task environment shipped to HDFS beside ``catalog`` (an ``hdfs://`` URI; once
    per distinct environment) or the user's ``python_archive``; with ``$MODELSHARD_SHARED_PYTHON``
    set, that interpreter, which every node must have, and nothing shipped::

        runner_args("hadoop", catalog="hdfs:///models", flavour="slim")

    >>> runner_args("inline")
    ['-r', 'inline']
    """
    if runner not in RUNNERS:
        raise UsageError(f"unknown runner {runner!r}; use one of: {', '.join(RUNNERS)}")
    args = ["-r", runner]
    if runner != "hadoop":
        return args
    if catalog is None:
        raise UsageError("--runner hadoop needs an hdfs:// catalog for the task environment")
    check_catalog(runner, catalog)
    home = hadoop_home()
    if home is None:
        raise UsageError("no Hadoop found for --runner hadoop: set HADOOP_HOME (and HADOOP_CONF_DIR), "
                         "or put your Hadoop's bin/ on PATH")
    if (home / "bin" / "hadoop").exists():
        args += ["--hadoop-bin", str(home / "bin" / "hadoop")]
    if jar := streaming_jar(home):
        args += ["--hadoop-streaming-jar", jar]
    if shared := os.environ.get(SHARED_PYTHON_VAR):
        args += ["--python-bin", shared]
    else:
        from modelshard.fs import get_fs
        from modelshard.jobs.environment import task_environment

        fs, folder = get_fs(env_dir(catalog))
        shipped = task_environment(flavour, fs, folder, python_archive=python_archive)
        if echo:
            for part in (shipped.env, shipped.code):
                done = f"shipped {part.uploaded / 1e6:.1f} MB in {part.seconds:.1f} s" if part.uploaded \
                    else "already on HDFS"
                echo(f"task environment {part.uri}: {done}")
        args += shipped.mrjob_args()
    # The environment has mrjob already: skip uploading a copy of it.
    args.append("--no-bootstrap-mrjob")
    # The drivers check their inputs before submitting; mrjob would check each again with a
    # `hadoop fs` JVM of its own (about 2 s apiece).
    args.append("--no-check-input-paths")
    return args
