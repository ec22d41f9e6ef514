"""The catalog: a folder tree on any :class:`~modelshard.fs.base.FileSystem` ::

    <root>/models/<name>/<version>/manifest.json       a committed version (immutable)
    <root>/models/<name>/<version>/checksums.json      CRC32C added to an older manifest
    <root>/models/<name>/<version>/shards/*.safetensors
    <root>/models/<name>/aliases/<alias>/<seq>         alias log: the highest seq wins
    <root>/models/<name>/.claims/<version>             a push in progress owns <version> (a lease)
    <root>/models/<name>/.staging/<version>-<token>/   shards of a push not yet committed
    <root>/models/<name>/.removed/<version>            tombstone: the number is never reused
    <root>/models/<name>/.lock                         the model's lock (a lease)
    <root>/models/<name>/.publishing                   aliases a publish under the lock owes
    <root>/.trash/<name>-<uuid>/                       removed data, being deleted

A version becomes visible by one rename of its complete staging folder, made by the push
that first created its claim file (:meth:`FileSystem.create_exclusive`), so of two pushes of
one version exactly one wins even on HDFS, where a rename onto an existing folder would move
the folder inside it. Aliases cannot be replaced by a rename (renames never overwrite), so
each move adds an entry to the alias's log with an exclusive create: readers see the old or
the new target, never none.
A manifest written before the CRC32C checksums gets them from ``checksums.json``, which
``modelshard verify --upgrade`` adds with one exclusive create (complete or absent; bound
to the manifest's bytes): nothing in a committed version is ever changed.

Everything that changes what a key resolves to (publishing a version with its aliases,
moving or removing an alias, removing a version, gc) runs under the model's lock, a lease
(:mod:`modelshard.catalog.lease`), so a check and the act it justifies cannot interleave
with another: an alias never points at a removed version, ``latest`` only moves forward,
and a removed version's number is never given out again. Readers take no lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from modelshard import safejson
from modelshard.catalog.keys import (
    LATEST,
    Key,
    check_alias,
    check_name,
    check_version,
    parse_key,
    version_order,
)
from modelshard.catalog.lease import Lease, default_duration, expired, owner_of
from modelshard.catalog.manifest import (
    CHECKSUMS,
    MANIFEST,
    Manifest,
    add_checksums,
    checksums_json,
)
from modelshard.errors import (
    AlreadyExistsError,
    FormatError,
    ModelShardError,
    NotFoundError,
    StorageError,
    UnreadableError,
    UsageError,
)
from modelshard.fs import FileInfo, get_fs
from modelshard.shards.checksums import Checksums
from modelshard.verified import damaged

ENV = "MODELSHARD_CATALOG"
_RETRIES = 50


def default_uri() -> str:
    """``$MODELSHARD_CATALOG``, else ``~/.modelshard/catalog``."""
    return os.environ.get(ENV) or os.path.expanduser("~/.modelshard/catalog")


def _entry_version(raw: bytes, *, where: str) -> str | None:
    """The version an alias entry names (None: the alias was removed); FormatError if the
    entry is not ``{"version": "<version>" | null, ...}``."""
    doc = safejson.loads(raw, where=where)
    version = doc.get("version", "") if isinstance(doc, dict) else ""
    try:
        return None if version is None else check_version(version)
    except UsageError:
        raise FormatError(f"{where}: not an alias entry; it is damaged (gc keeps it: the "
                          "previous entry holds)") from None


def _is_temporary(path: str) -> bool:
    base = posixpath.basename(path)
    return base.startswith(".") and base.endswith(".tmp")


@dataclass(frozen=True)
class Removed:
    path: str
    reason: str


class Catalog:
    """A catalog at ``uri`` (local path, ``file://`` or ``hdfs://``); None: the default.
    ``lease_seconds``: how long a lock or claim outlives its last renewal (default
    ``$MODELSHARD_LEASE_SECONDS``, else 60)."""

    def __init__(self, uri: str | None = None, *, lease_seconds: float | None = None) -> None:
        uri = uri or default_uri()
        # A relative path becomes absolute here: job tasks run in other working folders.
        self.uri = uri if urlsplit(uri).scheme else os.path.abspath(uri)
        self.fs, self.root = get_fs(self.uri)
        self.lease_seconds = lease_seconds or default_duration()

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

    def _tombstone(self, name: str, version: str) -> str:
        return posixpath.join(self.model_dir(name), ".removed", version)

    def _lock_path(self, name: str) -> str:
        return posixpath.join(self.model_dir(name), ".lock")

    def _intent_path(self, name: str) -> str:
        return posixpath.join(self.model_dir(name), ".publishing")

    def new_staging_dir(self, name: str, version: str, claim: Lease) -> str:
        """The staging folder of the push holding ``claim``: named by its token, so gc can
        tell it from the leftovers of a dead push of the same version."""
        return posixpath.join(self.model_dir(name), ".staging", f"{version}-{claim.token}")

    # -- reading ---------------------------------------------------------------------------
    def require(self) -> None:
        if not self.fs.exists(self.root):
            raise NotFoundError(f"catalog {self.uri} does not exist; check --catalog or "
                                f"${ENV}, or push a model to create it")

    def create(self) -> None:
        """Make the catalog's folders if they do not exist yet (the first push does)."""
        self.fs.mkdirs(posixpath.join(self.root, "models"))

    def _model_dirs(self) -> list[str]:
        return [posixpath.basename(i.path) for i in self._ls(posixpath.join(self.root, "models"))
                if i.is_dir and not posixpath.basename(i.path).startswith(".")]

    def models(self) -> list[str]:
        """Models with at least one committed version (a removed model keeps its folder of
        tombstones, so its numbers are not reused)."""
        self.require()
        return [name for name in self._model_dirs() if self.versions(name)]

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
        except UnreadableError as e:
            raise damaged(f"{name}@{version}", self.fs.uri(path), e.what, part="manifest") from e
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
            if not self.versions(key.name):
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
        for attempt in range(_RETRIES):
            log = self._alias_log(name, alias)
            if not log and attempt < 3 and self.fs.exists(self._alias_dir(name, alias)):
                # A move adds its entry before it prunes, so a log is empty only when this
                # listing saw entries pruned meanwhile (a local listing is not atomic), or
                # when an undone move or a crash left the folder empty (gc removes it).
                continue
            try:
                for _, path in reversed(log):
                    try:
                        return _entry_version(self.fs.read_bytes(path), where=self.fs.uri(path))
                    except FormatError:
                        continue  # still being written (or damaged): the previous entry holds
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

    def move_alias(self, name: str, alias: str, ref: str | None) -> str | None:
        """Point ``alias`` at the version that ``ref`` (a version or an alias) means, or
        remove it (None), and return that version. The target is resolved under the model's
        lock, so it cannot be removed in between::

            catalog.move_alias("bert", "prod", "3")
        """
        self.require()
        with self.lock(name) as lock:
            version = self.resolve(Key(name, alias) if ref is None else f"{name}@{ref}")[1]
            target = None if ref is None else version
            lock.check()
            self._write_alias(name, alias, target)
        return target

    def _write_alias(self, name: str, alias: str, version: str | None) -> str:
        """Add an entry pointing ``alias`` at ``version`` (None removes it), atomically for
        readers, and return its path; the caller holds the model's lock."""
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
            return posixpath.join(folder, f"{seq:012d}")
        raise StorageError(f"{name}@{alias}: could not move the alias; too many concurrent moves")

    # -- the model's lock ---------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[Lease]:
        """Hold model ``name``'s lock (a lease renewed while held). A lock whose holder died
        is taken over once it expired; waits at most twice the lease duration::

            with catalog.lock("bert") as lock:
                ...; lock.check(); ...   # check() before each change: still ours
        """
        path = self._lock_path(name)
        deadline = time.monotonic() + 2 * self.lease_seconds + 1
        delay = 0.005
        while True:
            try:
                lease = Lease.create(self.fs, path, duration=self.lease_seconds)
                break
            except AlreadyExistsError:
                self._break_if_expired(path)
            if time.monotonic() > deadline:
                owner = owner_of(self.fs, path)
                raise StorageError(
                    f"model {name!r} is locked by pid {owner.get('pid', '?')} on "
                    f"{owner.get('host', '?')} ({self.fs.uri(path)}); retry, and if that "
                    f"process died, its lock expires {self.lease_seconds:.0f} s after it stopped")
            time.sleep(delay * random.uniform(0.5, 1.5))  # jitter: contenders do not march in step
            delay = min(2 * delay, 0.2)
        with lease:
            self._finish_publish(name)
            yield lease

    def _break_if_expired(self, path: str) -> None:
        """Delete a lock whose lease expired. Of several processes that find it so, the one
        that creates the break marker for its owner's token deletes it, and only if it still
        holds that token: a fresh lock taken meanwhile is never broken."""
        try:
            info = self.fs.stat(path)
        except NotFoundError:
            return  # released meanwhile
        if not expired(info, self.lease_seconds):
            return
        token = owner_of(self.fs, path).get("token", "unreadable")
        try:
            self.fs.create_exclusive(f"{path}.broken-{token}", b"")
        except AlreadyExistsError:
            return
        if owner_of(self.fs, path).get("token", "unreadable") == token:
            self.fs.delete(path)

    # -- claims and publishing -------------------------------------------------------------
    def claim(self, name: str, version: str | None) -> tuple[str, Lease]:
        """Own ``version`` (None: the next number never used) for one push: returns the
        version and its claim, a lease to hold (``with``) while the push runs. Raises
        AlreadyExistsError if the version is committed, removed or claimed by a live push."""
        if version is not None:
            check_version(version)
            lease = self._try_claim(name, version)
            if lease is None:
                raise AlreadyExistsError(
                    f"{name}@{version}: another push of this version is in progress (claim "
                    f"{self.fs.uri(self._claim(name, version))}); if that push died, "
                    f"'modelshard gc' removes its claim {self.lease_seconds:.0f} s after it stopped")
            return version, lease
        for _ in range(_RETRIES):
            taken = self.versions(name) + [posixpath.basename(i.path) for d in (
                self._claims_dir(name), posixpath.join(self.model_dir(name), ".removed"))
                for i in self._ls(d)]
            version = str(1 + max((int(v) for v in taken if v.isdigit()), default=0))
            try:
                if lease := self._try_claim(name, version):
                    return version, lease
            except AlreadyExistsError:
                continue  # committed or removed by a concurrent push or rm since we listed
        raise StorageError(f"model {name!r}: could not number a new version; too many "
                           "concurrent pushes, retry")

    def _check_new(self, name: str, version: str) -> None:
        if self.fs.exists(self.version_dir(name, version)):
            raise AlreadyExistsError(f"{name}@{version} already exists and versions are "
                                     "immutable; push without a version to get the next number")
        if self.fs.exists(self._tombstone(name, version)):
            raise AlreadyExistsError(f"{name}@{version} was removed and version numbers are "
                                     "never reused; push without a version to get the next number")

    def _try_claim(self, name: str, version: str) -> Lease | None:
        self._check_new(name, version)
        try:
            lease = Lease.create(self.fs, self._claim(name, version), duration=self.lease_seconds)
        except AlreadyExistsError:
            return None
        # A push may have committed this version (or an rm removed it) since we looked.
        try:
            self._check_new(name, version)
        except AlreadyExistsError:
            lease.release()
            raise
        return lease

    def publish(self, name: str, version: str, staging: str, claim: Lease,
                aliases: Sequence[str]) -> None:
        """Make the complete ``staging`` folder version ``version`` in one rename and point
        ``aliases`` at it (``latest`` only if it moves forward), all under the model's lock.
        If an alias cannot be written, the new entries are deleted and the version is renamed
        back into ``staging``: the push fails as a whole. The aliases owed are written down
        first (``.publishing``), so if this process is killed after the rename, the next
        holder of the lock points them before anything else (:meth:`_finish_publish`)."""
        target, intent = self.version_dir(name, version), self._intent_path(name)
        with self.lock(name) as lock:
            claim.check()
            lock.check()
            written: list[str] = []
            try:
                self.fs.write_bytes(intent, json.dumps({"version": version, "aliases": list(aliases)}).encode())
                self.fs.rename(staging, target)
                self._point(name, version, aliases, written)
            except BaseException:
                for path in written:  # deleting needs no space: the previous entries hold again
                    with contextlib.suppress(ModelShardError):
                        self.fs.delete(path)
                if self.fs.exists(target):
                    self.fs.rename(target, staging)
                self._forget(intent)
                raise
            self._forget(intent)

    def _point(self, name: str, version: str, aliases: Sequence[str], written: list[str]) -> None:
        """Point ``aliases`` at ``version``, ``latest`` only forward; the entries added go to
        ``written``."""
        for alias in aliases:
            if alias != LATEST or self._moves_forward(name, version):
                written.append(self._write_alias(name, alias, version))

    def _forget(self, intent: str) -> None:
        # An intent that cannot be deleted is finished again by the next lock holder: harmless.
        with contextlib.suppress(ModelShardError):
            self.fs.delete(intent)

    def _finish_publish(self, name: str) -> None:
        """Complete a publish whose process died holding the lock: point the aliases it owed
        at its version if the rename happened; forget it otherwise (an unreadable intent was
        cut short before the rename)."""
        intent = self._intent_path(name)
        try:
            doc = safejson.loads(self.fs.read_bytes(intent), where=self.fs.uri(intent))
            version = check_version(doc["version"])
            aliases = [check_alias(a) for a in doc["aliases"]]
        except NotFoundError:
            return
        except (ModelShardError, KeyError, TypeError):
            aliases = []
        else:
            if not self.fs.exists(self.version_dir(name, version)):
                aliases = []
        if aliases:
            self._point(name, version, aliases, [])
        self._forget(intent)

    def _moves_forward(self, name: str, version: str) -> bool:
        current = self.alias_target(name, LATEST)
        return (current is None or not self.fs.exists(self.version_dir(name, current))
                or version_order(version) > version_order(current))

    # -- removing --------------------------------------------------------------------------
    def _hide(self, path: str, label: str) -> str:
        """Move ``path`` into the trash with one rename (no half-deleted version is ever
        seen) and return where it went; delete that after releasing the lock."""
        trash = posixpath.join(self.root, ".trash", f"{label}-{uuid.uuid4().hex}")
        self.fs.mkdirs(posixpath.dirname(trash))
        self.fs.rename(path, trash)
        return trash

    def _bury(self, name: str, version: str) -> str:
        """Tombstone ``version`` (its number is never given out again) and hide it."""
        with contextlib.suppress(AlreadyExistsError):  # a removal that died half way
            self.fs.create_exclusive(self._tombstone(name, version), b"")
        return self._hide(self.version_dir(name, version), f"{name}-{version}")

    def remove_version(self, name: str, version: str, *, move_aliases_to: str | None = None,
                       drop_aliases: bool = False) -> None:
        """Remove ``name@version``. A version that aliases (other than ``latest``) point at
        is refused unless ``move_aliases_to`` (a version or alias) or ``drop_aliases`` says
        what becomes of them; ``latest`` falls back to the highest remaining version. The
        check and the removal hold the model's lock::

            catalog.remove_version("bert", "1", move_aliases_to="2")
        """
        check_version(version)
        self.require()
        with self.lock(name) as lock:
            self.resolve(Key(name, version))
            held = sorted(a for a, v in self.aliases(name).items() if v == version and a != LATEST)
            new_target = None
            if held and move_aliases_to is not None:
                new_target = self.resolve(f"{name}@{move_aliases_to}")[1]
                if new_target == version:
                    raise UsageError(f"rm {name}@{version}: --move-aliases-to {move_aliases_to} is "
                                     "the version being removed; name another version")
            elif held and not drop_aliases:
                raise UsageError(
                    f"{name}@{version} is the target of alias(es) {', '.join(held)}; move them "
                    f"with --move-aliases-to <version> (move_aliases_to=) or remove them with "
                    f"--drop-aliases (drop_aliases=True), or move one first ('modelshard alias "
                    f"{name}@{held[0]} <version>')")
            lock.check()
            for alias in held:
                self._write_alias(name, alias, new_target)
            if self.alias_target(name, LATEST) == version:
                rest = [v for v in self.versions(name) if v != version]
                self._write_alias(name, LATEST, max(rest, key=version_order, default=None))
            trash = self._bury(name, version)
        self._empty([trash])

    def remove_model(self, name: str) -> None:
        """Remove every version and alias of ``name``; the tombstones stay, so a model pushed
        later under the same name continues the numbering."""
        self.require()
        if not self.versions(name):
            raise NotFoundError(f"model {name!r} is not in catalog {self.uri}; 'modelshard ls' "
                                "lists the models")
        with self.lock(name) as lock:
            lock.check()
            trash = [self._bury(name, v) for v in self.versions(name)]
            aliases = posixpath.join(self.model_dir(name), "aliases")
            if self.fs.exists(aliases):
                trash.append(self._hide(aliases, f"{name}-aliases"))
        self._empty(trash)

    def _empty(self, trash: list[str]) -> None:
        """Delete what a removal hid: it is gone for readers already, so a failure here is not
        the removal's; ``gc`` empties the trash later."""
        for path in trash:
            with contextlib.suppress(ModelShardError):
                self.fs.delete(path, recursive=True)

    # -- garbage ---------------------------------------------------------------------------
    def gc(self, older_than: float, *, dry_run: bool = False) -> list[Removed]:
        """Remove what dead pushes and removals left, model by model under its lock: claims
        whose lease expired (and idle ``older_than`` seconds) and claims of committed
        versions, staging folders no live claim owns (idle ``older_than``), empty alias
        folders and orphaned temporary files, markers of broken locks, and the trash."""
        self.require()
        cutoff = time.time() - older_than
        found = []
        for name in self._model_dirs():
            with contextlib.nullcontext() if dry_run else self.lock(name):
                leftovers = self._leftovers(name, cutoff)
                if not dry_run:
                    self._delete_all(leftovers)
            found += leftovers
        trash = [Removed(i.path, "trash") for i in self._ls(posixpath.join(self.root, ".trash"))]
        if not dry_run:
            self._delete_all(trash)
        return found + trash

    def _delete_all(self, items: list[Removed]) -> None:
        for item in items:
            with contextlib.suppress(NotFoundError):  # a concurrent gc got there first
                self.fs.delete(item.path, recursive=True)

    def _leftovers(self, name: str, cutoff: float) -> list[Removed]:
        found, live = [], {}

        def old(info: FileInfo) -> bool:
            return info.mtime < cutoff and expired(info, self.lease_seconds)

        # What an exclusive create killed half way leaves: its private ".<name>.<hex>.tmp".
        for folder in (self.model_dir(name), self._claims_dir(name),
                       posixpath.join(self.model_dir(name), ".removed")):
            found += [Removed(i.path, "orphaned temporary file") for i in self._ls(folder)
                      if _is_temporary(i.path) and old(i)]
        for info in self._ls(self._claims_dir(name)):
            version = posixpath.basename(info.path)
            if version.startswith("."):
                continue
            if self.fs.exists(self.version_dir(name, version)):
                found.append(Removed(info.path, "claim of a committed version"))
            elif old(info):
                found.append(Removed(info.path, "expired claim"))
            else:
                live[version] = owner_of(self.fs, info.path).get("token")
        for info in self._ls(posixpath.join(self.model_dir(name), ".staging")):
            version, _, token = posixpath.basename(info.path).rpartition("-")
            if live.get(version) != token and self._newest_mtime(info.path) < cutoff:
                found.append(Removed(info.path, "abandoned staging folder"))
        for folder in self._ls(posixpath.join(self.model_dir(name), "aliases")):
            entries = self._ls(folder.path)
            temporary = [Removed(i.path, "orphaned temporary file") for i in entries if _is_temporary(i.path)]
            found += temporary if len(temporary) < len(entries) else [
                Removed(folder.path, "empty alias folder")]
        found += [Removed(i.path, "marker of a broken lock") for i in self._ls(self.model_dir(name))
                  if posixpath.basename(i.path).startswith(".lock.broken-") and expired(i, self.lease_seconds)]
        return found

    def _newest_mtime(self, path: str) -> float:
        try:
            mtimes = [self.fs.stat(path).mtime] + [i.mtime for i in self.fs.walk_files(path)]
        except NotFoundError:
            return time.time()  # vanished meanwhile: committed or cleaned, leave it alone
        return max(mtimes)
