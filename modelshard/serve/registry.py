"""Where clients find the replicas of a server: a folder (on HDFS, or local) in which each
replica keeps one small JSON file, ``<host>_<port>.json``, while it serves.

A replica writes its file once it listens and is ready (written under a temporary name, then
renamed: a reader never sees half of one) and deletes it as it shuts down; a replica killed
with -9 leaves its file behind, so :func:`replicas` asks each listed replica's ``/readyz``
when ``check=True`` and leaves out those that do not answer.

>>> register("/tmp/reg", "127.0.0.1", 8080, container="c1")        # doctest: +SKIP
>>> [r["port"] for r in replicas("/tmp/reg")]                      # doctest: +SKIP
[8080]
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import time
import urllib.request
from typing import Any

import orjson

from modelshard.errors import ModelShardError, NotFoundError
from modelshard.fs import get_fs


def _entry(host: str, port: int) -> str:
    return f"{host}_{port}.json"


def register(folder: str, host: str, port: int, **info: Any) -> str:
    """Write this replica's file in ``folder`` (created if needed); returns its path. A
    ``replica`` given (which replica this process is) replaces the file that an earlier
    process of that replica left (one restarted after a kill -9)."""
    fs, root = get_fs(folder)
    fs.mkdirs(root)
    if info.get("replica"):
        for old in replicas(folder):
            if old.get("replica") == info["replica"]:
                unregister(folder, old["host"], old["port"])
    path = posixpath.join(root, _entry(host, port))
    tmp = posixpath.join(root, f".{_entry(host, port)}.{os.getpid()}.tmp")
    fs.write_bytes(tmp, orjson.dumps({"host": host, "port": port, "pid": os.getpid(),
                                      "started": time.time(), **info}))
    if fs.exists(path):
        fs.delete(path)
    fs.rename(tmp, path)
    return path


def unregister(folder: str, host: str, port: int) -> None:
    """Delete this replica's file (nothing if it is gone)."""
    fs, root = get_fs(folder)
    with contextlib.suppress(NotFoundError):
        fs.delete(posixpath.join(root, _entry(host, port)))


def replicas(folder: str, *, check: bool = False, timeout_s: float = 2.0) -> list[dict[str, Any]]:
    """The replicas registered in ``folder`` (``host``, ``port``, ``container``...), sorted;
    ``check``: only those whose ``/readyz`` answers 200 now."""
    fs, root = get_fs(folder)
    try:
        infos = fs.ls(root)
    except NotFoundError:
        return []
    found = []
    for info in infos:
        name = posixpath.basename(info.path)
        if name.startswith(".") or not name.endswith(".json"):
            continue
        try:
            entry = orjson.loads(fs.read_bytes(info.path))
        except (ModelShardError, orjson.JSONDecodeError):
            continue  # deleted meanwhile, or not ours
        if not check or _ready(entry["host"], entry["port"], timeout_s):
            found.append(entry)
    return sorted(found, key=lambda e: (e["host"], e["port"]))


def _ready(host: str, port: int, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=timeout_s) as r:
            return r.status == 200
    except OSError:
        return False
