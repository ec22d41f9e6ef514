"""A seeded fuzz run against the parsers of data that others write: manifests and
safetensors headers. Any input may be refused, but only with a modelshard error, and what
is accepted can be used (its shard entries listed, its copy written and read back).

100,000 inputs by default (about 20 s on 2 shared cores); a longer run, or another seed::

    MODELSHARD_FUZZ_INPUTS=2000000 MODELSHARD_FUZZ_SEED=7 pytest tests/unit/test_fuzz_parsers.py
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable

import numpy as np
import pytest
from safetensors.numpy import save_file

import modelshard
from modelshard.catalog.manifest import Manifest
from modelshard.errors import ModelShardError
from modelshard.shards import dtypes
from modelshard.shards.format import ShardItem, encode_header, parse_header

INPUTS = int(os.environ.get("MODELSHARD_FUZZ_INPUTS", "100000"))
SEED = int(os.environ.get("MODELSHARD_FUZZ_SEED", "20261128"))

# Tokens that broke the parsers once, or are near a limit.
NASTY = [b"1" * 5000, b"-" + b"9" * 41, b"9" * 40, b"[" * 5000, b"{\"a\":" * 40, b"\"\\ud800\"",
         b"\"\\udc00x\"", b"NaN", b"-Infinity", b"1e999", b"-0", b"[0]", b"[1,0]", b"null", b"{}",
         b"[]", b"\"", b"\\", b"\x00", b"\xff\xfe", b"true", b"1.5", b"\"../x\"", b"[[0,1]]"]
VALUES: list[object] = [None, True, 0, -1, 1, 2**64, 10**39, 1.5, float("inf"), "", "x", "\ud800",
                        "\udfff\ud800", "../../etc", "a\x00b", "F32", "BF16", "U8", [], [0], [0, 1], [1, 0],
                        [0, 1, 2], [[0]], {}, {"a": 1}, {"0": []}, [None], ["x"]]


def mutate(rng: random.Random, base: bytes, doc: object) -> bytes:
    """One input derived from the valid document ``base`` (parsed: ``doc``)."""
    kind = rng.randrange(5)
    if kind == 0:  # flip bytes
        raw = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return bytes(raw)
    if kind == 1:  # truncate
        return base[: rng.randrange(len(base))]
    if kind == 2:  # splice a nasty token in
        at = rng.randrange(len(base))
        return base[:at] + rng.choice(NASTY) + base[at + rng.randrange(3):]
    # Replace (or delete) a value somewhere in the tree: a well-formed but wrong document.
    copy = json.loads(json.dumps(doc))
    node, key = _random_slot(rng, copy)
    if kind == 3 or not isinstance(node, dict):
        node[key] = rng.choice(VALUES)
    else:
        del node[key]
    return json.dumps(copy, allow_nan=True).encode()


def _random_slot(rng: random.Random, doc: object) -> tuple:
    node, key = doc, None
    while True:
        child = node if key is None else node[key]
        if not isinstance(child, dict | list) or not child or (key is not None and rng.random() < 0.3):
            return node, key
        node, key = child, rng.choice(list(child) if isinstance(child, dict) else range(len(child)))


def use_manifest(raw: bytes) -> None:
    m = Manifest.from_json(raw, where="fuzz")
    m.shard_entries()
    assert Manifest.from_json(m.to_json(), where="copy") == m  # what was accepted can be copied


def use_header(raw: bytes) -> None:
    header = parse_header(raw, file_size=8 + len(raw) + 4096, where="fuzz")
    json.dumps(header.metadata, ensure_ascii=False).encode()
    for key in header.entries:
        key.encode()


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> list[tuple[bytes, Callable[[bytes], None]]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    cat = str(tmp / "cat")
    state = {"emb": np.ones((12, 10), np.float32), "b": np.zeros(3, np.int8), "s": np.float32(2)}
    # A model folder: the manifest lists assets too (config, a subfolder's file, an empty one).
    (tmp / "model" / "sub").mkdir(parents=True)
    save_file({k: np.asarray(v) for k, v in state.items()}, str(tmp / "model" / "model.safetensors"))
    for name, data in (("config.json", b"{}"), ("sub/t.txt", b"x" * 3000), ("empty", b"")):
        (tmp / "model" / name).write_bytes(data)
    manifest = modelshard.push(str(tmp / "model"), "m", catalog=cat, shard_size=200, attrs={"k": "v"}).to_json()
    items = [ShardItem(name, dtypes.get(dt, where="fuzz"), shape, lambda o, n: b"")
             for name, dt, shape in (("a", "F32", (2, 3)), ("b", "BF16", ()), ("c", "U8", (0, 4)))]
    header = encode_header(items)[0][8:]
    return [(manifest, use_manifest), (header, use_header)]


def test_parsers_raise_only_modelshard_errors(bases):
    rng = random.Random(SEED)
    parsed = [json.loads(base) for base, _ in bases]
    accepted = refused = 0
    escaped: list[str] = []
    for i in range(INPUTS):
        which = i % len(bases)
        base, use = bases[which]
        raw = mutate(rng, base, parsed[which])
        try:
            use(raw)
            accepted += 1
        except ModelShardError as e:
            refused += 1
            assert "\n" not in str(e)
        except Exception as e:  # noqa: BLE001 - what the test looks for
            escaped.append(f"input {i} (seed {SEED}): {type(e).__name__}: {e}: {raw[:300]!r}")
    assert not escaped, f"{len(escaped)} inputs raised other errors, e.g. " + "\n".join(escaped[:5])
    assert accepted + refused == INPUTS and refused > INPUTS // 2 and accepted > 0
