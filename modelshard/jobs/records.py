"""Input records of the training and prediction jobs, one a line.

Two formats, each record carrying an id:

* ``jsonl``: ``{"id": "r1", "x": [0.5, 1.0, ...], "y": 3}`` (``y`` only for training);
* ``csv``: ``id,label,f1,f2,...`` with an empty label for prediction.

A line that cannot be parsed raises :class:`BadRecord` with the reason; the jobs count it
and write it to their side output: it is never silently dropped.

>>> parse_record('{"id": 7, "x": [1, 2], "y": 0}', "jsonl")
(7, array([1., 2.], dtype=float32), 0)
>>> parse_record("a,,1.5,2", "csv")
('a', array([1.5, 2. ], dtype=float32), None)
"""

from __future__ import annotations

import math

import numpy as np
import orjson

from modelshard.errors import UsageError

FORMATS = ("jsonl", "csv")


class BadRecord(ValueError):
    """A malformed input record; ``str()`` is the reason."""


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"unknown record format {fmt!r}; use one of: {', '.join(FORMATS)}")
    return fmt


def json_object(line: str) -> dict:
    """The JSON object of one line; BadRecord if it is not one."""
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise BadRecord(f"not JSON: {e}") from None
    if not isinstance(rec, dict):
        raise BadRecord("not a JSON object")
    return rec


def parse_record(line: str, fmt: str, *, n_features: int | None = None,
                 field: str = "x") -> tuple[object, np.ndarray, int | None]:
    """``(id, features, label or None)`` of one line; ``field``: where JSON lines hold the
    features."""
    if fmt == "jsonl":
        rec = json_object(line)
        rid, x, y = rec.get("id"), rec.get(field), rec.get("y")
    else:
        parts = line.rstrip("\r\n").split(",")
        if len(parts) < 3:
            raise BadRecord(f"{len(parts)} CSV fields; expected id,label,features...")
        rid, y, x = parts[0], parts[1].strip() or None, parts[2:]
    if rid is None or rid == "":
        raise BadRecord("no id")
    try:
        features = np.asarray(x, dtype=np.float32)
    except (ValueError, TypeError):
        raise BadRecord("features are not all numbers") from None
    if features.ndim != 1 or features.size == 0:
        raise BadRecord("features must be a non-empty flat list")
    if n_features is not None and features.size != n_features:
        raise BadRecord(f"{features.size} features; the model takes {n_features}")
    if not np.isfinite(features).all():
        raise BadRecord("features hold NaN or infinity")
    if y is not None:
        try:
            label = float(y)
        except (ValueError, TypeError):
            raise BadRecord(f"label {y!r} is not a number") from None
        if not math.isfinite(label) or label != int(label) or label < 0:
            raise BadRecord(f"label {y!r} is not a class index")
        y = int(label)
    return rid, features, y


def read_labeled(uri: str, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of every record of a file (local or HDFS), for evaluation.
    A bad record is an error here: evaluation data must be clean."""
    from modelshard.fs import get_fs

    fs, path = get_fs(uri)
    xs, ys = [], []
    for n, line in enumerate(fs.read_bytes(path).decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            _, x, y = parse_record(line, check_format(fmt))
        except BadRecord as e:
            raise UsageError(f"{uri} line {n}: {e}") from None
        if y is None:
            raise UsageError(f"{uri} line {n}: no label; evaluation data needs labels")
        xs.append(x)
        ys.append(y)
    if not xs:
        raise UsageError(f"{uri} holds no records")
    return np.stack(xs), np.asarray(ys)
