"""The catalog: a folder tree on any :class:`~modelshard.fs.base.FileSystem` ::

    <root>/models/<name>/<version>/manifest.json       a committed version (immutable)
    <root>/models/<name>/<version>/checksums.json      CRC32C added to an older manifest
    <root>/models/<name>/<version>/shards/*.safetensors
    <root>/models/<name>/aliases/<alias>/<seq>         alias log: the highest seq wins
    <root>/models/<name>/.claims/<version>             a push in progress owns <version>
    <root>/models/<name>/.staging/<version>-<uuid>/    shards of a push not yet committed
    <root>/.trash/<name>-<uuid>/                       removed data, being deleted

A version becomes visible by one rename of its complete staging folder, made by the push
that first created its claim file (:meth:`FileSystem.create_exclusive`), so of two pushes of
one version exactly one wins even on HDFS, where a rename onto an existing folder would move
the folder inside it. Aliases cannot be replaced by a rename (renames never overwrite), so
each move adds an entry to the alias's log with an exclusive create: readers see the old or
the new target, never none, and concurrent moves are ordered (the last one wins).
A manifest written before the CRC32C checksums gets them from ``checksums.json``, which
``modelshard verify --upgrade`` adds with one exclusive create (complete or absent; bound
to the manifest's bytes): nothing in a committed version is ever changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import time
import uuid
from dataclasses import dataclass

from modelshard.catalog.keys import (
    LATEST,
    Key,
    check_alias,
    check_name,
    check_version,
    parse_key,
    version_order,
)
from modelshard.catalog.manifest import (
    CHECKSUMS,
    MANIFEST,
    Manifest,
    add_checksums,
    checksums_json,
)
from modelshard.errors import AlreadyExistsError, NotFoundError, StorageError, UsageError
from modelshard.fs import FileInfo, get_fs
from modelshard.shards.checksums import Checksums

ENV = "MODELSHARD_CATALOG"
_RETRIES = 50


def default_uri() -> str:
    """``$MODELSHARD_CATALOG``, else ``~/.modelshard/catalog``."""
    return os.environ.get(ENV) or os.path.expanduser("~/.modelshard/catalog")


@dataclass(frozen=True)
class Removed:
    path: str
    reason: str


class Catalog:
    """A catalog at ``uri`` (local path, ``file://`` or ``hdfs://``); None: the default."""

    def __init__(self, uri: str | None = None) -> None:
        self.uri = uri or default_uri()
        self.fs, self.root = get_fs(self.uri)

    def __repr__(self) -> str:
        return f"Catalog({self.uri!r})"

    # -- layout ----------------------------------------------------------------------------
    def model_dir(self, name: str) -> str:
        return posixpath.join(self.root, "models", check_name(name))

    def version_dir(self, name: str, version: str) -> str:
        return posixpath.join(self.model_dir(name), check_version(version))

    def _alias_dir(self, name: str, alias: str) -> str:
        return posixpath.join(self.model_dir(name), "aliases", check_alias(alias))

    def _claims_dir(self, name: str) -> str:
        return posixpath.join(self.model_dir(name), ".claims")

    def _claim(self, name: str, version: str) -> str:
        return posixpath.join(self._claims_dir(name), version)

    def new_staging_dir(self, name: str, version: str) -> str:
        return posixpath.join(self.model_dir(name), ".staging", f"{version}-{uuid.uuid4().hex}")

    # -- reading ---------------------------------------------------------------------------
    def require(self) -> None:
        if not self.fs.exists(self.root):
            raise NotFoundError(f"catalog {self.uri} does not exist; check --catalog or "
                                f"${ENV}, or push a model to create it")

    def create(self) -> None:
        """Make the catalog's folders if they do not exist yet (the first push does)."""
        self.fs.mkdirs(posixpath.join(self.root, "models"))

    def models(self) -> list[str]:
        self.require()
        return [posixpath.basename(i.path) for i in self._ls(posixpath.join(self.root, "models"))
                if i.is_dir and not posixpath.basename(i.path).startswith(".")]

    def versions(self, name: str) -> list[str]:
        """Committed versions of ``name``, oldest number first."""
        self.require()
        found = [posixpath.basename(i.path) for i in self._ls(self.model_dir(name)) if i.is_dir]
        return sorted((v for v in found if v[:1].isdigit()), key=version_order)

    def manifest(self, name: str, version: str) -> Manifest:
        path = posixpath.join(self.version_dir(name, version), MANIFEST)
        try:
            raw = self.fs.read_bytes(path)
        except NotFoundError:
            self.require()
            raise NotFoundError(f"{name}@{version} is not in catalog {self.uri}; "
                                f"'modelshard ls {name}' lists its versions") from None
        manifest = Manifest.from_json(raw, where=self.fs.uri(path))
        if manifest.has_checksums:
            return manifest
        extra = posixpath.join(self.version_dir(name, version), CHECKSUMS)
        try:
            return add_checksums(manifest, raw, self.fs.read_bytes(extra),
                                 where=self.fs.uri(extra))
        except NotFoundError:
            return manifest  # not upgraded: reads fall back to the whole-shard sha256

    def add_checksums(self, name: str, version: str, checksums: dict[str, Checksums]) -> bool:
        """Add CRC32C ``checksums`` (by shard path) to a version whose manifest has none;
        False if a concurrent upgrade added them first."""
        folder = self.version_dir(name, version)
        raw = self.fs.read_bytes(posixpath.join(folder, MANIFEST))
        try:
            self.fs.create_exclusive(posixpath.join(folder, CHECKSUMS),
                                     checksums_json(raw, checksums))
        except AlreadyExistsError:
            return False
        return True

    def resolve(self, key: str | Key) -> tuple[str, str]:
        """(name, version) that ``bert``, ``bert@3`` or ``bert@prod`` means now."""
        key = parse_key(key) if isinstance(key, str) else key
        self.require()
        if key.is_version:
            if not self.fs.exists(posixpath.join(self.version_dir(key.name, key.ref), MANIFEST)):
                raise NotFoundError(f"{key} is not in catalog {self.uri}; "
                                    f"'modelshard ls {key.name}' lists its versions")
            return key.name, key.ref
        alias = key.ref or LATEST
        version = self.alias_target(key.name, alias)
        if version is None:
            if not self.fs.exists(self.model_dir(key.name)):
                raise NotFoundError(f"model {key.name!r} is not in catalog {self.uri}; "
                                    "'modelshard ls' lists the models")
            raise NotFoundError(f"{key.name}@{alias}: no such alias; 'modelshard show "
                                f"{key.name}@<version>' or 'modelshard ls {key.name}' helps")
        return key.name, version

    def _ls(self, path: str) -> list[FileInfo]:
        """Entries of ``path``; none if it does not exist. Listing can race with an entry
        being removed (an alias pruned, a version discarded): then list again."""
        for _ in range(_RETRIES):
            try:
                return self.fs.ls(path)
            except NotFoundError:
                if not self.fs.exists(path):
                    return []
        raise StorageError(f"{self.fs.uri(path)}: entries keep vanishing while listed; retry")

    # -- aliases ---------------------------------------------------------------------------
    def _alias_log(self, name: str, alias: str) -> list[tuple[int, str]]:
        """(seq, path) of the alias's entries, oldest first."""
        return sorted((int(posixpath.basename(i.path)), i.path)
                      for i in self._ls(self._alias_dir(name, alias))
                      if posixpath.basename(i.path).isdigit())

    def alias_target(self, name: str, alias: str) -> str | None:
        """The version ``alias`` points at, or None."""
        for _ in range(_RETRIES):
            log = self._alias_log(name, alias)
            if not log and self.fs.exists(self._alias_dir(name, alias)):
                # A move adds its entry before it prunes, so a log is never empty: this
                # listing saw only entries pruned meanwhile (a local listing is not atomic).
                continue
            try:
                for _, path in reversed(log):
                    try:
                        return json.loads(self.fs.read_bytes(path))["version"]
                    except ValueError:
                        continue  # still being written: the previous entry holds
                return None
            except NotFoundError:
                continue  # pruned by a concurrent move: read the log again
        raise StorageError(f"{name}@{alias}: the alias keeps moving; retry")

    def aliases(self, name: str) -> dict[str, str]:
        """Every alias of ``name`` and its version."""
        found = {}
        for info in self._ls(posixpath.join(self.model_dir(name), "aliases")):
            alias = posixpath.basename(info.path)
            target = self.alias_target(name, alias)
            if target is not None:
                found[alias] = target
        return found

    def set_alias(self, name: str, alias: str, version: str | None) -> None:
        """Point ``alias`` at ``version`` (None removes it), atomically for readers."""
        doc = json.dumps({"version": version, "time": time.time()}).encode()
        folder = self._alias_dir(name, alias)
        for _ in range(_RETRIES):
            log = self._alias_log(name, alias)
            seq = log[-1][0] + 1 if log else 1
            try:
                self.fs.create_exclusive(posixpath.join(folder, f"{seq:012d}"), doc)
            except AlreadyExistsError:
                continue  # a concurrent move took this number; ours comes after it
            # Keep the previous entry: a reader may have just listed it. A concurrent move
            # may be pruning the same entries.
            for old_seq, path in log:
                if old_seq < seq - 1:
                    with contextlib.suppress(NotFoundError):
                        self.fs.delete(path)
            return
        raise StorageError(f"{name}@{alias}: could not move the alias; too many concurrent moves")

    # -- claims and publishing -------------------------------------------------------------
    def claim(self, name: str, version: str | None) -> str:
        """Own ``version`` (None: the next free number) for one push, or raise
        AlreadyExistsError if it is committed or another push owns it."""
        if version is not None:
            check_version(version)
            if not self._try_claim(name, version):
                raise AlreadyExistsError(
                    f"{name}@{version}: another push of this version is in progress (claim "
                    f"{self.fs.uri(self._claim(name, version))}); if that push died, "
                    "'modelshard gc' removes its claim once it is older than --older-than")
            return version
        for _ in range(_RETRIES):
            claimed = [posixpath.basename(i.path) for i in self._ls(self._claims_dir(name))]
            taken = self.versions(name) + claimed
            version = str(1 + max((int(v) for v in taken if v.isdigit()), default=0))
            try:
                if self._try_claim(name, version):
                    return version
            except AlreadyExistsError:
                continue  # committed by a concurrent push since we listed
        raise StorageError(f"model {name!r}: could not number a new version; too many "
                           "concurrent pushes, retry")

    def _try_claim(self, name: str, version: str) -> bool:
        if self.fs.exists(self.version_dir(name, version)):
            raise AlreadyExistsError(f"{name}@{version} already exists and versions are "
                                     "immutable; push without a version to get the next number")
        try:
            self.fs.create_exclusive(self._claim(name, version),
                                     json.dumps({"pid": os.getpid(), "time": time.time()}).encode())
        except AlreadyExistsError:
            return False
        # A push may have committed this version and released its claim since we looked.
        if self.fs.exists(self.version_dir(name, version)):
            self.release(name, version)
            raise AlreadyExistsError(f"{name}@{version} already exists and versions are immutable")
        return True

    def release(self, name: str, version: str) -> None:
        self.fs.delete(self._claim(name, version))

    def publish(self, name: str, version: str, staging: str) -> None:
        """Make the complete ``staging`` folder version ``version``, in one rename."""
        self.fs.rename(staging, self.version_dir(name, version))

    # -- removing --------------------------------------------------------------------------
    def _discard(self, path: str, label: str) -> None:
        """Hide ``path`` with one rename, then delete it: no half-deleted version is seen."""
        trash = posixpath.join(self.root, ".trash", f"{label}-{uuid.uuid4().hex}")
        self.fs.mkdirs(posixpath.dirname(trash))
        self.fs.rename(path, trash)
        self.fs.delete(trash, recursive=True)

    def remove_version(self, name: str, version: str) -> None:
        self.resolve(Key(name, check_version(version)))
        held = sorted(a for a, v in self.aliases(name).items() if v == version and a != LATEST)
        if held:
            raise UsageError(f"{name}@{version} is the target of alias(es) {', '.join(held)}; "
                             f"move them ('modelshard alias {name}@{held[0]} <version>') or "
                             f"remove them ('modelshard alias --rm {name}@{held[0]}') first")
        if self.alias_target(name, LATEST) == version:
            rest = [v for v in self.versions(name) if v != version]
            newest = max(rest, default=None,
                         key=lambda v: (self.manifest(name, v).created, version_order(v)))
            self.set_alias(name, LATEST, newest)
        self._discard(self.version_dir(name, version), f"{name}-{version}")

    def remove_model(self, name: str) -> None:
        self.require()
        if not self.fs.exists(self.model_dir(name)):
            raise NotFoundError(f"model {name!r} is not in catalog {self.uri}; 'modelshard ls' "
                                "lists the models")
        self._discard(self.model_dir(name), name)

    def gc(self, older_than: float, *, dry_run: bool = False) -> list[Removed]:
        """Remove what dead pushes and removals left: staging folders and claims untouched for
        ``older_than`` seconds, claims of committed versions, and the trash."""
        self.require()
        cutoff = time.time() - older_than
        found = []
        for name in self.models():
            for info in self._ls(posixpath.join(self.model_dir(name), ".staging")):
                if self._newest_mtime(info.path) < cutoff:
                    found.append(Removed(info.path, "abandoned staging folder"))
            for info in self._ls(self._claims_dir(name)):
                version = posixpath.basename(info.path)
                if self.fs.exists(posixpath.join(self.model_dir(name), version)):
                    found.append(Removed(info.path, "claim of a committed version"))
                elif info.mtime < cutoff:
                    found.append(Removed(info.path, "abandoned claim"))
        found += [Removed(i.path, "trash") for i in self._ls(posixpath.join(self.root, ".trash"))]
        if not dry_run:
            for item in found:
                with contextlib.suppress(NotFoundError):  # a concurrent gc got there first
                    self.fs.delete(item.path, recursive=True)
        return found

    def _newest_mtime(self, path: str) -> float:
        try:
            mtimes = [self.fs.stat(path).mtime] + [i.mtime for i in self.fs.walk_files(path)]
        except NotFoundError:
            return time.time()  # vanished meanwhile: committed or cleaned, leave it alone
        return max(mtimes)
