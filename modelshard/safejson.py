"""JSON from files anyone with write access made (manifests, safetensors headers): parsed
with limits, so that no input raises anything but a :class:`~modelshard.errors.FormatError`.

Python's parser raises ValueError for integers over 4,300 digits, RecursionError for deep
nesting, and accepts lone surrogates (``"\\ud800"``) that fail later when the text is
encoded. Here nesting is counted before parsing, integers are capped at 40 digits (a byte
offset needs 20), NaN and Infinity are refused, and a lone surrogate is an error.

>>> loads(b'{"a": [1, 2]}', where="x.json")
{'a': [1, 2]}
>>> loads(b'[' * 100, where="x.json")  # FormatError: x.json: not valid JSON (nested 100 ...
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from modelshard.errors import FormatError

MAX_DEPTH = 32
MAX_INT_DIGITS = 40
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects, strings skipped."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        depth += 1 if m.group() in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits; at most {MAX_INT_DIGITS} are allowed")
    return int(text)


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def _check_strings(value: Any) -> None:
    """Raise ValueError for a lone surrogate anywhere (keys included); iterative, depth is
    already bounded."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _LONE_SURROGATE.search(v):
                raise ValueError(f"string {v[:40]!r} holds a lone surrogate, which is not Unicode text")
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def loads(raw: bytes, *, where: str, object_pairs_hook: Callable[[list], Any] | None = None) -> Any:
    """Parse UTF-8 JSON ``raw`` within the limits above; FormatError naming ``where``
    otherwise. ``object_pairs_hook`` may raise FormatError itself (e.g. for duplicates)."""
    try:
        if (depth := _depth(raw)) > MAX_DEPTH:
            raise ValueError(f"nested {depth} levels deep; at most {MAX_DEPTH} are allowed")
        doc = json.loads(raw.decode("utf-8"), parse_int=_int, parse_constant=_constant,
                         object_pairs_hook=object_pairs_hook)
        _check_strings(doc)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError too
        raise FormatError(f"{where}: not valid JSON ({' '.join(str(e).split())[:200]}); "
                          "the file is damaged") from e
    return doc
