"""The verbs of the model store. Every one takes ``catalog=`` (a URI, a :class:`Catalog` or
None for ``$MODELSHARD_CATALOG`` / ``~/.modelshard/catalog``) and raises only
:class:`~modelshard.errors.ModelShardError` subclasses on purpose.

>>> import numpy as np, modelshard
>>> m = modelshard.push({"w": np.ones((2, 3), np.float32)}, "demo", catalog="/tmp/cat")
>>> modelshard.pull("demo", catalog="/tmp/cat")["w"].shape
(2, 3)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from modelshard.catalog import fetch
from modelshard.catalog.catalog import Catalog, Removed
from modelshard.catalog.commit import push_tensors
from modelshard.catalog.keys import LATEST, check_alias, check_version, parse_key
from modelshard.catalog.manifest import Manifest
from modelshard.catalog.sources import read_source
from modelshard.catalog.transfer import DEFAULT_WORKERS, check_workers
from modelshard.errors import UsageError
from modelshard.shards.planner import DEFAULT_SHARD_SIZE, Spread

DEFAULT_GC_AGE = 24 * 3600.0
SKIPPED_ATTR = "push.skipped"  # JSON list of the source folder's files the version left out


def _catalog(catalog: str | os.PathLike | Catalog | None) -> Catalog:
    return catalog if isinstance(catalog, Catalog) else Catalog(
        os.fspath(catalog) if catalog is not None else None)


@dataclass(frozen=True)
class VersionInfo:
    """One committed version, as ``ls`` lists it."""

    name: str
    version: str
    created: str
    total_size: int
    shards: int
    tensors: int
    aliases: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Report:
    """What ``show`` tells about a version: its summary, shard spread and manifest."""

    info: VersionInfo
    shard_size: int
    spread: Spread
    split_tensors: tuple[str, ...]
    manifest: Manifest

    def to_dict(self) -> dict[str, Any]:
        return {**self.info.to_dict(), "shard_size": self.shard_size,
                "spread": asdict(self.spread), "split_tensors": list(self.split_tensors),
                "assets": [{"name": a.name, "size": a.size, "sha256": a.sha256}
                           for a in self.manifest.assets.values()],
                "attrs": dict(self.manifest.attrs),
                "tensor_list": {n: {"dtype": t.dtype.name, "shape": list(t.shape),
                                    "pieces": len(t.pieces)}
                                for n, t in self.manifest.tensors.items()}}


def _info(cat: Catalog, m: Manifest, aliases: Mapping[str, str]) -> VersionInfo:
    return VersionInfo(m.name, m.version, m.created, m.total_size, len(m.shards),
                       len(m.tensors), tuple(sorted(a for a, v in aliases.items()
                                                    if v == m.version)))


def push(source: Any, key: str, *, catalog: str | Catalog | None = None,
         shard_size: int = DEFAULT_SHARD_SIZE, workers: int = DEFAULT_WORKERS,
         aliases: Sequence[str] = (), attrs: Mapping[str, str] | None = None,
         paranoid: bool = False) -> Manifest:
    """Store ``source`` as a new version of a model and return its manifest.

    ``source``: a dict of numpy arrays / torch tensors, a ``.safetensors`` file, a PyTorch
    state_dict file (``.pt``, ``.pth``, ``.bin``), a Hugging Face model folder or a folder of
    ``.npy`` files. A folder's other files (config, tokenizer, model card...) are stored as
    the version's assets, byte for byte (at most 64 MiB a file, 256 MiB in all); hidden
    files and weights in other formats are skipped and named in ``attrs["push.skipped"]``.
    ``key``: ``name`` (next version number) or ``name@version``. The version appears
    atomically, then ``latest`` and each of ``aliases`` point at it. ``attrs``: string
    metadata kept in the manifest (a training job records its model spec and metrics there).
    Each stored shard is checked without reading it back (HDFS's file checksum; fsync on a
    local disk); ``paranoid=True`` reads every shard back and checks its sha256 too::

        push("bert-base/", "bert", aliases=["prod"])   # -> bert@1, bert@latest, bert@prod
    """
    k = parse_key(key)
    if k.ref is not None and not k.is_version:
        raise UsageError(f"push to {key}: {k.ref!r} is an alias; push to {k.name} and pass "
                         f"aliases=[{k.ref!r}] (--alias {k.ref}) to move it")
    check_workers(workers)
    aliases = [aliases] if isinstance(aliases, str) else list(aliases)
    for alias in aliases:
        check_alias(alias)
    src = read_source(source)
    attrs = dict(attrs or {})
    if src.skipped:  # what the folder held that the version does not: 'show' tells
        attrs[SKIPPED_ATTR] = json.dumps([name for name, _ in src.skipped])
    return push_tensors(_catalog(catalog), k.name, k.ref, src.tensors, shard_size=shard_size,
                        workers=workers, aliases=aliases, attrs=attrs, paranoid=paranoid,
                        assets=src.assets)


def pull(key: str, dest: str | os.PathLike | None = None, *,
         catalog: str | Catalog | None = None, framework: str = "numpy",
         workers: int = DEFAULT_WORKERS, with_optimizer_state: bool = False) -> dict[str, Any] | str:
    """Fetch a version, checking every shard as it is read (its CRC32C chunks; the sha256
    for a version pushed before them).

    With ``dest``: write a new or empty folder of safetensors files plus
    ``model.safetensors.index.json`` (Hugging Face tools load it as is) and return its URI.
    Without: return ``{name: array}`` of writable numpy arrays, or torch tensors with
    ``framework="torch"``; split tensors come back whole. The model's tensors only: a
    trained version's optimizer state (``inner_momentum:*``, ``outer_momentum:*``, which training resumes from)
    comes too only with ``with_optimizer_state=True``::

        weights = pull("bert@prod", framework="torch")
        model.load_state_dict(pull("digits@latest", framework="torch"))   # strict
    """
    cat = _catalog(catalog)
    check_workers(workers)
    manifest = cat.manifest(*cat.resolve(key))
    if dest is None:
        return fetch.load(cat, manifest if with_optimizer_state else manifest.without_optimizer_state(),
                          framework=framework, workers=workers)
    return fetch.export(cat, manifest, os.fspath(dest), workers=workers, optimizer_state=with_optimizer_state)


def ls(name: str | None = None, *, catalog: str | Catalog | None = None) -> list[VersionInfo]:
    """Every committed version of model ``name``, or of all models::

        [v.version for v in ls("bert")]   # ['1', '2']
    """
    cat = _catalog(catalog)
    out = []
    for model in [parse_key(name).name] if name else cat.models():
        aliases = cat.aliases(model)
        out += [_info(cat, cat.manifest(model, v), aliases) for v in cat.versions(model)]
    return out


def show(key: str, *, catalog: str | Catalog | None = None) -> Report:
    """Details of one version, including the spread of its shard sizes::

        show("bert").spread.imbalance   # max shard size / mean, 1.0 is perfect
    """
    cat = _catalog(catalog)
    name, version = cat.resolve(key)
    m = cat.manifest(name, version)
    return Report(_info(cat, m, cat.aliases(name)), m.shard_size,
                  Spread.of([s.size for s in m.shards]),
                  tuple(n for n, t in m.tensors.items() if t.is_split), m)


def verify(key: str, *, catalog: str | Catalog | None = None, workers: int = DEFAULT_WORKERS,
           upgrade: bool = False) -> VersionInfo:
    """Recompute every shard's sha256 and CRC32C checksums from storage and check the
    headers; raise IntegrityError naming each damaged shard. ``upgrade``: a version pushed
    before the CRC32C checksums gets them (in ``checksums.json``; the manifest is never
    changed), so that its reads check exactly the bytes they serve::

        verify("bert@3", upgrade=True)
    """
    cat = _catalog(catalog)
    check_workers(workers)
    name, version = cat.resolve(key)
    m = cat.manifest(name, version)
    fetch.verify(cat, m, workers=workers, upgrade=upgrade)
    return _info(cat, m, cat.aliases(name))


def rm(key: str, *, confirm: bool = False, move_aliases_to: str | int | None = None,
       drop_aliases: bool = False, catalog: str | Catalog | None = None) -> None:
    """Remove ``name@version``, or with a bare ``name`` the whole model; ``confirm=True`` is
    required. A version that a user alias points at is refused unless ``move_aliases_to`` (a
    version or alias) or ``drop_aliases=True`` says what becomes of those aliases; ``latest``
    falls back to the highest remaining version. Numbers of removed versions are never
    given out again::

        rm("bert@1", confirm=True, move_aliases_to=2)
    """
    k = parse_key(key)
    if k.ref is not None and not k.is_version:
        raise UsageError(f"rm {key}: name a version (rm {k.name}@<version>) or the whole "
                         f"model (rm {k.name}), not an alias")
    if confirm is not True:
        raise UsageError(f"rm {key}: removing is permanent; pass confirm=True (--yes)")
    if move_aliases_to is not None and drop_aliases:
        raise UsageError(f"rm {key}: give move_aliases_to (--move-aliases-to) or drop_aliases "
                         "(--drop-aliases), not both")
    cat = _catalog(catalog)
    if k.ref is None:
        cat.remove_model(k.name)
    else:
        target = check_version(move_aliases_to) if isinstance(move_aliases_to, int) else move_aliases_to
        cat.remove_version(k.name, k.ref, move_aliases_to=target, drop_aliases=drop_aliases)


def alias(key: str, target: str | int | None = None, *, remove: bool = False,
          catalog: str | Catalog | None = None) -> str | None:
    """Point ``name@alias`` at ``target`` (a version, or an alias to copy) and return that
    version; without ``target`` return where it points; ``remove=True`` deletes it. Moves are
    atomic: readers see the old or the new version::

        alias("bert@prod", 3)
    """
    k = parse_key(key)
    if k.ref is None or k.is_version:
        raise UsageError(f"alias {key}: give name@alias, e.g. {k.name}@prod")
    cat = _catalog(catalog)
    if remove:
        if target is not None:
            raise UsageError(f"alias {key}: give a target or remove=True, not both")
        return cat.move_alias(k.name, k.ref, None)
    if target is None:
        return cat.resolve(k)[1]
    ref = check_version(target) if isinstance(target, int) else str(target)
    parse_key(f"{k.name}@{ref}")  # a bad target is a UsageError before any lock is taken
    return cat.move_alias(k.name, k.ref, ref)


def gc(*, older_than: float = DEFAULT_GC_AGE, dry_run: bool = False,
       catalog: str | Catalog | None = None) -> list[Removed]:
    """Remove what crashed pushes and removals left behind: claims whose lease expired (a
    live push renews its claim, so its claim and staging folder are kept) and staging
    folders without a live claim, both also idle for ``older_than`` seconds; claims of
    committed versions; empty alias folders and orphaned temporary files; the trash::

        gc(older_than=0)   # safe while pushes run: their claims are live
    """
    if isinstance(older_than, bool) or not isinstance(older_than, int | float) or older_than < 0:
        raise UsageError(f"older_than={older_than!r}: give a number of seconds, at least 0")
    return _catalog(catalog).gc(older_than, dry_run=dry_run)


__all__ = ["LATEST", "Report", "VersionInfo", "alias", "gc", "ls", "pull", "push", "rm",
           "show", "verify"]
