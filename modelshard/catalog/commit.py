"""Committing a version atomically (push, copy between catalogs, jobs): claim the version
(a lease renewed while the push runs, a whole MapReduce pass for training), write the shards
into a staging folder, check that what was stored is what was written (:func:`check_stored`),
write the manifest last, then under the model's lock publish the folder with one rename and
move ``latest`` (forward only) and the requested aliases, and release the claim.

Until the rename nothing is visible. A push that raises leaves no new version and no moved
alias (an alias that cannot be written undoes the publish). What a killed push leaves
(staging folder, claim) is invisible and removed by ``gc`` once the claim expired; a push
killed between the rename and the alias moves leaves a complete version whose owed aliases
the next holder of the model's lock points first (``Catalog.publish``).
"""

from __future__ import annotations

import contextlib
import posixpath
import time
from collections.abc import Callable, Mapping, Sequence

from modelshard.catalog.catalog import Catalog
from modelshard.catalog.keys import LATEST
from modelshard.catalog.manifest import (
    ASSETS_DIR,
    MANIFEST,
    AssetRecord,
    Manifest,
    PieceRecord,
    ShardRecord,
    TensorRecord,
)
from modelshard.catalog.sources import SourceAsset, SourceTensor
from modelshard.catalog.transfer import Progress, run_all
from modelshard.errors import (
    FormatError,
    IntegrityError,
    ModelShardError,
    StorageError,
    UsageError,
)
from modelshard.fs.base import FileSystem
from modelshard.shards import planner
from modelshard.shards.checksums import CHUNK_BYTES, ChunkWriter, fixed_chunk_ends
from modelshard.shards.format import ShardItem, Written, encode_header, write_shard
from modelshard.shards.planner import Piece, ShardPlan
from modelshard.verified import Stored, read_stream

# HDFS block sizes must be multiples of the checksum chunk and at least
# dfs.namenode.fs-limits.min-block-size (1 MiB by default).
BLOCK_UNIT = 1024 * 1024


def push_tensors(catalog: Catalog, name: str, version: str | None,
                 tensors: Sequence[SourceTensor], *, shard_size: int, workers: int,
                 aliases: Sequence[str] = (), attrs: Mapping[str, str] | None = None,
                 paranoid: bool = False, assets: Sequence[SourceAsset] = ()) -> Manifest:
    """Commit ``tensors`` and ``assets`` as ``name@version`` (None: the next number), point
    ``latest`` and ``aliases`` (already checked) at it, and return its manifest;
    ``paranoid``: see :func:`check_stored`."""
    if not tensors:
        raise UsageError(f"push of {name}: the source holds no tensors")
    plans = planner.plan(tensors, shard_size)
    by_name = {t.name: t for t in tensors}
    fs = catalog.fs

    def stage(version: str, staging: str) -> Manifest:
        def write(plan: ShardPlan, progress: Progress) -> Written:
            items = [ShardItem(p.key, p.dtype, p.shape, _reader(by_name[p.name], p))
                     for p in plan.pieces]
            size = len(encode_header(items)[0]) + plan.nbytes
            with fs.open_write(shard_path(staging, plan.filename),
                               block_size=shard_block_size(size)) as out:
                return write_shard(out, items, progress)

        total = sum(p.nbytes for p in plans)
        written = run_all(write, plans, workers=workers, total=total, desc=f"push {name}")
        stored = store_assets(fs, staging, assets, workers=workers, paranoid=paranoid)
        return staged_manifest(catalog, name, version, staging, plans, written,
                               shard_size=shard_size, workers=workers, attrs=attrs,
                               paranoid=paranoid, assets=stored)

    return commit_version(catalog, name, version, stage, aliases=(LATEST, *aliases))


def shard_path(staging: str, filename: str) -> str:
    """Where a shard of a staged version is written."""
    return posixpath.join(staging, "shards", filename)


def staged_manifest(catalog: Catalog, name: str, version: str, staging: str,
                    plans: Sequence[ShardPlan], written: Sequence[Written], *, shard_size: int,
                    workers: int, attrs: Mapping[str, str] | None = None,
                    paranoid: bool = False,
                    assets: Mapping[str, AssetRecord] | None = None) -> Manifest:
    """Check the shards written into ``staging`` (by this process or by job tasks) in storage
    (:func:`check_stored`) and return the manifest of the version they make, with ``assets``
    (stored and checked already: :func:`store_assets`, :func:`carry_assets`); for
    ``commit_version``'s ``stage`` callback."""
    def check(pair: tuple[ShardPlan, Written], progress: Progress) -> None:
        plan, w = pair
        check_stored(catalog.fs, shard_path(staging, plan.filename), w, paranoid=paranoid)
        progress(w.size)

    run_all(check, list(zip(plans, written, strict=True)), workers=workers,
            total=sum(w.size for w in written), desc="verify")
    return _manifest(name, version, shard_size, plans, written, dict(attrs or {}),
                     dict(assets or {}))


def shard_block_size(size: int) -> int:
    """The HDFS block size for a shard of ``size`` bytes: one block per shard, so a reader of
    the shard needs a single DataNode."""
    return -(-size // BLOCK_UNIT) * BLOCK_UNIT


def commit_version(catalog: Catalog, name: str, version: str | None,
                   stage: Callable[[str, str], Manifest], *, aliases: Sequence[str]) -> Manifest:
    """The atomic commit shared by push and copy: claim ``version`` (None: the next number),
    let ``stage(version, staging_dir)`` write and check the shards and return the manifest,
    write the manifest last, publish with one rename, release the claim, then point
    ``aliases`` at the version. On any error nothing becomes visible.

    >>> commit_version(cat, "bert", "3", stage, aliases=["latest"])   # doctest: +SKIP
    """
    catalog.create()
    version, claim = catalog.claim(name, version)
    staging = catalog.new_staging_dir(name, version, claim)
    with claim:  # renewed until the commit ends; released (if still ours) whatever happens
        try:
            manifest = stage(version, staging)
            claim.check()
            catalog.fs.write_bytes(posixpath.join(staging, MANIFEST), manifest.to_json())
            catalog.publish(name, version, staging, claim, aliases)
        except BaseException:
            _abandon(catalog, staging)
            raise
    return manifest


def _abandon(catalog: Catalog, staging: str) -> None:
    """Undo a failed push, best effort: the push's own error is the one to report. A push
    killed before this runs leaves the same for ``gc``."""
    with contextlib.suppress(ModelShardError):
        catalog.fs.delete(staging, recursive=True)


def _reader(tensor: SourceTensor, piece: Piece) -> Callable[[int, int], bytes | memoryview]:
    return lambda offset, n: tensor.read(piece.offset + offset, n)


def check_stored(fs: FileSystem, path: str, written: Stored, *, paranoid: bool = False
                 ) -> None:
    """Check that the shard at ``path`` holds what was written (``written``: its size and
    checksums, computed while writing, or its manifest record), without reading it back where the storage can say:

    * HDFS: its ``COMPOSITE_CRC`` file checksum, which the DataNodes compute from the CRC32C
      they keep of every 512-byte chunk, equals the CRC32C of the whole file: one call;
    * a local disk: the file is flushed to disk (fsync); reading it back now would only read
      the page cache that the write just filled, so it proves nothing more;
    * any other storage: read back and checked by its CRC32C chunks.

    ``paranoid``: read back and check the sha256 and every chunk anyway. IntegrityError if
    the storage holds something else: the commit is abandoned.

    >>> check_stored(fs, "/cat/models/m/.staging/1-ab/shards/x.safetensors", w)  # doctest: +SKIP
    """
    uri = fs.uri(path)
    what = f"{uri}: the storage holds other bytes than were written"
    if not paranoid:
        stored = fs.stored_crc32c(path)
        if stored is not None:
            size = fs.stat(path).size
            if (size, stored) != (written.size, written.checksums.crc32c):
                raise IntegrityError(f"{what} ({size} bytes with CRC32C {stored:08x}, wrote "
                                     f"{written.size} with {written.checksums.crc32c:08x}); "
                                     "nothing was committed: push again")
            return
        if fs.sync(path):
            return
    try:
        read_stream(fs, path, written, model=None, full=paranoid)
    except IntegrityError as e:
        raise IntegrityError(f"{what} ({e}); nothing was committed: push again") from e


# -- assets: the model's non-tensor files ------------------------------------------------
def store_assets(fs: FileSystem, staging: str, assets: Sequence[SourceAsset], *, workers: int,
                 paranoid: bool = False) -> dict[str, AssetRecord]:
    """Write each asset into ``staging`` (``assets/<name>``), computing its sha256 and CRC32C
    checksums as it is written, check it as stored (:func:`check_stored`) and return the
    records by name."""
    def one(asset: SourceAsset, progress: Progress) -> AssetRecord:
        crcs, size = ChunkWriter(fixed_chunk_ends(asset.size), sha256=True), 0
        path = posixpath.join(staging, ASSETS_DIR, asset.name)
        with asset.fs.open_read(asset.path) as src, fs.open_write(path) as out:
            while data := src.read(CHUNK_BYTES):
                if size + len(data) > asset.size:
                    break
                out.write(data)
                crcs.update(data)
                size += len(data)
                progress(len(data))
        try:
            record = AssetRecord(asset.name, size, crcs.sha256(), crcs.finish())
        except FormatError:
            record = None
        if record is None or asset.fs.stat(asset.path).size != asset.size:
            raise StorageError(f"{asset.fs.uri(asset.path)} changed while it was pushed; push "
                               "again once nothing writes to the folder")
        check_stored(fs, path, record, paranoid=paranoid)
        return record

    records = run_all(one, assets, workers=workers, total=sum(a.size for a in assets),
                      desc="push assets")
    return {r.name: r for r in records}


def carry_assets(source: Catalog, manifest: Manifest, fs: FileSystem, staging: str, *,
                 workers: int) -> dict[str, AssetRecord]:
    """Copy the assets of ``manifest`` (in catalog ``source``) into ``staging`` on ``fs``,
    each checked as it is read and again as stored; a version made from another (reshard,
    training, copy) keeps its config and tokenizer files so."""
    vdir = source.version_dir(manifest.name, manifest.version)
    model = f"{manifest.name}@{manifest.version}"

    def one(asset: AssetRecord, progress: Progress) -> None:
        copy_verified(source.fs, posixpath.join(vdir, asset.path), fs,
                      posixpath.join(staging, asset.path), asset, model, progress)

    assets = list(manifest.assets.values())
    run_all(one, assets, workers=workers, total=sum(a.size for a in assets), desc="copy assets")
    return dict(manifest.assets)


def copy_verified(src_fs: FileSystem, src: str, dst_fs: FileSystem, dst: str, record: Stored,
                  model: str, progress: Progress) -> None:
    """Copy one stored file (shard or asset) byte for byte, checked against its manifest
    record as it is read and again as stored at ``dst``."""
    with dst_fs.open_write(dst, block_size=shard_block_size(record.size) or None) as out:
        read_stream(src_fs, src, record, model=model, sink=out.write, progress=progress)
    if record.checksums is None:  # a manifest from before the CRC32C checksums
        read_stream(dst_fs, dst, record, model=None)
    else:
        check_stored(dst_fs, dst, record)


def _manifest(name: str, version: str, shard_size: int, plans: Sequence[ShardPlan],
              written: Sequence[Written], attrs: dict[str, str],
              assets: dict[str, AssetRecord]) -> Manifest:
    shards, pieces = [], {}
    for plan, w in zip(plans, written, strict=True):
        path = f"shards/{plan.filename}"
        shards.append(ShardRecord(path, w.size, w.sha256, w.checksums))
        for p in plan.pieces:
            pieces.setdefault(p.name, []).append(
                (p, PieceRecord(path, p.key, *w.offsets[p.key], p.rows)))
    tensors = {}
    for tname in sorted(pieces):
        parts = sorted(pieces[tname], key=lambda pr: pr[0].offset)
        first = parts[0][0]
        shape = first.shape if first.rows is None else (
            sum(p.shape[0] for p, _ in parts), *first.shape[1:])
        tensors[tname] = TensorRecord(first.dtype, shape, tuple(r for _, r in parts))
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return Manifest(name, version, created, shard_size, tuple(shards), tensors,
                    export_weight_map(plans), attrs, dict(sorted(assets.items())))


def export_weight_map(plans: Sequence[ShardPlan]) -> dict[str, str]:
    """Where each tensor goes in the folder ``pull`` writes: a shard's whole tensors stay
    together, each split tensor gets a file of its own. Without splits the files are the
    stored shards, copied as they are."""
    groups = [[p.name for p in plan.pieces if p.rows is None] for plan in plans]
    groups = [g for g in groups if g]
    groups += [[n] for n in sorted({p.name for plan in plans for p in plan.pieces if p.rows})]
    return dict(sorted((n, planner.shard_filename(i, len(groups)))
                       for i, g in enumerate(groups) for n in g))
