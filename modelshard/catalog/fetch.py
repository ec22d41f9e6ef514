"""Reading a committed version back: into memory, into a folder that Hugging Face tools load
as it is, or only to check it. Every shard is checked as it is read
(:func:`modelshard.verified.read_stream`: its CRC32C chunks, or its sha256 for a manifest
without them; ``verify`` checks both); a shard whose bytes do not match the manifest raises
IntegrityError and nothing damaged is handed out."""

from __future__ import annotations

import bisect
import json
import posixpath
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from modelshard.catalog.catalog import Catalog
from modelshard.catalog.manifest import INDEX, AssetRecord, Manifest, ShardRecord, TensorRecord
from modelshard.catalog.transfer import Progress, run_all
from modelshard.errors import (
    AlreadyExistsError,
    FormatError,
    IntegrityError,
    NotFoundError,
    UsageError,
)
from modelshard.fs import FileSystem, get_fs
from modelshard.shards.checksums import Checksums, ChunkWriter, chunk_ends
from modelshard.shards.format import ShardItem, read_header, write_shard
from modelshard.verified import fresh_pages, read_stream

if TYPE_CHECKING:
    from modelshard.cache.preload import PreloadCache

FRAMEWORKS = ("numpy", "torch")


# -- into memory ---------------------------------------------------------------------------
def load(catalog: Catalog, manifest: Manifest, *, framework: str, workers: int) -> dict[str, Any]:
    """Every tensor of ``manifest`` as a writable numpy array or torch tensor, split tensors
    reassembled (``manifest`` may leave some of its shards' tensors out, e.g.
    :meth:`~Manifest.without_optimizer_state`).

    Each shard is read once, front to back in large reads, into new buffers that its whole
    tensors then view (no copy; a tensor keeps its buffer alive): one buffer per run of
    adjacent whole tensors, while the pieces of split tensors (or of tensors not aligned to
    their dtype) go straight into their tensor's own buffer, and the bytes of no tensor
    asked for through a scratch buffer. CRC32C is checked on the bytes as they arrive.
    """
    if framework not in FRAMEWORKS:
        raise UsageError(f"framework={framework!r}: choose one of {', '.join(FRAMEWORKS)}")
    vdir = catalog.version_dir(manifest.name, manifest.version)
    # Split or misaligned tensors: (begin, name, position in the tensor, length) per shard;
    # the other tensors' spans, whose runs get one buffer each.
    pieces: dict[str, list[tuple[int, str, int, int]]] = {s.path: [] for s in manifest.shards}
    spans: dict[str, list[tuple[int, int]]] = {s.path: [] for s in manifest.shards}
    for name, t in manifest.tensors.items():
        if t.is_split or t.pieces[0].begin % t.dtype.itemsize:
            pos = 0
            for p in t.pieces:
                pieces[p.shard].append((p.begin, name, pos, p.end - p.begin))
                pos += p.end - p.begin
        else:
            spans[t.pieces[0].shard].append((t.pieces[0].begin, t.pieces[0].end))
    own: dict[str, np.ndarray] = {}
    own_lock = threading.Lock()

    def own_view(name: str) -> memoryview:
        # Allocated by the first shard that needs it, in that shard's worker: new memory
        # costs (docs/benchmarks.md), and the other workers read on meanwhile.
        with own_lock:
            if name not in own:
                own[name] = _fresh(manifest.tensors[name].nbytes)
            return memoryview(own[name])

    runs: dict[str, list[tuple[int, np.ndarray]]] = {}  # per shard: (offset, buffer), sorted

    def read(shard: ShardRecord, progress: Progress) -> None:
        into = [(b, own_view(name)[pos:pos + n]) for b, name, pos, n in pieces[shard.path]]
        # Offset by lo % 8 in a page-aligned buffer: each tensor as aligned as in the file.
        got = [(lo, _fresh(hi - lo + lo % 8)[lo % 8:]) for lo, hi in _runs(spans[shard.path])]
        read_stream(catalog.fs, posixpath.join(vdir, shard.path), shard, model=_key(manifest),
                    into=[*into, *((lo, memoryview(b)) for lo, b in got)], progress=progress)
        runs[shard.path] = got

    run_all(read, manifest.shards, workers=workers, total=_size(manifest.shards),
            desc=f"pull {manifest.name}@{manifest.version}")
    convert = _as_numpy if framework == "numpy" else _as_torch
    out = {}
    for name, t in manifest.tensors.items():
        if name in own:
            out[name] = convert(own[name], t)
            continue
        p = t.pieces[0]
        shard_runs = runs[p.shard]
        lo, buf = shard_runs[bisect.bisect_right(shard_runs, p.begin, key=lambda r: r[0]) - 1]
        out[name] = convert(buf[p.begin - lo:p.end - lo], t)
    return out


def _runs(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The byte ranges ``spans`` joined where they touch (or overlap), in order."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _fresh(size: int) -> np.ndarray:
    """``size`` bytes of new memory; from 1 MiB up, :func:`~modelshard.verified.fresh_pages`
    (not ``np.empty``, whose transparent huge pages cost 5-8 ms per MiB at their first write
    on the development VM, against 1-1.5 ms for base pages: docs/benchmarks.md, issue 9)."""
    if size < 1 << 20:
        return np.empty(size, np.uint8)
    return np.frombuffer(fresh_pages(size), np.uint8)


def _size(shards: Sequence[ShardRecord]) -> int:
    return sum(s.size for s in shards)


def _key(manifest: Manifest) -> str:
    return f"{manifest.name}@{manifest.version}"


def _as_numpy(raw: np.ndarray, t: TensorRecord) -> np.ndarray:
    return raw.view(t.dtype.numpy).reshape(t.shape)


def _as_torch(raw: np.ndarray, t: TensorRecord) -> Any:
    import torch

    if not t.nbytes:  # torch cannot view an empty uint8 tensor as another dtype
        return torch.empty(t.shape, dtype=t.dtype.torch)
    # uint8 first: torch.from_numpy knows no ml_dtypes bfloat16
    return torch.from_numpy(raw).view(t.dtype.torch).reshape(t.shape)


# -- into a folder -------------------------------------------------------------------------
def export(catalog: Catalog, manifest: Manifest, dest: str, *, workers: int, optimizer_state: bool) -> str:
    """Write the version to the new or empty folder ``dest`` as safetensors files plus
    ``model.safetensors.index.json``; the folder appears complete or not at all. Without
    ``optimizer_state``, the files hold the model's tensors only (those of
    :meth:`~Manifest.without_optimizer_state`)."""
    fs, path = get_fs(dest)
    path = path.rstrip("/") or "/"
    existed = fs.exists(path)
    if existed and fs.ls(path):
        raise AlreadyExistsError(f"pull destination {dest} is not empty; give a new or empty "
                                 "folder")
    tmp = f"{path}.partial-{uuid.uuid4().hex}"
    try:
        _export_into(catalog, manifest, manifest if optimizer_state else manifest.without_optimizer_state(),
                     fs, tmp, workers=workers)
        if existed:
            fs.delete(path)
        fs.rename(tmp, path)  # tmp is a sibling: the parent exists
    except BaseException:
        fs.delete(tmp, recursive=True)
        raise
    return fs.uri(path)


def _export_into(catalog: Catalog, manifest: Manifest, kept: Manifest, fs: FileSystem, tmp: str, *,
                 workers: int) -> None:
    """Write the tensors of ``kept`` (``manifest`` or a part of it) into the folder ``tmp``."""
    files: dict[str, list[str]] = {}
    for name, file in kept.weight_map.items():
        files.setdefault(file, []).append(name)
    # A stored shard holding exactly one output file's whole tensors is copied as it is; the
    # others (those holding tensors left out too) are copied aside and their tensors
    # rewritten into the output files.
    pieces: dict[str, list[tuple[str, bool]]] = {s.path: [] for s in kept.shards}
    for name, t in manifest.tensors.items():
        for p in t.pieces:
            if p.shard in pieces:
                pieces[p.shard].append((name, t.is_split))
    copies = {}
    for path, held in pieces.items():
        file = posixpath.basename(path)
        whole = not any(split for _, split in held)
        same = sorted(files.get(file, [])) == sorted(name for name, _ in held)
        copies[path] = posixpath.join(tmp, file if whole and same else f".stored/{file}")

    vdir = catalog.version_dir(manifest.name, manifest.version)
    src_fs = catalog.fs

    def copy(shard: ShardRecord, progress: Progress) -> None:
        with fs.open_write(copies[shard.path]) as out:
            read_stream(src_fs, posixpath.join(vdir, shard.path), shard, model=_key(manifest),
                        sink=out.write, progress=progress)

    desc = f"pull {manifest.name}@{manifest.version}"
    run_all(copy, kept.shards, workers=workers, total=_size(kept.shards), desc=desc)
    rebuild = sorted(f for f in files if posixpath.join(tmp, f) not in copies.values())

    def build(file: str, progress: Progress) -> None:
        names = sorted(files[file], key=lambda n: (-kept.tensors[n].dtype.itemsize, n))
        items = [ShardItem(n, kept.tensors[n].dtype, kept.tensors[n].shape,
                           _piece_reader(fs, copies, kept.tensors[n])) for n in names]
        with fs.open_write(posixpath.join(tmp, file)) as out:
            write_shard(out, items, progress)

    total = sum(kept.tensors[n].nbytes for f in rebuild for n in files[f])
    run_all(build, rebuild, workers=workers, total=total, desc=desc)
    fs.delete(posixpath.join(tmp, ".stored"), recursive=True)

    def asset(a: AssetRecord, progress: Progress) -> None:
        with fs.open_write(posixpath.join(tmp, a.name)) as out:
            read_stream(src_fs, posixpath.join(vdir, a.path), a, model=_key(manifest),
                        sink=out.write, progress=progress)

    assets = list(manifest.assets.values())
    run_all(asset, assets, workers=workers, total=sum(a.size for a in assets), desc=desc)
    fs.write_bytes(posixpath.join(tmp, INDEX), json.dumps(kept.hf_index(), indent=2,
                                                          ensure_ascii=False).encode("utf-8"))


def _piece_reader(fs: FileSystem, copies: dict[str, str], t: TensorRecord
                  ) -> Callable[[int, int], bytes]:
    """Read bytes of a tensor from the verified copies of its pieces' shards; the pieces
    follow each other by rows."""
    def read(offset: int, n: int) -> bytes:
        out, start = [], 0
        for p in t.pieces:
            lo, hi = max(offset, start), min(offset + n, start + p.end - p.begin)
            if lo < hi:
                out.append(fs.read_range(copies[p.shard], p.begin + lo - start, hi - lo))
            start += p.end - p.begin
        return b"".join(out)

    return read


def read_asset(catalog: Catalog, manifest: Manifest, name: str, *,
               cache: PreloadCache | None = None) -> bytes:
    """The bytes of asset ``name`` of the version, checked (its CRC32C chunks); through the
    preload ``cache`` when one is given. NotFoundError names the assets there are."""
    asset = manifest.assets.get(name)
    key = _key(manifest)
    if asset is None:
        have = ", ".join(manifest.assets) or "none"
        raise NotFoundError(f"{key} has no asset {name!r} (its assets: {have}); push the "
                            "model's folder with that file to add it")
    path = posixpath.join(catalog.version_dir(manifest.name, manifest.version), asset.path)
    if cache is not None:
        return cache.read(catalog.fs, path, sha256=asset.sha256, size=asset.size,
                          checksums=asset.checksums, model=key)
    out = bytearray()
    read_stream(catalog.fs, path, asset, model=key, sink=out.extend)
    return bytes(out)


# -- checking ------------------------------------------------------------------------------
def verify(catalog: Catalog, manifest: Manifest, *, workers: int, upgrade: bool = False) -> bool:
    """Recompute every shard's sha256 and CRC32C checksums from storage and check its header
    against the manifest; IntegrityError lists every damaged shard. ``upgrade``: for a
    manifest without CRC32C checksums, compute them in the same pass, once every shard
    proved right by its sha256, and add them to the version
    (:meth:`~modelshard.catalog.catalog.Catalog.add_checksums`); True if they were added."""
    vdir = catalog.version_dir(manifest.name, manifest.version)
    expected = manifest.shard_entries()
    adding = upgrade and not manifest.has_checksums
    found_checksums: dict[str, Checksums] = {}

    def check(shard: ShardRecord, progress: Progress) -> str | None:
        path = posixpath.join(vdir, shard.path)
        uri = catalog.fs.uri(path)
        try:
            crcs = None
            if adding:  # the chunks follow the tensors: the header is needed first
                header = read_header(catalog.fs, path)
                crcs = ChunkWriter(chunk_ends(data_start=header.data_start, size=shard.size,
                                              spans=[(e.begin, e.end)
                                                     for e in header.entries.values()]))
            read_stream(catalog.fs, path, shard, model=None, progress=progress, full=True,
                        sink=crcs.update if crcs else None)
            header = read_header(catalog.fs, path)
        except (NotFoundError, FormatError, IntegrityError) as e:
            return str(e)
        found = {k: (e.dtype.name, e.begin, e.end) for k, e in header.entries.items()}
        if found != expected.get(shard.path, {}):
            return f"{uri}: the header does not list the tensors the manifest places there"
        if crcs:
            found_checksums[shard.path] = crcs.finish()
        return None

    def check_asset(asset: AssetRecord, progress: Progress) -> str | None:
        try:
            read_stream(catalog.fs, posixpath.join(vdir, asset.path), asset, model=None,
                        progress=progress, full=True)
        except (NotFoundError, IntegrityError) as e:
            return str(e)
        return None

    problems = [p for p in run_all(check, manifest.shards, workers=workers,
                                   total=_size(manifest.shards), desc="verify") if p]
    assets = list(manifest.assets.values())
    problems += [p for p in run_all(check_asset, assets, workers=workers,
                                    total=sum(a.size for a in assets), desc="verify") if p]
    if problems:
        files = f"{len(manifest.shards)} shards" + (f" and {len(assets)} assets" if assets else "")
        raise IntegrityError(f"{manifest.name}@{manifest.version}: {len(problems)} of "
                             f"{files} damaged: " + "; ".join(problems)
                             + "; restore them by pushing the model again or copying the "
                             "version from another catalog ('modelshard copy')")
    return adding and catalog.add_checksums(manifest.name, manifest.version, found_checksums)
