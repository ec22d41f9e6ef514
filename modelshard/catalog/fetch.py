"""Reading a committed version back: into memory, into a folder that Hugging Face tools load
as it is, or only to check it. Every shard is hashed as it is read; a shard whose bytes do
not match the manifest raises IntegrityError and nothing damaged is handed out."""

from __future__ import annotations

import hashlib
import json
import posixpath
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from modelshard.catalog.catalog import Catalog
from modelshard.catalog.manifest import INDEX, Manifest, ShardRecord, TensorRecord
from modelshard.catalog.transfer import Progress, run_all
from modelshard.errors import (
    AlreadyExistsError,
    FormatError,
    IntegrityError,
    NotFoundError,
    UsageError,
)
from modelshard.fs import FileSystem, get_fs
from modelshard.shards.format import CHUNK, ShardItem, read_header, sha256_of, write_shard

FRAMEWORKS = ("numpy", "torch")


def _mismatch(uri: str, shard: ShardRecord, size: int, sha: str) -> IntegrityError:
    return IntegrityError(f"{uri}: {size} bytes with sha256 {sha} where the manifest says "
                          f"{shard.size} bytes with {shard.sha256}; the shard is damaged or "
                          "truncated: restore it or push the model again")


def _read_checked(fs: FileSystem, path: str, shard: ShardRecord, progress: Progress, *,
                  into: Sequence[tuple[int, memoryview]] = (),
                  sink: Callable[[memoryview], object] | None = None) -> None:
    """Read the shard once, front to back, hashing as it goes: the bytes at each ``(offset,
    view)`` of ``into`` go straight into ``view`` (no copy in between), the rest through a
    scratch buffer; every byte also goes to ``sink``. Raise if the file is not the
    manifest's (the views then hold damaged bytes: do not hand them out)."""
    digest, scratch = hashlib.sha256(), memoryview(bytearray(CHUNK))
    segments, pos = [], 0
    for offset, view in sorted(into, key=lambda ov: ov[0]):
        segments += _scratch_pieces(scratch, offset - pos) + [view]
        pos = offset + len(view)
    segments += _scratch_pieces(scratch, shard.size - pos)
    size = 0
    with fs.open_read(path) as f:
        for segment in segments:
            for start in range(0, len(segment), CHUNK):
                part = segment[start:start + CHUNK]
                n = f.readinto(part)
                digest.update(part[:n])
                if sink:
                    sink(part[:n])
                size += n
                progress(n)
                if n < len(part):  # shorter than the manifest says
                    raise _mismatch(fs.uri(path), shard, size, digest.hexdigest())
        while n := f.readinto(scratch):  # longer than the manifest says
            digest.update(scratch[:n])
            size += n
    if (size, digest.hexdigest()) != (shard.size, shard.sha256):
        raise _mismatch(fs.uri(path), shard, size, digest.hexdigest())


def _scratch_pieces(scratch: memoryview, n: int) -> list[memoryview]:
    """Views of ``scratch`` covering ``n`` bytes that go nowhere in particular."""
    return [scratch[:min(len(scratch), n - i)] for i in range(0, n, len(scratch))]


# -- into memory ---------------------------------------------------------------------------
def load(catalog: Catalog, manifest: Manifest, *, framework: str, workers: int) -> dict[str, Any]:
    """Every tensor as a writable numpy array or torch tensor, split tensors reassembled.

    Each tensor gets its own uninitialised buffer and every piece of it is read from HDFS
    straight into its place: no shard buffer, no copy to reassemble a split tensor.
    """
    if framework not in FRAMEWORKS:
        raise UsageError(f"framework={framework!r}: choose one of {', '.join(FRAMEWORKS)}")
    vdir = catalog.version_dir(manifest.name, manifest.version)
    bufs = {name: np.empty(t.nbytes, np.uint8) for name, t in manifest.tensors.items()}
    into: dict[str, list[tuple[int, memoryview]]] = {s.path: [] for s in manifest.shards}
    for name, t in manifest.tensors.items():
        view, pos = memoryview(bufs[name]), 0
        for p in t.pieces:
            into[p.shard].append((p.begin, view[pos:pos + p.end - p.begin]))
            pos += p.end - p.begin

    def read(shard: ShardRecord, progress: Progress) -> None:
        _read_checked(catalog.fs, posixpath.join(vdir, shard.path), shard, progress,
                      into=into[shard.path])

    run_all(read, manifest.shards, workers=workers, total=_size(manifest.shards),
            desc=f"pull {manifest.name}@{manifest.version}")
    convert = _as_numpy if framework == "numpy" else _as_torch
    return {name: convert(bufs[name], t) for name, t in manifest.tensors.items()}


def _size(shards: Sequence[ShardRecord]) -> int:
    return sum(s.size for s in shards)


def _as_numpy(raw: np.ndarray, t: TensorRecord) -> np.ndarray:
    return raw.view(t.dtype.numpy).reshape(t.shape)


def _as_torch(raw: np.ndarray, t: TensorRecord) -> Any:
    import torch

    if not t.nbytes:  # torch cannot view an empty uint8 tensor as another dtype
        return torch.empty(t.shape, dtype=t.dtype.torch)
    # uint8 first: torch.from_numpy knows no ml_dtypes bfloat16
    return torch.from_numpy(raw).view(t.dtype.torch).reshape(t.shape)


# -- into a folder -------------------------------------------------------------------------
def export(catalog: Catalog, manifest: Manifest, dest: str, *, workers: int) -> str:
    """Write the version to the new or empty folder ``dest`` as safetensors files plus
    ``model.safetensors.index.json``; the folder appears complete or not at all."""
    fs, path = get_fs(dest)
    path = path.rstrip("/") or "/"
    existed = fs.exists(path)
    if existed and fs.ls(path):
        raise AlreadyExistsError(f"pull destination {dest} is not empty; give a new or empty "
                                 "folder")
    tmp = f"{path}.partial-{uuid.uuid4().hex}"
    try:
        _export_into(catalog, manifest, fs, tmp, workers=workers)
        if existed:
            fs.delete(path)
        fs.rename(tmp, path)  # tmp is a sibling: the parent exists
    except BaseException:
        fs.delete(tmp, recursive=True)
        raise
    return fs.uri(path)


def _export_into(catalog: Catalog, manifest: Manifest, fs: FileSystem, tmp: str, *,
                 workers: int) -> None:
    files: dict[str, list[str]] = {}
    for name, file in manifest.weight_map.items():
        files.setdefault(file, []).append(name)
    # A stored shard holding exactly one output file's whole tensors is copied as it is; the
    # others are copied aside and their tensors rewritten into the output files.
    pieces: dict[str, list[tuple[str, bool]]] = {s.path: [] for s in manifest.shards}
    for name, t in manifest.tensors.items():
        for p in t.pieces:
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
            _read_checked(src_fs, posixpath.join(vdir, shard.path), shard, progress,
                          sink=out.write)

    desc = f"pull {manifest.name}@{manifest.version}"
    run_all(copy, manifest.shards, workers=workers, total=_size(manifest.shards), desc=desc)
    rebuild = sorted(f for f in files if posixpath.join(tmp, f) not in copies.values())

    def build(file: str, progress: Progress) -> None:
        names = sorted(files[file], key=lambda n: (-manifest.tensors[n].dtype.itemsize, n))
        items = [ShardItem(n, manifest.tensors[n].dtype, manifest.tensors[n].shape,
                           _piece_reader(fs, copies, manifest.tensors[n])) for n in names]
        with fs.open_write(posixpath.join(tmp, file)) as out:
            write_shard(out, items, progress)

    total = sum(manifest.tensors[n].nbytes for f in rebuild for n in files[f])
    run_all(build, rebuild, workers=workers, total=total, desc=desc)
    fs.delete(posixpath.join(tmp, ".stored"), recursive=True)
    fs.write_bytes(posixpath.join(tmp, INDEX), json.dumps(manifest.hf_index(), indent=2,
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


# -- checking ------------------------------------------------------------------------------
def verify(catalog: Catalog, manifest: Manifest, *, workers: int) -> None:
    """Recompute every shard's sha256 from storage and check its header against the manifest;
    IntegrityError lists every damaged shard."""
    vdir = catalog.version_dir(manifest.name, manifest.version)
    expected = manifest.shard_entries()

    def check(shard: ShardRecord, progress: Progress) -> str | None:
        path = posixpath.join(vdir, shard.path)
        uri = catalog.fs.uri(path)
        try:
            size, sha = sha256_of(catalog.fs, path, progress)
            if (size, sha) != (shard.size, shard.sha256):
                return str(_mismatch(uri, shard, size, sha))
            header = read_header(catalog.fs, path)
        except (NotFoundError, FormatError) as e:
            return str(e)
        found = {k: (e.dtype.name, e.begin, e.end) for k, e in header.entries.items()}
        if found != expected.get(shard.path, {}):
            return f"{uri}: the header does not list the tensors the manifest places there"
        return None

    problems = [p for p in run_all(check, manifest.shards, workers=workers,
                                   total=_size(manifest.shards), desc="verify") if p]
    if problems:
        raise IntegrityError(f"{manifest.name}@{manifest.version}: {len(problems)} of "
                             f"{len(manifest.shards)} shards damaged: " + "; ".join(problems))

