"""The Python that YARN tasks run, shipped as Hadoop users ship one: archives on HDFS named
by their content, localized by each NodeManager's distributed cache once per node (every
later job that names the same file reuses it) and unpacked in the task's working folder.

Two archives, because they change at different speeds:

- the **environment** (``env-<flavour>-<key>.tar``, unpacked as ``./env``): the submitter's
  interpreter (its CPython binary, its ``libpython`` when it is a shared build, its standard
  library without tests, IDLE, Tk and ensurepip) and the installed dependency closure of
  modelshard's requirements, pydoop (the tasks' native HDFS client) and the plugins'
  requirements. Gigabytes with torch's CUDA wheels; its key changes only when a package does.
- the **code** (``code-<key>.tar``, put on ``PYTHONPATH`` by mrjob's ``setup``): modelshard,
  ``mr_tasks`` and every package that registers a ``modelshard.models`` entry point, taken
  from where they are imported, so an editable checkout ships as a wheel install does. A few
  hundred kilobytes; its key changes with every edit.

Archives are never overwritten, so every change of the installed packages leaves the previous
environment on HDFS (gigabytes, times the replication): :func:`prune` removes those that this
Python's jobs no longer name (``modelshard envs prune``). The NodeManagers' localized copies
are YARN's: its localizer deletes unused ones beyond ``yarn.nodemanager.localizer.cache.target-size-mb``.

The packer is this module rather than venv-pack or conda-pack: venv-pack leaves the
interpreter behind (a venv's ``bin/python`` links to the base install) and refuses editable
installs, and conda is not what these machines use. Flavours: ``full`` for train and
predict; ``slim`` without torch and what only torch needs, for resharding (its tasks never
import torch). The archives are plain tar: gzip runs at about 30 MB/s here, minutes over
torch's CUDA libraries, while HDFS and the NodeManagers move the bytes in seconds.

A node needs only what a Hadoop node has: the submitter's OS libraries (glibc, libstdc++,
zlib, OpenSSL; the same distribution release), a JDK (``JAVA_HOME``) and a Hadoop install
(``HADOOP_HOME``, ``HADOOP_CONF_DIR``) whose ``bin/hadoop classpath --glob`` gives pydoop's
libhdfs the node's own jars. ``env/bin/python`` is a launcher that puts the archive's
``lib/`` and ``$JAVA_HOME/lib/server`` on the library path.

>>> env = collect_environment("slim")
>>> "torch" in env.distributions, "numpy" in env.distributions, "modelshard" in env.distributions
(False, True, False)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata as md
import io
import logging
import os
import posixpath
import site
import sys
import sysconfig
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from modelshard.errors import AlreadyExistsError, ModelShardError, UsageError
from modelshard.fs import FileSystem

log = logging.getLogger(__name__)

FLAVOURS = ("full", "slim")
ARCHIVE_ENV_VAR = "MODELSHARD_PYTHON_ARCHIVE"
PLUGIN_GROUP = "modelshard.models"
TASK_PYTHON = "env/bin/python"
_WRITE_BUFFER = 8 << 20
_FORMAT = 2  # what the packer leaves out or adds; part of every environment's key
# Resharding tasks never import torch, and torch alone brings gigabytes of CUDA wheels.
# Resharding moves bytes: neither torch nor transformers (nor what only they need) goes there.
_SLIM_EXCLUDES = frozenset({"torch", "transformers", "tokenizers", "pyarrow"})
_OWN = frozenset({"modelshard"})
_OWN_PACKAGES = ("modelshard", "mr_tasks")
_STDLIB_SKIP = frozenset({"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo",
                          "ensurepip", "lib2to3", "__phello__"})
_LAUNCHER = """#!/bin/sh
# The packed interpreter, with its own libpython and the node's libjvm (for pydoop's libhdfs).
here=$(cd "$(dirname "$0")/.." && pwd)
LD_LIBRARY_PATH="$here/lib${JAVA_HOME:+:$JAVA_HOME/lib/server}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
exec "$here/bin/%s" "$@"
"""


@dataclass
class Archive:
    """What one archive holds: ``files`` maps names in the archive to source paths (listed
    only when needed: the key alone decides whether an archive must be shipped), and
    ``extra`` names to generated contents."""

    name: str
    key: str
    list_files: Callable[[], dict[str, Path]] = field(repr=False)
    extra: dict[str, bytes] = field(default_factory=dict, repr=False)
    distributions: dict[str, str] = field(default_factory=dict)  # canonical name -> version

    @functools.cached_property
    def files(self) -> dict[str, Path]:
        return self.list_files()

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files.values()) + sum(map(len, self.extra.values()))


@dataclass(frozen=True)
class Shipped:
    """An archive on HDFS; ``uploaded`` is 0 bytes when an earlier job shipped it."""

    uri: str
    uploaded: int
    seconds: float


@dataclass(frozen=True)
class TaskEnvironment:
    """The archives a job's tasks run with (``env`` may be the user's own ``--python-archive``)."""

    env: Shipped
    code: Shipped

    def mrjob_args(self) -> list[str]:
        """Unpack the environment as ``./env``, run the tasks with its Python, and put the
        code first on their ``PYTHONPATH`` (mrjob's ``path#/`` unpacks an archive there)."""
        return ["--archives", f"{self.env.uri}#env", "--python-bin", TASK_PYTHON,
                "--setup", f"export PYTHONPATH={self.code.uri}#/${{PYTHONPATH:+:$PYTHONPATH}}"]


@functools.cache
def collect_environment(flavour: str = "full") -> Archive:
    """The interpreter and third-party packages of the ``flavour`` environment (looked up
    once per process: installing packages under a running driver is not supported)."""
    if flavour not in FLAVOURS:
        raise UsageError(f"unknown environment flavour {flavour!r}; use one of: {', '.join(FLAVOURS)}")
    exe, interpreter = _interpreter_files()
    digest = hashlib.sha256(f"{_FORMAT}\0{sys.version}\0".encode())
    _digest_stats(digest, interpreter)
    site_dir = _site_dir()
    dists = _closure(flavour)
    for canon, dist in sorted(dists.items()):
        # pip's RECORD holds every installed file's hash: the key needs no read of gigabytes.
        digest.update(f"{canon}=={dist.version}\0{dist.read_text('RECORD') or ''}".encode())
    launcher = (_LAUNCHER % exe).encode()
    digest.update(launcher)
    key = digest.hexdigest()[:20]

    def list_files() -> dict[str, Path]:
        files = dict(interpreter)
        for dist in dists.values():
            files.update((n, p) for n, p in _dist_files(dist, site_dir) if not _build_only(n))
        return files

    return Archive(f"env-{flavour}-{key}.tar", key, list_files, {"bin/python": launcher},
                   {c: d.version for c, d in dists.items()})


def collect_code() -> Archive:
    """modelshard, ``mr_tasks`` and the plugins, as importable from the archive's root."""
    import modelshard

    top = Path(modelshard.__file__).resolve().parent.parent
    files = {}
    for pkg in _OWN_PACKAGES:
        for path in _walk(top / pkg, skip=lambda d: d.name == "__pycache__"):
            if path.suffix == ".py":
                files[path.relative_to(top).as_posix()] = path
    for dist in _plugins():
        files.update(_dist_files(dist, "."))
    files = {n.removeprefix("./"): p for n, p in files.items()}
    # modelshard's own metadata (its version and entry points), whether it was installed from
    # a wheel or as an editable checkout (whose metadata lies in an egg-info folder).
    extra = {}
    with contextlib.suppress(md.PackageNotFoundError):
        dist = md.distribution("modelshard")
        info = f"modelshard-{dist.version}.dist-info"
        extra = {f"{info}/METADATA": (dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "").encode()}
        if (entry_points := dist.read_text("entry_points.txt")) is not None:
            extra[f"{info}/entry_points.txt"] = entry_points.encode()
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0".encode() + files[name].read_bytes())
    for name in sorted(extra):
        digest.update(f"{name}\0".encode() + extra[name])
    key = digest.hexdigest()[:20]
    return Archive(f"code-{key}.tar", key, lambda: files, extra)


def _interpreter_files() -> tuple[str, dict[str, Path]]:
    """The interpreter binary's name, and its files: binary, shared libpython, stdlib."""
    exe = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    files = {f"bin/{exe.name}": exe}
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        lib = Path(sysconfig.get_config_var("LIBDIR")) / sysconfig.get_config_var("INSTSONAME")
        files[f"lib/{lib.name}"] = lib.resolve()
    stdlib = Path(sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})["stdlib"])
    rel = stdlib.relative_to(sys.base_prefix).as_posix()

    def skip(d: Path) -> bool:
        return d.parent == stdlib and (d.name in _STDLIB_SKIP or d.name.startswith("config-"))

    for path in _walk(stdlib, skip=skip):
        files[f"{rel}/{path.relative_to(stdlib).as_posix()}"] = path
    return exe.name, files


def _site_dir() -> str:
    """Where the packed interpreter looks for packages, relative to its prefix."""
    for d in site.getsitepackages([sys.base_prefix]):
        if d.endswith(("site-packages", "dist-packages")):
            return Path(d).relative_to(sys.base_prefix).as_posix()
    raise ModelShardError(f"cannot tell where the Python in {sys.base_prefix} keeps its packages; "
                          f"pass a ready environment with --python-archive (or ${ARCHIVE_ENV_VAR})")


def _plugins() -> list[md.Distribution]:
    """Installed distributions other than modelshard that register model factories."""
    found = {canonicalize_name(ep.dist.name): ep.dist for ep in md.entry_points(group=PLUGIN_GROUP)
             if ep.dist is not None}
    return [d for c, d in sorted(found.items()) if c not in _OWN]


def _closure(flavour: str) -> dict[str, md.Distribution]:
    """Every installed distribution that modelshard, pydoop and the plugins need, by name."""
    plugins = _plugins()
    excluded = _OWN | {canonicalize_name(d.name) for d in plugins}
    if flavour == "slim":
        excluded |= _SLIM_EXCLUDES
    found: dict[str, md.Distribution] = {}
    extras_seen: dict[str, set[str]] = {}
    todo = [(text, "modelshard") for text in md.requires("modelshard") or ()]
    todo += [(text, d.name) for d in plugins for text in d.requires or ()]
    todo.append(("pydoop", "the tasks' HDFS client"))
    while todo:
        text, needed_by = todo.pop()
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        canon, extras = canonicalize_name(req.name), set(req.extras)
        if canon in excluded or (canon in found and extras <= extras_seen[canon]):
            continue
        try:
            dist = found.get(canon) or md.distribution(req.name)
        except md.PackageNotFoundError:
            hint = "build it with 'make pydoop'" if canon == "pydoop" else f"pip install '{req.name}'"
            raise ModelShardError(f"{req.name}, needed by {needed_by}, is not installed in {sys.prefix}; "
                                  f"{hint}, or pass a ready environment with --python-archive") from None
        found[canon] = dist
        extras_seen.setdefault(canon, set()).update(extras)
        for dep in dist.requires or ():
            dep_req = Requirement(dep)
            if dep_req.marker is None or any(dep_req.marker.evaluate({"extra": e}) for e in {"", *extras}):
                todo.append((f"{dep_req.name}[{','.join(dep_req.extras)}]", dist.name))
    return found


def _dist_files(dist: md.Distribution, site_dir: str) -> Iterator[tuple[str, Path]]:
    """A distribution's installed files under ``site_dir``, with their bytecode (tasks would
    otherwise compile torch at every start); scripts outside site-packages and import hooks
    of editable installs are left out."""
    base = Path(dist.locate_file("")).resolve()
    for f in dist.files or ():
        path = Path(dist.locate_file(f)).resolve()
        if (not path.is_relative_to(base) or path.suffix == ".pth" or f.name.startswith("__editable__")
                or not path.is_file()):
            continue
        yield f"{site_dir}/{path.relative_to(base).as_posix()}", path
        pyc = path.parent / "__pycache__" / f"{path.stem}.{sys.implementation.cache_tag}.pyc"
        if path.suffix == ".py" and pyc.is_file():
            yield f"{site_dir}/{pyc.relative_to(base).as_posix()}", pyc


def _build_only(name: str) -> bool:
    """C/C++ headers (torch's and CUDA's ``include/`` folders: 12,666 of 28,918 files of the
    full environment here) serve compilers, not running tasks; and a NodeManager spends time
    per file it localizes."""
    parts = name.split("/")
    return "include" in parts[:-1] and not name.endswith((".py", ".pyc", ".so"))


def _walk(root: Path, *, skip: Callable[[Path], bool]) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not skip(d / n))
        yield from (d / n for n in sorted(filenames) if (d / n).is_file())


def _digest_stats(digest: hashlib._Hash, files: dict[str, Path]) -> None:
    for name in sorted(files):
        st = files[name].stat()
        digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())


def write_archive(archive: Archive, out: io.RawIOBase | io.BufferedIOBase) -> int:
    """Write ``archive`` as a tar stream to ``out``; returns the bytes written."""
    counted = _Counting(out)
    # Large records: every write goes through libhdfs to a DataNode pipeline.
    with tarfile.open(fileobj=counted, mode="w|", format=tarfile.PAX_FORMAT, bufsize=_WRITE_BUFFER) as tar:
        for name, data in sorted(archive.extra.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(time.time())
            info.mode = 0o755 if name.startswith("bin/") else 0o644
            tar.addfile(info, io.BytesIO(data))
        for name in sorted(archive.files):
            tar.add(archive.files[name], arcname=name, recursive=False)
    return counted.n


class _Counting(io.RawIOBase):
    def __init__(self, out: io.RawIOBase | io.BufferedIOBase) -> None:
        self.out, self.n = out, 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.out.write(b)
        self.n += len(b)
        return len(b)


def ship(archive: Archive, fs: FileSystem, folder: str) -> Shipped:
    """Put ``archive`` in ``folder`` of ``fs`` unless an earlier job did; it appears under
    its name only once complete (written aside, then renamed)::

        ship(collect_code(), fs, "/user/me/.modelshard/envs").uri   # 'hdfs://nn:9000/.../code-<key>.tar'
    """
    start = time.monotonic()
    target = posixpath.join(folder, archive.name)
    if fs.exists(target):
        return Shipped(fs.uri(target), 0, time.monotonic() - start)
    log.info("shipping %s (%.1f MB) to %s", archive.name, archive.size / 1e6, fs.uri(folder))
    tmp = posixpath.join(folder, f".{archive.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with fs.open_write(tmp) as out:
            written = write_archive(archive, out)
        try:
            fs.rename(tmp, target)
        except AlreadyExistsError:  # a concurrent submitter shipped the same archive first
            fs.delete(tmp)
    except BaseException:
        with contextlib.suppress(ModelShardError, OSError):
            fs.delete(tmp)
        raise
    return Shipped(fs.uri(target), written, time.monotonic() - start)


@dataclass(frozen=True)
class StoredArchive:
    """An archive in the environments' folder; ``current``: this Python's jobs name it."""

    path: str
    size: int
    mtime: float
    current: bool


def stored_archives(fs: FileSystem, folder: str) -> list[StoredArchive]:
    """The archives in ``folder`` (shipped ones and half-written ``.NAME.*.tmp`` ones), oldest
    first."""
    if not fs.exists(folder):
        return []
    current = {collect_environment("full").name, collect_environment("slim").name, collect_code().name}
    return sorted((StoredArchive(i.path, i.size, i.mtime, posixpath.basename(i.path) in current)
                   for i in fs.ls(folder) if not i.is_dir), key=lambda a: (a.mtime, a.path))


def prune(fs: FileSystem, folder: str, *, older_than: float, dry_run: bool = False) -> list[StoredArchive]:
    """Remove the archives of ``folder`` that this Python's jobs do not name and that were
    written more than ``older_than`` seconds ago (a job of another Python, or another checkout,
    may still be localizing an archive it shipped lately); returns them::

        prune(fs, "/user/me/.modelshard/envs", older_than=24 * 3600)
    """
    cutoff = time.time() - older_than
    stale = [a for a in stored_archives(fs, folder) if not a.current and a.mtime <= cutoff]
    removed: list[StoredArchive] = []
    for a in [] if dry_run else stale:
        try:
            fs.delete(a.path)
        except (ModelShardError, OSError) as e:
            done = f"; removed before it: {', '.join(posixpath.basename(r.path) for r in removed)}" if removed else ""
            raise ModelShardError(f"could not remove {fs.uri(a.path)}: {e}{done}; run it again") from e
        removed.append(a)
    return stale


def task_environment(flavour: str, fs: FileSystem, folder: str, *, python_archive: str | None = None
                     ) -> TaskEnvironment:
    """Ship (or find) what tasks of a ``flavour`` job need under ``folder`` of ``fs``.
    ``python_archive`` (default ``$MODELSHARD_PYTHON_ARCHIVE``): a ready environment (a tar
    or zip with ``bin/python`` at its root, e.g. from conda-pack) on HDFS to use instead."""
    python_archive = python_archive or os.environ.get(ARCHIVE_ENV_VAR) or None
    if python_archive:
        if not python_archive.startswith("hdfs://"):
            raise UsageError(f"--python-archive {python_archive}: give an hdfs:// URI, so that every "
                             "job reuses the NodeManagers' localized copy; put it there with 'hadoop fs -put'")
        env = Shipped(python_archive, 0, 0.0)
    else:
        env = ship(collect_environment(flavour), fs, folder)
    return TaskEnvironment(env, ship(collect_code(), fs, folder))
