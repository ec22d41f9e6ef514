"""Access statistics of a version, kept beside its immutable folder::

    <root>/models/<name>/.stats/<version>/<time>-<uuid>.json    one file per loading session

HDFS has no cheap append, so the log is a folder that each session adds one file to with an
exclusive create (readers never see a half-written file on HDFS; on a local disk a file being
written is skipped). ``replicate --hot`` and ``modelshard stats`` sum the files. Example::

    record(cat, "bert", "3", reads={"shards/model-00001-of-00002.safetensors": 7},
           local=1, remote=0)
    totals(cat, "bert", "3").reads     # {'shards/model-00001-of-00002.safetensors': 7}
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from modelshard import safejson
from modelshard.catalog.catalog import Catalog
from modelshard.errors import ModelShardError, NotFoundError
from modelshard.fs.locality import this_host

log = logging.getLogger(__name__)


def stats_dir(catalog: Catalog, name: str, version: str) -> str:
    return posixpath.join(catalog.model_dir(name), ".stats", version)


@dataclass(frozen=True)
class AccessTotals:
    """The sum of every recorded session: tensor reads per shard and the shards read from a
    local or a remote replica."""

    sessions: int = 0
    reads: dict[str, int] = field(default_factory=dict)
    local: int = 0
    remote: int = 0


def record(catalog: Catalog, name: str, version: str, *, reads: Mapping[str, int],
           local: int, remote: int) -> None:
    """Add one session's counts to the version's log."""
    doc = {"time": time.time(), "host": this_host(), "reads": dict(reads),
           "local": local, "remote": remote}
    path = posixpath.join(stats_dir(catalog, name, version),
                          f"{time.time_ns()}-{uuid.uuid4().hex}.json")
    catalog.fs.create_exclusive(path, json.dumps(doc).encode())


def totals(catalog: Catalog, name: str, version: str) -> AccessTotals:
    """Every session's counts of ``name@version`` added up (none recorded: all zero)."""
    folder = stats_dir(catalog, name, version)
    try:
        files = [i.path for i in catalog.fs.ls(folder)
                 if not i.is_dir and not posixpath.basename(i.path).startswith(".")]
    except NotFoundError:
        return AccessTotals()
    reads: dict[str, int] = {}
    sessions = local = remote = 0
    for path in files:
        try:
            doc = safejson.loads(catalog.fs.read_bytes(path), where=catalog.fs.uri(path))
            counts = {str(k): int(v) for k, v in doc["reads"].items()}
            here, there = int(doc["local"]), int(doc["remote"])
        except (ModelShardError, ValueError, KeyError, TypeError, AttributeError) as e:
            # A session still writing its file (local disk), or a stray file: not a count.
            log.warning("%s: skipping unreadable access record (%s)", catalog.fs.uri(path), e)
            continue
        for shard, n in counts.items():
            reads[shard] = reads.get(shard, 0) + n
        sessions, local, remote = sessions + 1, local + here, remote + there
    return AccessTotals(sessions, reads, local, remote)
