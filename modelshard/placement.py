"""Where a version's bytes live: HDFS replication (all shards, or the most-read ones by the
recorded access statistics), copies to another catalog, and the statistics themselves.

>>> import modelshard.placement as pl
>>> pl.replicate("bert@prod", replication=3, hot=True, top=2)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import time
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from typing import Any

from modelshard.api import _catalog
from modelshard.catalog import access
from modelshard.catalog.catalog import Catalog
from modelshard.catalog.commit import carry_assets, commit_version, copy_verified
from modelshard.catalog.keys import LATEST
from modelshard.catalog.manifest import AssetRecord, Manifest, ShardRecord
from modelshard.catalog.transfer import DEFAULT_WORKERS, Progress, check_workers, run_all
from modelshard.errors import StorageError, UsageError
from modelshard.fs import FileSystem
from modelshard.fs.hdfs import hadoop_conf_dir

log = logging.getLogger(__name__)

_DEFAULT_HTTP_PORT = 9870


# -- statistics ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardAccess:
    path: str
    size: int
    reads: int
    replication: int


@dataclass(frozen=True)
class AccessReport:
    """The recorded access statistics of a version, per shard, most read first."""

    key: str
    sessions: int
    local: int
    remote: int
    shards: list[ShardAccess]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def access_stats(key: str, *, catalog: str | os.PathLike | Catalog | None = None
                 ) -> AccessReport:
    """What loading sessions recorded for ``key``: tensor reads per shard, replicas read
    locally or remotely, and each shard's current replication::

        access_stats("bert@prod").shards[0]     # the most-read shard
    """
    cat = _catalog(catalog)
    name, version = cat.resolve(key)
    m = cat.manifest(name, version)
    totals = access.totals(cat, name, version)
    vdir = cat.version_dir(name, version)
    shards = [ShardAccess(s.path, s.size, totals.reads.get(s.path, 0),
                          cat.fs.stat(posixpath.join(vdir, s.path)).replication)
              for s in m.shards]
    shards.sort(key=lambda s: (-s.reads, s.path))
    return AccessReport(f"{name}@{version}", totals.sessions, totals.local, totals.remote, shards)


# -- replication -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplicationReport:
    """What ``replicate`` changed: every shard it set (factor before and after, and the
    replicas HDFS holds of each block, with their hosts, counted from the block locations),
    the live DataNodes it counted (None: unknown) and a warning if HDFS will under-replicate."""

    key: str
    replication: int
    shards: list[dict[str, Any]]
    live_datanodes: int | None
    warning: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def replicate(key: str, *, replication: int, hot: bool = False, top: int | None = None, wait: bool = True,
              timeout: float = 300.0, catalog: str | os.PathLike | Catalog | None = None) -> ReplicationReport:
    """Set the HDFS replication factor of a version's shards and wait until HDFS holds that
    many replicas of every block, counted from the block locations (not read back from the
    factor, which HDFS accepts at once); the version's assets (config, tokenizer...) go with
    the shards. ``hot=True`` only raises it, and only for the shards read most by the recorded
    access statistics (``top`` of them; None: every shard read at least once). A factor above
    the live DataNodes is refused before anything changes; with ``wait=False`` it is set,
    as HDFS allows, with a warning, and nothing is waited for::

        replicate("bert@prod", replication=3)
        replicate("bert@prod", replication=5, hot=True, top=4)
    """
    if isinstance(replication, bool) or not isinstance(replication, int) or replication < 1:
        raise UsageError(f"replication={replication!r}: give a whole number of copies, at least 1")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise UsageError(f"top={top!r}: give a whole number of shards, at least 1")
    if top is not None and not hot:
        raise UsageError("top= only picks among hot shards; pass hot=True (--hot) with it")
    cat = _catalog(catalog)
    name, version = cat.resolve(key)
    fs = cat.fs
    if fs.scheme != "hdfs":
        raise UsageError(f"replicate {name}@{version}: catalog {cat.uri} is on a local disk, "
                         "which keeps one copy; replication applies to an hdfs:// catalog")
    m = cat.manifest(name, version)
    vdir = cat.version_dir(name, version)
    chosen: list[ShardRecord | AssetRecord] = [*m.shards, *m.assets.values()]
    if hot:
        reads = access.totals(cat, name, version).reads
        chosen = sorted((s for s in m.shards if reads.get(s.path)),
                        key=lambda s: (-reads[s.path], s.path))[:top]
        if not chosen:
            raise UsageError(f"replicate --hot {name}@{version}: no access statistics recorded "
                             f"yet; load the model first (modelshard load) or omit --hot")
    live = live_datanodes(fs)
    warning = None
    if live is not None and replication > live:
        copies = f"{live} cop{'y' if live == 1 else 'ies'}"
        if wait:
            raise UsageError(f"replicate {name}@{version} --replication {replication}: only {live} DataNode(s) "
                             f"are live, so HDFS can keep at most {copies} of a block; nothing was changed. Ask "
                             f"for at most {live}, start more DataNodes, or pass --no-wait to set the factor "
                             "now and let HDFS copy when DataNodes join")
        warning = (f"replication {replication} is more than the {live} live DataNode(s): HDFS keeps at most "
                   f"{copies} of each block, and the blocks stay under-replicated until more DataNodes join")
        log.warning("%s@%s: %s", name, version, warning)
    changed = []
    for s in chosen:
        path = posixpath.join(vdir, s.path)
        before = fs.stat(path).replication
        if hot and before >= replication:
            continue  # --hot only raises
        fs.set_replication(path, replication)
        after = fs.stat(path).replication
        if after != replication:
            raise StorageError(f"{fs.uri(path)}: replication is {after} after asking for "
                               f"{replication}; check dfs.replication.max on the NameNode")
        changed.append({"path": s.path, "before": before, "after": after})
    blocks = _wait_for_replicas(fs, [posixpath.join(vdir, c["path"]) for c in changed], replication,
                                timeout=timeout if wait else None)
    for c, hosts in zip(changed, blocks, strict=True):
        c.update(replicas=[len(h) for h in hosts], hosts=hosts)
    return ReplicationReport(f"{name}@{version}", replication, changed, live, warning)


def _wait_for_replicas(fs: FileSystem, paths: list[str], replication: int, *, timeout: float | None
                       ) -> list[list[list[str]]]:
    """The hosts of each block of each file, once every block has exactly ``replication``
    replicas (HDFS copies new ones and drops extra ones in the background); ``timeout=None``:
    as they are now."""
    deadline = time.monotonic() + (timeout or 0)
    while True:
        blocks = [[sorted(b.hosts) for b in fs.block_hosts(p)] for p in paths]
        short = [(p, i, len(h)) for p, file_blocks in zip(paths, blocks, strict=True)
                 for i, h in enumerate(file_blocks) if len(h) != replication]
        if timeout is None or not short:
            return blocks
        if time.monotonic() >= deadline:
            path, i, n = short[0]
            raise StorageError(f"{fs.uri(path)}: replication is set to {replication}, but after {timeout:.0f} s "
                               f"block {i} still has {n} replica(s) ({len(short)} block(s) of {len(paths)} "
                               "shard(s) are not there yet); HDFS keeps copying: run the same command again "
                               "to wait, and see 'hdfs fsck PATH -files -blocks -locations'")
        time.sleep(0.5)


def live_datanodes(fs: FileSystem) -> int | None:
    """Live DataNodes of an HDFS filesystem from the NameNode's JMX (``NumLiveDataNodes``);
    None if the NameNode's web server cannot be asked (libhdfs has no call for it)."""
    netloc = getattr(fs, "netloc", None)
    if fs.scheme != "hdfs" or not netloc:
        return None
    url = (f"http://{_http_address(netloc.partition(':')[0])}/jmx?"
           "qry=Hadoop:service=NameNode,name=FSNamesystemState")
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - a NameNode's JMX
            return int(json.load(r)["beans"][0]["NumLiveDataNodes"])
    except (OSError, ValueError, KeyError, IndexError) as e:
        log.warning("cannot count the live DataNodes at %s (%s)", url, e)
        return None


def _http_address(host: str) -> str:
    """``dfs.namenode.http-address`` of the Hadoop configuration, with a wildcard host
    replaced by the NameNode's; else ``host:9870``."""
    conf_dir = hadoop_conf_dir()
    with contextlib.suppress(OSError, ET.ParseError):
        for prop in ET.parse(conf_dir / "hdfs-site.xml").getroot().iter("property") if conf_dir else ():
            if prop.findtext("name") == "dfs.namenode.http-address":
                value = (prop.findtext("value") or "").strip()
                there, _, port = value.rpartition(":")
                return f"{host if there in ('', '0.0.0.0') else there}:{port}"
    return f"{host}:{_DEFAULT_HTTP_PORT}"


# -- copying between catalogs ----------------------------------------------------------------
def copy(key: str, dest: str | os.PathLike | Catalog, *,
         catalog: str | os.PathLike | Catalog | None = None,
         workers: int = DEFAULT_WORKERS) -> Manifest:
    """Copy one version to the catalog ``dest`` (local or HDFS) under the same name and
    version, byte for byte: every shard is checked against the manifest as it leaves the
    source and again as stored at the destination (``commit.check_stored``), before the
    store's atomic commit makes the version visible there. ``latest`` at the destination
    moves only if this version is newer than the one it points at. A trained version keeps
    its optimizer state (``inner_momentum:*``, ``outer_momentum:*``): a version is the same bytes in every
    catalog, and the copy repairs or resumes like the source (``pull`` and ``reshard``
    leave the state out)::

        copy("bert@prod", "hdfs://nn:9000/catalogs/serving")
    """
    check_workers(workers)
    src = _catalog(catalog)
    dst = _catalog(dest)
    name, version = src.resolve(key)
    m = src.manifest(name, version)
    if (src.fs is dst.fs or src.fs.uri("/") == dst.fs.uri("/")) and src.root == dst.root:
        raise UsageError(f"copy {name}@{version}: the destination is the source catalog "
                         f"({dst.uri}); give another catalog")
    svdir = src.version_dir(name, version)

    def stage(version: str, staging: str) -> Manifest:
        def one(shard: ShardRecord, progress: Progress) -> None:
            copy_verified(src.fs, posixpath.join(svdir, shard.path), dst.fs,
                          posixpath.join(staging, shard.path), shard, f"{name}@{version}",
                          progress)

        total = sum(s.size for s in m.shards)
        run_all(one, m.shards, workers=workers, total=total, desc=f"copy {name}@{version}")
        carry_assets(src, m, dst.fs, staging, workers=workers)
        return m

    return commit_version(dst, name, version, stage, aliases=[LATEST])  # latest moves only forward


__all__ = ["AccessReport", "ReplicationReport", "ShardAccess", "access_stats", "copy",
           "live_datanodes", "replicate"]
