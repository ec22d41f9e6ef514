"""The output protocol of the prediction job."""

from __future__ import annotations

import orjson


class OrjsonProtocol:
    """mrjob's ``JSONProtocol`` (``key<TAB>value``, each JSON) written with orjson: the
    standard json module was the bottleneck of emitting scores and embeddings. Floats are
    written in their shortest form that reads back exactly."""

    def read(self, line: bytes) -> tuple[object, object]:
        key, _, value = line.partition(b"\t")
        return orjson.loads(key), orjson.loads(value)

    def write(self, key: object, value: object) -> bytes:
        return orjson.dumps(key) + b"\t" + orjson.dumps(value)
