"""The manifest: everything about one committed version, in ``manifest.json``.

It lists the shards (path, size, sha256, and the CRC32C of the file and of each chunk that
reads check, see :mod:`modelshard.shards.checksums`) and, per tensor, dtype, shape and the pieces that
hold it: the shard, the entry key, the absolute byte range in the shard file (so one range
read fetches exactly that tensor) and, for a tensor split by rows, the row range. It also
carries Hugging Face's ``model.safetensors.index.json`` (``metadata.total_size`` and
``weight_map``) for the folder that ``pull`` writes. Example (one tensor split in two)::

    {"schema_version": 1, "name": "bert", "version": "3", "created": "2025-01-01T00:00:00Z",
     "shard_size": 134217728, "total_size": 48,
     "shards": [{"path": "shards/model-00001-of-00002.safetensors", "size": 152,
                 "sha256": "9f86...", "crc32c": "1a2b3c4d", "chunk_ends": [128, 152],
                 "chunk_crc32c": [3735928559, 12345]}, ...],
     "tensors": {"emb": {"dtype": "F32", "shape": [4, 3], "pieces": [
         {"shard": "shards/model-00001-of-00002.safetensors", "key": "emb[0:2]",
          "begin": 128, "end": 152, "rows": [0, 2]}, ...]}},
     "metadata": {"total_size": 48},
     "weight_map": {"emb": "model-00001-of-00001.safetensors"}, "attrs": {},
     "sealed_crc32c": "0badc0de"}

A version made from a model folder also lists its non-tensor files (config.json, tokenizer
files, model card...) under ``"assets"``: ``{"config.json": {"size", "sha256", "crc32c",
"chunk_crc32c"}}`` (chunks of 1 MiB from the start; the file is ``assets/<name>``); the key is
absent when there are none, and manifests without it load as before.

The last key is the CRC32C of the document before it (:func:`~modelshard.shards.checksums.seal`),
so a changed byte anywhere in the manifest is found when it is read. Manifests written
before the CRC32C checksums have neither: they still load, and their shards are checked by
their sha256 instead (``modelshard verify --upgrade`` adds the checksums,
:func:`Manifest.with_checksums`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from crc32c import crc32c

from modelshard import safejson
from modelshard.catalog.keys import check_name, check_version
from modelshard.errors import FormatError, ModelShardError
from modelshard.shards import dtypes
from modelshard.shards.checksums import Checksums, check_seal, seal
from modelshard.shards.dtypes import DType
from modelshard.shards.format import check_tensor_name, nbytes_of

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
CHECKSUMS = "checksums.json"  # added beside an older manifest by 'modelshard verify --upgrade'
INDEX = "model.safetensors.index.json"
_SHARD_PATH = re.compile(r"shards/[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors")
_SHA256 = re.compile(r"[0-9a-f]{64}")
ASSETS_DIR = "assets"
# An asset name is a relative path whose parts do not start with '.' (no '..', no hidden
# files) and hold no ':' (HDFS refuses it), backslash or control characters.
_ASSET_PART = r"[^/\\\x00-\x1f\x7f:.][^/\\\x00-\x1f\x7f:]{0,254}"
_ASSET_NAME = re.compile(rf"(?:{_ASSET_PART}/){{0,7}}{_ASSET_PART}")


# The optimizers' state that training stores beside each parameter (mr_train, issue 12): the
# splits' averaged SGD momentum and the outer optimizer's momentum. Part of the version, so
# that training resumes exactly, but not of the model. A torch state-dict key never holds
# ':', so no parameter is named like them.
INNER_MOMENTUM = "inner_momentum:"
OUTER_MOMENTUM = "outer_momentum:"


def is_optimizer_state(name: str) -> bool:
    """Whether tensor ``name`` is a training optimizer's state rather than the model's."""
    return name.startswith((INNER_MOMENTUM, OUTER_MOMENTUM))


def check_asset_name(name: object) -> str:
    """A name an asset may have; ValueError otherwise (e.g. one a pulled folder's weights
    use: an asset never replaces a shard file or the index in the folder ``pull`` writes)."""
    if not isinstance(name, str) or not _ASSET_NAME.fullmatch(name):
        raise ValueError(f"asset name {name!r} is not a relative path of plain parts (none "
                         "starting with '.', no ':', backslash or control characters)")
    if name == INDEX or (name.endswith(".safetensors") and "/" not in name):
        raise ValueError(f"asset name {name!r} is the name of a weights file of the pulled folder")
    return name


@dataclass(frozen=True)
class ShardRecord:
    path: str  # relative to the version folder
    size: int
    sha256: str
    checksums: Checksums | None = None  # None: a manifest from before CRC32C checksums


@dataclass(frozen=True)
class AssetRecord:
    """A non-tensor file of the version (config.json, tokenizer files, model card...), stored
    as ``assets/<name>`` and checked like a shard: its sha256 and the CRC32C of the file and
    of each 1 MiB chunk."""

    name: str  # its path in the model's folder, e.g. "config.json" or "1_Pooling/config.json"
    size: int
    sha256: str
    checksums: Checksums

    @property
    def path(self) -> str:  # relative to the version folder
        return f"{ASSETS_DIR}/{self.name}"


@dataclass(frozen=True)
class PieceRecord:
    shard: str
    key: str
    begin: int  # absolute offsets in the shard file
    end: int
    rows: tuple[int, int] | None  # None: the whole tensor


@dataclass(frozen=True)
class TensorRecord:
    dtype: DType
    shape: tuple[int, ...]
    pieces: tuple[PieceRecord, ...]

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.shape, self.dtype)

    @property
    def is_split(self) -> bool:
        return self.pieces[0].rows is not None


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    created: str  # ISO 8601, UTC
    shard_size: int  # the target the planner used
    shards: tuple[ShardRecord, ...]
    tensors: dict[str, TensorRecord]  # sorted by name
    weight_map: dict[str, str]  # tensor -> file name in the folder ``pull`` writes
    # Free-form string metadata of the version, e.g. the model spec and metrics of a
    # training epoch; optional in the file, so schema 1 manifests without it still load.
    attrs: dict[str, str] = field(default_factory=dict)
    # The model's non-tensor files by name; optional in the file (older versions have none).
    assets: dict[str, AssetRecord] = field(default_factory=dict)

    @property
    def total_size(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def shard_entries(self) -> dict[str, dict[str, tuple[str, int, int]]]:
        """Per shard path, what its header must list: ``{key: (dtype, begin, end)}``."""
        out: dict[str, dict[str, tuple[str, int, int]]] = {s.path: {} for s in self.shards}
        for t in self.tensors.values():
            for p in t.pieces:
                out[p.shard][p.key] = (t.dtype.name, p.begin, p.end)
        return out

    def without_optimizer_state(self) -> Manifest:
        """This version as the model alone: the optimizer state's tensors (and any shard
        that holds nothing else) left out; the shards' records are unchanged, so the
        shards still hold the state's bytes. ``self`` if there is none::

            m.without_optimizer_state().tensors   # what load_state_dict() returns
        """
        keep = {n: t for n, t in self.tensors.items() if not is_optimizer_state(n)}
        if len(keep) == len(self.tensors):
            return self
        used = {p.shard for t in keep.values() for p in t.pieces}
        return replace(self, shards=tuple(s for s in self.shards if s.path in used), tensors=keep,
                       weight_map={n: f for n, f in self.weight_map.items() if n in keep})

    def hf_index(self) -> dict[str, Any]:
        """The content of ``model.safetensors.index.json`` for the pulled folder."""
        return {"metadata": {"total_size": self.total_size}, "weight_map": dict(self.weight_map)}

    @property
    def has_checksums(self) -> bool:
        """Whether every shard has its CRC32C checksums (else reads fall back to sha256)."""
        return all(s.checksums is not None for s in self.shards)

    def with_checksums(self, checksums: dict[str, Checksums]) -> Manifest:
        """This manifest with ``checksums`` (by shard path) added to its shards."""
        return replace(self, shards=tuple(replace(s, checksums=checksums[s.path])
                                          for s in self.shards))

    def to_json(self) -> bytes:
        doc = {
            "schema_version": SCHEMA_VERSION, "name": self.name, "version": self.version,
            "created": self.created, "shard_size": self.shard_size,
            "total_size": self.total_size,
            "shards": [{"path": s.path, "size": s.size, "sha256": s.sha256,
                        **(s.checksums.to_json() if s.checksums else {})} for s in self.shards],
            "tensors": {name: {"dtype": t.dtype.name, "shape": list(t.shape), "pieces": [
                {"shard": p.shard, "key": p.key, "begin": p.begin, "end": p.end,
                 "rows": list(p.rows) if p.rows else None} for p in t.pieces]}
                for name, t in self.tensors.items()},
            **self.hf_index(),
            "attrs": self.attrs,
        }
        if self.assets:  # absent otherwise: a version without assets reads as before
            doc["assets"] = {a.name: {"size": a.size, "sha256": a.sha256, **a.checksums.to_file_json()}
                             for a in self.assets.values()}
        return seal(doc)

    @classmethod
    def from_json(cls, raw: bytes, *, where: str) -> Manifest:
        """Parse and check a manifest; FormatError naming ``where`` if anything is off (the
        only error any input raises: a manifest is written by whoever can write the catalog)."""
        doc = safejson.loads(raw, where=where)
        if not isinstance(doc, dict):
            raise FormatError(f"{where}: not a JSON object; the manifest is damaged")
        schema = doc.get("schema_version")
        if schema != SCHEMA_VERSION:
            raise FormatError(f"{where}: manifest schema_version {schema!r} is unknown; this "
                              f"modelshard reads version {SCHEMA_VERSION}: upgrade modelshard")
        # A manifest with CRC32C checksums is sealed; one from before them cannot be checked.
        check_seal(raw, where=where, required=b"crc32c" in raw)
        try:
            return _parse(doc)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise FormatError(f"{where}: malformed manifest ({type(e).__name__}: {e}); "
                              "the file is damaged") from e
        except ModelShardError as e:
            raise FormatError(f"{where}: {e}") from e


def checksums_json(manifest_raw: bytes, checksums: dict[str, Checksums]) -> bytes:
    """The ``checksums.json`` that adds ``checksums`` (by shard path) to the manifest whose
    bytes are ``manifest_raw``; bound to exactly those bytes by their CRC32C."""
    return seal({"manifest_crc32c": f"{crc32c(manifest_raw):08x}",
                 "shards": {path: c.to_json() for path, c in checksums.items()}})


def add_checksums(manifest: Manifest, manifest_raw: bytes, raw: bytes, *, where: str
                  ) -> Manifest:
    """``manifest`` (parsed from ``manifest_raw``) with the checksums of ``checksums.json``
    (``raw``); FormatError if that file is damaged or belongs to another manifest."""
    check_seal(raw, where=where, required=True)
    try:
        doc = json.loads(raw.decode("utf-8"))
        if doc["manifest_crc32c"] != f"{crc32c(manifest_raw):08x}":
            raise ValueError("it belongs to another manifest")
        sizes = {s.path: s.size for s in manifest.shards}
        return manifest.with_checksums({path: Checksums.from_json(doc["shards"][path], size=size)
                                        for path, size in sizes.items()})
    except (UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise FormatError(f"{where}: malformed checksums ({type(e).__name__}: {e}); remove it "
                          "and run 'modelshard verify --upgrade' again") from e


def _count(x: Any) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or x < 0:
        raise ValueError(f"{x!r} is not a non-negative integer")
    return x


def _string(x: Any) -> str:
    if not isinstance(x, str):
        raise ValueError(f"{x!r} is not a string")
    return x


def _rows(x: Any, shape: tuple[int, ...]) -> tuple[int, int] | None:
    """A piece's row range ``[begin, end]`` of a tensor with at least one dimension, or None."""
    if x is None:
        return None
    if not (isinstance(x, list) and len(x) == 2 and shape):
        raise ValueError(f"rows {x!r} is not [begin, end] of a tensor with rows")
    begin, end = _count(x[0]), _count(x[1])
    if begin > end:
        raise ValueError(f"rows {x!r} begin after they end")
    return begin, end


def _match(pattern: re.Pattern, x: Any, what: str) -> str:
    if not isinstance(x, str) or not pattern.fullmatch(x):
        raise ValueError(f"{what} {x!r} is not allowed")
    return x


def _parse(doc: dict) -> Manifest:
    shards = tuple(ShardRecord(_match(_SHARD_PATH, s["path"], "shard path"), _count(s["size"]),
                               _match(_SHA256, s["sha256"], "sha256"),
                               Checksums.from_json(s, size=s["size"]) if "crc32c" in s else None)
                   for s in doc["shards"])
    sizes = {s.path: s.size for s in shards}
    tensors = {}
    for name, t in doc["tensors"].items():
        check_tensor_name(name, where="manifest")
        dtype = dtypes.get(t["dtype"], where=f"tensor {name!r}")
        shape = tuple(_count(d) for d in t["shape"])
        pieces = tuple(PieceRecord(_string(p["shard"]), _string(p["key"]), _count(p["begin"]),
                                   _count(p["end"]), _rows(p["rows"], shape))
                       for p in t["pieces"])
        record = TensorRecord(dtype, shape, pieces)
        _check_pieces(name, record, sizes)
        tensors[name] = record
    weight_map = {k: _match(_FILE_NAME, v, "file name") for k, v in doc["weight_map"].items()}
    if set(weight_map) != set(tensors):
        raise ValueError("weight_map does not name exactly the tensors")
    attrs = doc.get("attrs", {})
    if not isinstance(attrs, dict) or not all(isinstance(v, str) for v in [*attrs, *attrs.values()]):
        raise ValueError("attrs must map strings to strings")
    assets = doc.get("assets", {})
    if not isinstance(assets, dict):
        raise ValueError("assets must map names to records")
    assets = {name: AssetRecord(check_asset_name(name), _count(a["size"]),
                                _match(_SHA256, a["sha256"], "sha256"),
                                Checksums.from_file_json(a, size=a["size"]))
              for name, a in sorted(assets.items())}
    manifest = Manifest(check_name(doc["name"]), check_version(doc["version"]), str(doc["created"]),
                        _count(doc["shard_size"]), shards, tensors, weight_map, attrs, assets)
    if doc["metadata"]["total_size"] != manifest.total_size:
        raise ValueError("metadata.total_size is not the sum of the tensor sizes")
    return manifest


def _check_pieces(name: str, t: TensorRecord, sizes: dict[str, int]) -> None:
    if not t.pieces:
        raise ValueError(f"tensor {name!r} has no pieces")
    row_bytes = t.nbytes // t.shape[0] if t.shape and t.shape[0] else 0
    next_row = 0
    for p in t.pieces:
        if p.shard not in sizes or not p.begin <= p.end <= sizes[p.shard]:
            raise ValueError(f"tensor {name!r}: piece {p.key!r} lies outside its shard")
        want = t.nbytes if p.rows is None else (p.rows[1] - p.rows[0]) * row_bytes
        if p.end - p.begin != want or (p.rows and p.rows[0] != next_row):
            raise ValueError(f"tensor {name!r}: piece {p.key!r} has the wrong bytes or rows")
        next_row = p.rows[1] if p.rows else next_row
    if (len(t.pieces) != 1) if not t.is_split else (next_row != t.shape[0]):
        raise ValueError(f"tensor {name!r}: its pieces do not cover its rows")
