"""Replicas of ``modelshard serve`` as a long-running YARN application.

YARN runs each replica as a task of a map-only Hadoop Streaming job that never ends: one
map per replica (one line each of an input file, ``NLineInputFormat``), no task timeout, no
speculative copies. The MapReduce ApplicationMaster is what restarts a replica: when a
replica's process dies, its task attempt fails and the AM starts another attempt in a new
container (on a node YARN's scheduler picks), up to ``retries`` times; the new process
registers again, replacing the file its predecessor left. The application runs until it is
killed (:func:`stop`).

Why not YARN's distributed shell (the usual ApplicationMaster for long-running
containers, with NodeManager-side container retry): it is not on Maven Central for 3.5.0,
and the 3.4.2 one calls Jersey 1 classes (``com.sun.jersey``) that Hadoop 3.5 no longer
ships, so its client fails before submitting. The YARN services framework's jars are
missing from Maven Central for 3.5.0 too.

Each replica runs with exactly what the jobs ship (:mod:`modelshard.jobs.environment`):
the environment archive as ``./env`` and the code archive as ``./code``, localized by each
NodeManager once per node and reused by every later container, then execs ``modelshard
serve`` on the node's address and a free port, with ``--registry``.

Clients find the replicas in the registry folder, ``/user/<you>/.modelshard/serve/<name>``
on the catalog's HDFS (:func:`replicas`; :mod:`modelshard.serve.registry`), which also holds
the application id (``_application``).
"""

from __future__ import annotations

import getpass
import os
import posixpath
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from modelshard.errors import JobError, NotFoundError, UsageError
from modelshard.fs import get_fs
from modelshard.fs.hdfs import hadoop_home
from modelshard.jobs.hadoop import check_catalog, env_dir, streaming_jar
from modelshard.serve import registry as reg

APPLICATION_FILE = "_application"
REPLICA_ENV = "MODELSHARD_REPLICA"  # which replica a process is: its map task's id
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

_SCRIPT = """#!/bin/bash
# A replica of modelshard serve, a map task of a never-ending streaming job (modelshard.serve.yarn).
set -euo pipefail
export PYTHONPATH="$PWD/code" %(replica_env)s="$mapreduce_task_id"
exec env/bin/python -m modelshard serve --host "$NM_HOST" %(args)s </dev/null
"""


@dataclass(frozen=True)
class Application:
    """A started service: its YARN application id, registry folder and ready replicas."""

    name: str
    application_id: str
    registry: str
    replicas: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def registry_folder(name: str, *, catalog: str | None) -> str:
    """``hdfs://<namenode>/user/<you>/.modelshard/serve/<name>``, on the catalog's HDFS."""
    if not _NAME.fullmatch(name):
        raise UsageError(f"service name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    netloc = urlsplit(catalog or "").netloc
    return f"hdfs://{netloc}{posixpath.join('/user', getpass.getuser(), '.modelshard', 'serve', name)}"


def start(name: str, serve_args: Sequence[str], *, catalog: str | None, replicas: int = 2,
          memory_mb: int, port: int = 0, retries: int = 10, python_archive: str | None = None,
          wait_s: float = 600.0, echo: Callable[[str], object] | None = None) -> Application:
    """Submit ``replicas`` replicas of ``modelshard serve SERVE_ARGS`` (the server options
    but ``--host``, ``--port`` and ``--registry``) and wait up to ``wait_s`` until each
    answers ``/readyz``::

        start("digits", ["--budget", "2G", "--pin", "digits@prod"], catalog="hdfs:///models",
              memory_mb=4096)
    """
    if catalog is None or not catalog.startswith("hdfs://"):
        check_catalog("hadoop", catalog or "(the default catalog)")
    if replicas < 1 or retries < 0:
        raise UsageError(f"--replicas {replicas} --retries {retries}: give 1 replica or more and 0 retries or more")
    folder = registry_folder(name, catalog=catalog)
    fs, root = get_fs(folder)
    if fs.exists(posixpath.join(root, APPLICATION_FILE)):
        raise UsageError(f"service {name} is running already ({_application(folder)}); "
                         f"'modelshard serve-yarn stop {name}' first")
    home = hadoop_home()
    jar = streaming_jar(home) if home else None
    if jar is None:
        raise UsageError("no hadoop-streaming jar found: set HADOOP_HOME to a Hadoop install with one")
    from modelshard.jobs.environment import task_environment

    efs, edir = get_fs(env_dir(catalog))
    shipped = task_environment("full", efs, edir, python_archive=python_archive)
    if echo:
        echo(f"task environment {shipped.env.uri}, code {shipped.code.uri}")
    if fs.exists(root):
        fs.delete(root, recursive=True)  # an earlier run's, stopped
    fs.mkdirs(root)
    fs.write_bytes(posixpath.join(root, "job-input.txt"),
                   "".join(f"{i}\n" for i in range(replicas)).encode())
    args = [*serve_args, "--catalog", catalog, "--port", str(port), "--registry", folder]
    script = _SCRIPT % {"replica_env": REPLICA_ENV, "args": " ".join(shlex.quote(a) for a in args)}
    try:
        app_id = _submit(jar, name, script, folder=fs.uri(root), env=shipped.env.uri,
                         code=shipped.code.uri, memory_mb=memory_mb, retries=retries)
    except BaseException:
        fs.delete(root, recursive=True)  # nothing runs: leave nothing behind
        raise
    fs.write_bytes(posixpath.join(root, APPLICATION_FILE), app_id.encode())
    if echo:
        echo(f"{app_id}: submitted {replicas} replicas of modelshard serve")
    ready: list[dict[str, Any]] = []
    deadline = time.monotonic() + wait_s
    while wait_s and len(ready) < replicas:
        if time.monotonic() > deadline:
            raise JobError(f"{app_id}: {len(ready)} of {replicas} replicas ready after {wait_s:.0f} s; "
                           f"see 'hadoop application -status {app_id}' and the tasks' logs; "
                           f"'modelshard serve-yarn stop {name}' stops it")
        _check_running(app_id)
        time.sleep(2.0)
        ready = reg.replicas(folder, check=True)
    return Application(name, app_id, folder, ready)


def replicas(name: str, *, catalog: str | None) -> list[dict[str, Any]]:
    """The replicas of service ``name`` that answer ``/readyz`` now."""
    return reg.replicas(registry_folder(name, catalog=catalog), check=True)


def stop(name: str, *, catalog: str | None) -> str:
    """Kill the service's YARN application and delete its registry folder; returns its id."""
    folder = registry_folder(name, catalog=catalog)
    app_id = _application(folder)
    out = subprocess.run([_hadoop(), "application", "-kill", app_id], capture_output=True, text=True)
    if out.returncode != 0 and "has already finished" not in out.stdout + out.stderr:
        raise JobError(f"{app_id}: cannot kill it: {_last_line(out.stderr or out.stdout)}")
    fs, root = get_fs(folder)
    fs.delete(root, recursive=True)
    return app_id


def _application(folder: str) -> str:
    fs, root = get_fs(folder)
    try:
        return fs.read_bytes(posixpath.join(root, APPLICATION_FILE)).decode().strip()
    except NotFoundError:
        raise NotFoundError(f"no service registered in {folder}; start one with "
                            "'modelshard serve-yarn start NAME'") from None


def _hadoop() -> str:
    home = hadoop_home()
    if home is None or not (home / "bin" / "hadoop").exists():
        raise UsageError("no Hadoop found: set HADOOP_HOME (and HADOOP_CONF_DIR)")
    return str(home / "bin" / "hadoop")


def _submit(jar: str, name: str, script: str, *, folder: str, env: str, code: str,
            memory_mb: int, retries: int) -> str:
    """Submit the streaming job and return its application id. ``hadoop jar`` watches the
    job until it ends, which is never: it is stopped once the job is submitted, and the job
    runs on without it."""
    with tempfile.TemporaryDirectory(prefix="modelshard-serve-") as tmp:
        path = os.path.join(tmp, "serve.sh")
        with open(path, "w") as f:
            f.write(script)
        props = {
            "mapreduce.job.name": f"modelshard-serve-{name}", "mapreduce.job.reduces": "0",
            "mapreduce.input.lineinputformat.linespermap": "1",
            "mapreduce.task.timeout": "0",  # a replica reports no progress: it serves
            "mapreduce.map.speculative": "false", "mapreduce.map.maxattempts": str(retries + 1),
            # Failed attempts are the point (restarts): never blacklist a node for them.
            "mapreduce.job.maxtaskfailures.per.tracker": str(retries + 2),
            "mapreduce.map.memory.mb": str(memory_mb), "mapreduce.map.java.opts": "-Xmx128m",
            "yarn.app.mapreduce.am.resource.mb": "512", "yarn.app.mapreduce.am.command-opts": "-Xmx384m"}
        cmd = [_hadoop(), "jar", jar, *(x for k, v in props.items() for x in ("-D", f"{k}={v}")),
               "-files", path, "-archives", f"{env}#env,{code}#code",
               "-inputformat", "org.apache.hadoop.mapred.lib.NLineInputFormat",
               "-input", f"{folder}/job-input.txt", "-output", f"{folder}/job-output",
               "-mapper", "bash serve.sh"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        lines: list[str] = []
        app_id = None
        try:
            for line in proc.stdout:
                lines.append(line)
                if m := re.search(r"Submitted application (application_\d+_\d+)", line):
                    app_id = m[1]
                    break
        finally:
            proc.kill()
            proc.wait()
    if app_id is None:
        errors = [x for x in lines if re.search(r"ERROR|Exception|Error:", x)]
        raise JobError(f"the replicas' job was not submitted: {_last_line(''.join(errors[:1] or lines[-20:]))}")
    return app_id


def _check_running(app_id: str) -> None:
    out = subprocess.run([_hadoop(), "application", "-status", app_id], capture_output=True, text=True)
    state = re.search(r"State : (\w+)", out.stdout)
    if state and state[1] in ("FINISHED", "FAILED", "KILLED"):
        diag = re.search(r"Diagnostics : (.*)", out.stdout)
        raise JobError(f"{app_id} ended ({state[1]}) before its replicas were ready: "
                       f"{_last_line(diag[1] if diag else '')}; see its containers' logs")


def _last_line(text: str) -> str:
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    return lines[-1][:500] if lines else "no output"


__all__ = ["Application", "registry_folder", "replicas", "start", "stop"]
