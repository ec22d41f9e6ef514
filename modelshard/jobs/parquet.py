"""Predictions as Parquet files, for Hive, Spark and pandas readers.

Each prediction task writes one file straight to the output's filesystem, under a hidden
``_parquet`` folder, with two columns: ``id`` (a string: the record's id as given, or its
JSON text for a number) and one named after ``--output`` (``class`` int64; ``scores`` and
``embedding`` fixed-size lists of float32; ``topk`` a fixed-size list of ``{class, score}``;
``tensor`` nested lists of float32; token-level outputs: one list entry per token). The task
reports its file through the job's output, so only the files of committed task attempts are
published: the driver names them ``part-NNNNN.parquet``, removes everything else it made and
writes ``_SUCCESS`` last.

>>> arrow_type("scores", [0.1, 0.9])
FixedSizeListType(fixed_size_list<item: float>[2])
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator
from typing import Any

from modelshard.errors import UsageError
from modelshard.fs.base import FileSystem

FORMATS = ("jsonl", "parquet")
TASK_DIR = "_parquet"  # each task attempt's file, until the driver publishes it
JOB_DIR = "_job"  # the job's own output (bad records and file reports), removed at the end


def check_output_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"--output-format {fmt!r}: give jsonl or parquet")
    return fmt


def arrow_type(kind: str, value: Any) -> Any:
    """The Arrow type of an ``--output kind`` column, from its first value."""
    import pyarrow as pa

    def of(v: Any) -> Any:
        if isinstance(v, list):
            return pa.list_(of(v[0]) if v else pa.float32())
        return pa.int64() if isinstance(v, int) else pa.float32()

    pair = pa.struct([("class", pa.int64()), ("score", pa.float32())])
    flat = isinstance(value, list) and value and not isinstance(value[0], list)
    if kind in ("scores", "embedding") and flat:
        return pa.list_(pa.float32(), len(value))
    if kind == "topk":
        if flat or not value or not isinstance(value[0][0], list):  # [[class, score], ...]
            return pa.list_(pair, len(value))
        return pa.list_(pa.list_(pair, len(value[0])))  # per token
    return of(value)


def _arrow_value(kind: str, value: Any) -> Any:
    if kind != "topk":
        return value
    if value and isinstance(value[0][0], list):
        return [[{"class": c, "score": s} for c, s in token] for token in value]
    return [{"class": c, "score": s} for c, s in value]


def _id_text(rid: object) -> str:
    import orjson

    return rid if isinstance(rid, str) else orjson.dumps(rid).decode()


class ParquetSink:
    """Keeps a task's predictions and writes them as one Parquet file, a row group per batch;
    bad records pass through to the job's output.

    >>> sink = ParquetSink("/tmp/out", kind="class", attempt="attempt_1")  # doctest: +SKIP
    >>> list(sink.take([("a", 3), (None, {"error": "no id", "record": "x"})]))  # doctest: +SKIP
    [(None, {'error': 'no id', 'record': 'x'})]
    >>> sink.close()  # doctest: +SKIP
    (None, {'parquet': '/tmp/out/_parquet/attempt_1.parquet', 'rows': 1})
    """

    def __init__(self, output: str, *, kind: str, attempt: str) -> None:
        from modelshard.fs import get_fs

        self.fs, out = get_fs(output)
        self.path = posixpath.join(out, TASK_DIR, f"{attempt}.parquet")
        self.kind, self.rows = kind, 0
        self._file: Any = None
        self._writer: Any = None

    def take(self, pairs: Iterable[tuple[object, object]]) -> Iterator[tuple[object, object]]:
        ids, values = [], []
        for rid, value in pairs:
            if rid is None:
                yield rid, value
            else:
                ids.append(_id_text(rid))
                values.append(value)
        if ids:
            self._write(ids, values)

    def _write(self, ids: list[str], values: list[Any]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            schema = pa.schema([("id", pa.string()), (self.kind, arrow_type(self.kind, values[0]))])
            self._file = self.fs.open_write(self.path)
            self._writer = pq.ParquetWriter(self._file, schema)
        schema = self._writer.schema
        try:
            column = pa.array([_arrow_value(self.kind, v) for v in values], schema.field(self.kind).type)
            table = pa.table([pa.array(ids, pa.string()), column], schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise UsageError(f"--output-format parquet: a prediction does not fit the column "
                             f"{schema.field(self.kind)} of the first batch ({e}); use "
                             "--output-format jsonl for outputs whose shape varies") from None
        self._writer.write_table(table)
        self.rows += len(ids)

    def close(self) -> tuple[None, dict]:
        """Finish the file; the report line the driver publishes it by."""
        if self._writer is not None:
            self._writer.close()
            self._file.close()
        return None, {"parquet": self.path if self.rows else None, "rows": self.rows}


def publish(fs: FileSystem, out: str, reports: list[dict]) -> list[str]:
    """Name the committed attempts' files ``part-NNNNN.parquet`` in ``out``, remove the
    tasks' and the job's folders (failed attempts' files with them), then write
    ``_SUCCESS``: a reader that waits for it sees every file or none."""
    files = sorted(r["parquet"] for r in reports if r.get("parquet"))
    published = []
    for i, path in enumerate(files):
        dst = posixpath.join(out, f"part-{i:05d}.parquet")
        fs.rename(path, dst)
        published.append(dst)
    _remove_work(fs, out)
    fs.write_bytes(posixpath.join(out, "_SUCCESS"), b"")
    return published


def discard(fs: FileSystem, out: str) -> None:
    """After a failed job: remove the tasks' and the job's folders, and ``out`` if that
    leaves it empty (the driver made it)."""
    _remove_work(fs, out)
    if fs.exists(out) and not fs.ls(out):
        fs.delete(out, recursive=True)


def _remove_work(fs: FileSystem, out: str) -> None:
    for folder in (TASK_DIR, JOB_DIR):
        if fs.exists(posixpath.join(out, folder)):
            fs.delete(posixpath.join(out, folder), recursive=True)
