"""Replicas of ``modelshard serve`` as a long-running YARN application.

YARN runs each replica as a task of a map-only Hadoop Streaming job that never ends: one
map per replica, no task timeout, no speculative copies. The application runs until it is
killed (:func:`stop`).

**Placement.** A replica is asked for on the hosts that hold the blocks of the models it
serves (``near``: by default the pinned ones): its task's input is one shard file of those
models (``FixedLengthInputFormat``, one split per file), and the MapReduce
ApplicationMaster asks YARN for each map's container on the hosts of its split's blocks
(:func:`plan`: the NodeManager hosts ranked by the models' bytes they hold, replica *i* on
the *i*-th, round robin). It is a preference, not a constraint: MapReduce always lets a
request relax, and the CapacityScheduler gives the container to another node of the rack
once the hosts asked for have passed up ``min(node-locality-delay, number of nodes)``
scheduling opportunities (no room there, no NodeManager there). Without models to place
near, the input is one line per replica (``NLineInputFormat``) and YARN places them
anywhere. The split's bytes are the replica's standard input, held open by its script and
never read: the task blocks writing it after a pipe's worth (it reads no more of the
shard) and sees a broken pipe when the script ends.

**Restarts.** A replica's process that dies is started again in its container by its
script (the same node: locality and the localized environment kept), up to ``retries``
times. A container that is lost (its node fails, it outgrows its memory, the script gave
up) is a failed attempt of the map task, which the ApplicationMaster starts again in a new
container, up to ``retries`` times; MapReduce asks for a failed task's next attempt
without a location, so that one lands on any node. The new process registers again,
replacing the file its predecessor left.

Why not YARN's distributed shell (the usual ApplicationMaster for long-running
containers, with NodeManager-side container retry): it is not on Maven Central for 3.5.0,
and the 3.4.2 one calls Jersey 1 classes (``com.sun.jersey``) that Hadoop 3.5 no longer
ships, so its client fails before submitting. The YARN services framework's jars are
missing from Maven Central for 3.5.0 too.

Each replica runs with exactly what the jobs ship (:mod:`modelshard.jobs.environment`):
the environment archive as ``./env`` and the code archive as ``./code``, localized by each
NodeManager once per node and reused by every later container, then runs ``modelshard
serve`` on the node's address and a free port, with ``--registry``.

Clients find the replicas in the registry folder, ``/user/<you>/.modelshard/serve/<name>``
on the catalog's HDFS (:func:`replicas`; :mod:`modelshard.serve.registry`), which also holds
the application id (``_application``); each replica's entry says where it runs and whether
its node holds its split's blocks (:func:`replica_info`).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import posixpath
import re
import shlex
import subprocess
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from modelshard.catalog.catalog import Catalog
from modelshard.errors import JobError, ModelShardError, NotFoundError, UsageError
from modelshard.fs import get_fs
from modelshard.fs.hdfs import hadoop_conf_dir, hadoop_home
from modelshard.fs.locality import replica_is_local
from modelshard.jobs.hadoop import check_catalog, env_dir, streaming_jar
from modelshard.serve import registry as reg

APPLICATION_FILE = "_application"
REPLICA_ENV = "MODELSHARD_REPLICA"  # which replica a process is: its map task's id
SPLIT_ENV = "MODELSHARD_REPLICA_SPLIT"  # the shard file its task was placed by ("" if none)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

_SCRIPT = """#!/bin/bash
# A replica of modelshard serve, a map task of a never-ending streaming job (modelshard.serve.yarn).
# Standard input is the task's split, held open and never read: the task blocks writing it
# and fails (a broken pipe, or this script's status) once the script ends.
set -uo pipefail
export PYTHONPATH="$PWD/code" %(replica_env)s="$mapreduce_task_id" %(split_env)s="%(split)s"
for ((restart = 0; ; restart++)); do
  env/bin/python -m modelshard serve --host "$NM_HOST" %(args)s </dev/null && rc=0 || rc=$?
  if ((restart >= %(restarts)d)); then exit $((rc ? rc : 1)); fi
  echo "modelshard serve ended (status $rc); again in this container ($((restart + 1)) of %(restarts)d)" >&2
  sleep 2
done
"""


@dataclass(frozen=True)
class Spot:
    """Where one replica is asked for: a shard file of the models (its task's input split)
    and the NodeManager hosts that hold its blocks."""

    split: str
    hosts: tuple[str, ...]


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
          memory_mb: int, port: int = 0, retries: int = 10, near: Sequence[str] = (),
          python_archive: str | None = None, wait_s: float = 600.0,
          echo: Callable[[str], object] | None = None) -> Application:
    """Submit ``replicas`` replicas of ``modelshard serve SERVE_ARGS`` (the server options
    but ``--host``, ``--port`` and ``--registry``), preferably on the hosts that hold the
    blocks of the models ``near`` (:func:`plan`), and wait up to ``wait_s`` until each
    answers ``/readyz``::

        start("digits", ["--budget", "2G", "--pin", "digits@prod"], catalog="hdfs:///models",
              memory_mb=4096, near=["digits@prod"])
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
    spots = plan(near, replicas, catalog=catalog) if near else []
    if echo and near:
        echo("replicas placed near " + ", ".join(near) + ": " + (
            "; ".join(f"{i} on {'/'.join(s.hosts)} ({posixpath.basename(s.split)})"
                      for i, s in enumerate(spots))
            or "no NodeManager host holds their blocks, so anywhere"))
    from modelshard.jobs.environment import task_environment

    efs, edir = get_fs(env_dir(catalog))
    shipped = task_environment("full", efs, edir, python_archive=python_archive)
    if echo:
        echo(f"task environment {shipped.env.uri}, code {shipped.code.uri}")
    if fs.exists(root):
        fs.delete(root, recursive=True)  # an earlier run's, stopped
    fs.mkdirs(root)
    if spots:
        inputs = [s.split for s in spots]
    else:
        inputs = [fs.uri(posixpath.join(root, "job-input.txt"))]
        fs.write_bytes(posixpath.join(root, "job-input.txt"),
                       "".join(f"{i}\n" for i in range(replicas)).encode())
    args = [*serve_args, "--catalog", catalog, "--port", str(port), "--registry", folder]
    script = _SCRIPT % {"replica_env": REPLICA_ENV, "split_env": SPLIT_ENV,
                        "split": "${mapreduce_map_input_file:-}" if spots else "",
                        "restarts": retries, "args": " ".join(shlex.quote(a) for a in args)}
    try:
        app_id = _submit(jar, name, script, inputs=inputs, placed=bool(spots),
                         output=fs.uri(posixpath.join(root, "job-output")), env=shipped.env.uri,
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


def plan(keys: Sequence[str], replicas: int, *, catalog: str | Catalog) -> list[Spot]:
    """Where to ask for each of ``replicas`` replicas so that they run on the hosts holding
    the blocks of the versions ``keys`` name: the NodeManager hosts ranked by the bytes of
    those blocks they hold (ties by name), replica *i* on the *i*-th (round robin), each
    given a shard file whose blocks are there (a file not used yet first, then one held by
    the fewest other NodeManager hosts, then the most bytes there). Empty if no NodeManager
    host holds any (then YARN places the replicas anywhere)::

        plan(["bert@prod"], 2, catalog="hdfs:///models")[0].hosts    # ('10.0.0.7',)
    """
    cat = catalog if isinstance(catalog, Catalog) else Catalog(catalog)
    held: dict[str, Counter[str]] = {}  # shard file -> bytes of it per host
    for key in keys:
        name, version = cat.resolve(key)
        vdir = cat.version_dir(name, version)
        for shard in cat.manifest(name, version).shards:
            path = posixpath.join(vdir, shard.path)
            held[path] = Counter()
            for block in cat.fs.block_hosts(path):
                for host in block.hosts:
                    held[path][host] += block.length
    managers = nodemanager_hosts()

    def runs_tasks(host: str) -> bool:
        return managers is None or host in managers

    per_host: Counter[str] = Counter()
    for hosts in held.values():
        per_host.update({h: n for h, n in hosts.items() if runs_tasks(h)})
    ranked = sorted(per_host, key=lambda h: (-per_host[h], h))
    used: Counter[str] = Counter()
    spots = []
    for i in range(replicas if ranked else 0):
        target = ranked[i % len(ranked)]
        path = min((p for p, hosts in held.items() if hosts[target]),
                   key=lambda p: (used[p], sum(map(runs_tasks, held[p])), -held[p][target], p))
        used[path] += 1
        spots.append(Spot(cat.fs.uri(path), tuple(sorted(h for h in held[path] if runs_tasks(h)))))
    return spots


def nodemanager_hosts() -> set[str] | None:
    """The hosts of the running NodeManagers, from the ResourceManager's REST API
    (``yarn.resourcemanager.webapp.address``); None if it cannot be asked."""
    address = "0.0.0.0:8088"
    conf_dir = hadoop_conf_dir()
    with contextlib.suppress(OSError, ET.ParseError):
        props = {p.findtext("name"): (p.findtext("value") or "").strip()
                 for p in ET.parse(conf_dir / "yarn-site.xml").getroot().iter("property")} if conf_dir else {}
        rm = props.get("yarn.resourcemanager.hostname", "0.0.0.0")
        address = props.get("yarn.resourcemanager.webapp.address", f"{rm}:8088").replace(
            "${yarn.resourcemanager.hostname}", rm)
    host, _, port = address.rpartition(":")
    url = f"http://{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{port}/ws/v1/cluster/nodes?states=RUNNING"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - the ResourceManager's REST API
            nodes = (json.load(r).get("nodes") or {}).get("node") or []
        return {n["nodeHostName"] for n in nodes}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def replica_info() -> dict[str, Any]:
    """What a replica running as a task of the service's job says about itself in the
    registry: its ``container``, ``replica`` (its task's id) and, when it was placed by a
    split, that shard file (``split``), the hosts holding its blocks (``near``) and whether
    this node is one of them (``local``)."""
    info: dict[str, Any] = {"container": os.environ.get("CONTAINER_ID"),
                            "replica": os.environ.get(REPLICA_ENV)}
    split = os.environ.get(SPLIT_ENV)
    if split:
        info["split"] = split
        with contextlib.suppress(ModelShardError):  # placement is reported, not required
            fs, path = get_fs(split)
            info["near"] = sorted({h for b in fs.block_hosts(path) for h in b.hosts})
            info["local"] = replica_is_local(fs, path)
    return info


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


def _submit(jar: str, name: str, script: str, *, inputs: Sequence[str], placed: bool, output: str,
            env: str, code: str, memory_mb: int, retries: int) -> str:
    """Submit the streaming job and return its application id. ``hadoop jar`` watches the
    job until it ends, which is never: it is stopped once the job is submitted, and the job
    runs on without it."""
    with tempfile.TemporaryDirectory(prefix="modelshard-serve-") as tmp:
        path = os.path.join(tmp, "serve.sh")
        with open(path, "w") as f:
            f.write(script)
        props = {
            "mapreduce.job.name": f"modelshard-serve-{name}", "mapreduce.job.reduces": "0",
            "mapreduce.task.timeout": "0",  # a replica reports no progress: it serves
            "mapreduce.map.speculative": "false", "mapreduce.map.maxattempts": str(retries + 1),
            # Failed attempts are the point (restarts): never blacklist a node for them.
            "mapreduce.job.maxtaskfailures.per.tracker": str(retries + 2),
            "mapreduce.map.memory.mb": str(memory_mb), "mapreduce.map.java.opts": "-Xmx128m",
            "yarn.app.mapreduce.am.resource.mb": "512", "yarn.app.mapreduce.am.command-opts": "-Xmx384m"}
        if placed:  # one split per shard file, located on its blocks' hosts; records of a byte
            props.update({"mapreduce.input.fileinputformat.split.minsize": str(1 << 62),
                          "fixedlengthinputformat.record.length": "1", "stream.map.input.ignoreKey": "true"})
            inputformat = "org.apache.hadoop.mapred.FixedLengthInputFormat"
        else:
            props["mapreduce.input.lineinputformat.linespermap"] = "1"
            inputformat = "org.apache.hadoop.mapred.lib.NLineInputFormat"
        cmd = [_hadoop(), "jar", jar, *(x for k, v in props.items() for x in ("-D", f"{k}={v}")),
               "-files", path, "-archives", f"{env}#env,{code}#code", "-inputformat", inputformat,
               *(x for i in inputs for x in ("-input", i)), "-output", output, "-mapper", "bash serve.sh"]
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


__all__ = ["Application", "Spot", "nodemanager_hosts", "plan", "registry_folder", "replica_info", "replicas",
           "start", "stop"]
