"""Fast checksums of a shard: CRC32C of the whole file and of each chunk.

The whole-shard sha256 stays the shard's content address; these are what a read checks.
Chunk 0 is the header (``[0, data_start)``); then each tensor is a chunk of its own, a
tensor of more than ``CHUNK_BYTES`` cut into chunks of that size from its start. So a read
of whole tensors checks exactly the bytes it needs, and a read of some rows at most
``CHUNK_BYTES`` more at each end. The whole-file CRC32C equals what HDFS reports as a
``COMPOSITE_CRC`` file checksum, so a write is checked without reading it back.

CRC32C was chosen by measurement (``bench/bench_checksums.py``, docs/architecture.md): as
fast as xxh3-128, 2.5x BLAKE3, 7x sha256 here, and the one HDFS already computes.

>>> ends = chunk_ends(data_start=8, spans=[(8, 10), (10, 18)], size=18, chunk_bytes=4)
>>> ends
[8, 10, 14, 18]
>>> w = ChunkWriter(ends); w.update(b"12345678" b"abcdefghij"); c = w.finish()
>>> len(c.chunks), c.chunk_range(2), list(c.chunks_over(9, 12))
(4, (10, 14), [1, 2])
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from crc32c import crc32c

from modelshard.errors import FormatError

CHUNK_BYTES = 1 << 20  # at most this much read beyond the rows asked for, at each end


def chunk_ends(*, data_start: int, spans: Iterable[tuple[int, int]], size: int,
               chunk_bytes: int = CHUNK_BYTES) -> list[int]:
    """Where each chunk ends, for a file of ``size`` bytes whose header ends at
    ``data_start`` and whose tensors lie at ``spans`` (absolute, not overlapping); bytes
    between tensors, if any, are chunks of their own."""
    ends, pos = [data_start], data_start
    for begin, end in sorted(spans):
        if begin > pos:
            ends.append(begin)
        ends += range(begin + chunk_bytes, end, chunk_bytes)
        if end > max(begin, pos):
            ends.append(end)
        pos = max(pos, end)
    if size > pos:
        ends.append(size)
    return ends


def fixed_chunk_ends(size: int, chunk_bytes: int = CHUNK_BYTES) -> list[int]:
    """Where the chunks of a plain file (an asset: no header, no tensors) end: every
    ``chunk_bytes`` from its start; none for an empty file."""
    return [*range(chunk_bytes, size, chunk_bytes), size] if size else []


@dataclass(frozen=True)
class Checksums:
    """CRC32C of a shard: ``crc32c`` of the file, ``chunks[i]`` of chunk i, which ends at
    ``ends[i]`` (and starts where chunk i-1 ends, chunk 0 at 0)."""

    crc32c: int
    ends: tuple[int, ...]
    chunks: tuple[int, ...]

    @property
    def data_start(self) -> int:
        return self.ends[0]

    def chunk_range(self, i: int) -> tuple[int, int]:
        """The file offsets ``(begin, end)`` of chunk ``i``."""
        return (self.ends[i - 1] if i else 0), self.ends[i]

    def chunks_over(self, begin: int, end: int) -> range:
        """The indices of the chunks holding bytes ``begin..end`` (a non-empty range)."""
        return range(bisect.bisect_right(self.ends, begin), bisect.bisect_left(self.ends, end) + 1)

    def to_json(self) -> dict:
        return {"crc32c": f"{self.crc32c:08x}", "chunk_ends": list(self.ends),
                "chunk_crc32c": list(self.chunks)}

    @classmethod
    def from_json(cls, doc: dict, *, size: int) -> Checksums:
        """Parse the fields :meth:`to_json` writes; ValueError if they do not fit ``size``."""
        c = cls(int(_match(_HEX8, doc["crc32c"]), 16), tuple(_count(x) for x in doc["chunk_ends"]),
                tuple(_u32(x) for x in doc["chunk_crc32c"]))
        ok = (len(c.ends) == len(c.chunks) and c.ends[0] >= 8 and c.ends[-1] == size
              and all(a < b for a, b in zip(c.ends, c.ends[1:], strict=False)))
        if not ok:
            raise ValueError(f"the chunk checksums do not cover the shard's {size} bytes")
        return c


    def to_file_json(self) -> dict:
        """A plain file's checksums: its chunk ends follow from its size."""
        return {"crc32c": f"{self.crc32c:08x}", "chunk_crc32c": list(self.chunks)}

    @classmethod
    def from_file_json(cls, doc: dict, *, size: int) -> Checksums:
        """Parse what :meth:`to_file_json` writes; ValueError if it does not fit ``size``."""
        ends = fixed_chunk_ends(size)
        c = cls(int(_match(_HEX8, doc["crc32c"]), 16), tuple(ends),
                tuple(_u32(x) for x in doc["chunk_crc32c"]))
        if len(c.chunks) != len(ends):
            raise ValueError(f"{len(c.chunks)} chunk checksums for a file of {size} bytes, which "
                             f"has {len(ends)} chunks")
        return c


class ChunkWriter:
    """The :class:`Checksums` of bytes streamed through :meth:`update`, in any pieces, for
    chunks ending at ``ends`` (:func:`chunk_ends`; None: no chunks); ``whole=False`` skips
    the whole-file CRC32C (a second pass over every byte) where only the chunks are
    compared; ``sha256=True`` computes the whole-file sha256 in the same pass (the content
    address: :meth:`sha256`). The one place where shard and asset bytes are hashed, written
    (push, reshard) or read (:mod:`modelshard.verified`)."""

    def __init__(self, ends: list[int] | None, *, whole: bool = True,
                 sha256: bool = False) -> None:
        self._ends, self._whole_too = ends, whole and ends is not None
        self._whole = self._crc = self._pos = 0
        self._chunks: list[int] = []
        self._sha = hashlib.sha256() if sha256 else None

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        if self._sha is not None:
            self._sha.update(view)
        if self._ends is None:
            return
        if self._whole_too:
            self._whole = crc32c(view, self._whole)
        while view:
            if len(self._chunks) == len(self._ends):
                raise FormatError(f"more bytes than the {self._ends[-1]} the chunks cover")
            part = view[:self._ends[len(self._chunks)] - self._pos]
            self._crc = crc32c(part, self._crc)
            self._pos += len(part)
            view = view[len(part):]
            if self._pos == self._ends[len(self._chunks)]:
                self._chunks.append(self._crc)
                self._crc = 0

    def finish(self) -> Checksums | None:
        """The chunks' checksums (None without ``ends``); FormatError if they are not all
        complete."""
        if self._ends is None:
            return None
        if len(self._chunks) != len(self._ends):
            raise FormatError(f"{self._pos} bytes, fewer than the {self._ends[-1]} the chunks "
                              "cover")
        return Checksums(self._whole, tuple(self._ends), tuple(self._chunks))

    def sha256(self) -> str:
        """The hex sha256 of the bytes so far (with ``sha256=True``)."""
        return self._sha.hexdigest()


# -- sealing small JSON documents (manifests) --------------------------------------------
_SEAL = re.compile(rb',"sealed_crc32c":"([0-9a-f]{8})"}\s*\Z')


def seal(doc: dict) -> bytes:
    """``doc`` as compact JSON with its own CRC32C as the last key, so that any changed byte
    (a digit of a size, a letter of a checksum) is found when the document is read back."""
    body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return body[:-1] + b',"sealed_crc32c":"%08x"}' % crc32c(body)


def check_seal(raw: bytes, *, where: str, required: bool) -> None:
    """Raise FormatError if ``raw`` is sealed and its seal does not match, or is not sealed
    though ``required``; a document written before seals existed has none."""
    m = _SEAL.search(raw)
    if m is None:
        if required:
            raise FormatError(f"{where}: its checksum (sealed_crc32c) is missing or damaged; "
                              f"{_RESTORE}")
        return
    body = raw[:m.start()] + b"}"
    if f"{crc32c(body):08x}".encode() != m.group(1):
        raise FormatError(f"{where}: its bytes do not match its checksum (sealed_crc32c): "
                          f"the file is damaged; {_RESTORE}")


_RESTORE = ("restore it from a copy of the catalog ('modelshard copy' made one) or push the "
            "model again")
_HEX8 = re.compile(r"[0-9a-f]{8}")


def _match(pattern: re.Pattern, x: object) -> str:
    if not isinstance(x, str) or not pattern.fullmatch(x):
        raise ValueError(f"{x!r} is not a CRC32C in hex")
    return x


def _count(x: object) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or x < 0:
        raise ValueError(f"{x!r} is not a non-negative integer")
    return x


def _u32(x: object) -> int:
    if _count(x) >> 32:
        raise ValueError(f"{x!r} is not a CRC32C")
    return x  # type: ignore[return-value]
