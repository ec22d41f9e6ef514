"""Model keys and the names that become paths."""

from __future__ import annotations

import pytest

from modelshard.catalog.keys import Key, parse_key, version_order
from modelshard.errors import UsageError


@pytest.mark.parametrize("text, key, is_version", [
    ("bert", Key("bert", None), False),
    ("bert@3", Key("bert", "3"), True),
    ("bert@1.2.0", Key("bert", "1.2.0"), True),
    ("bert@prod", Key("bert", "prod"), False),
    ("Llama-2_7b.hf@latest", Key("Llama-2_7b.hf", "latest"), False),
])
def test_parse(text, key, is_version):
    assert parse_key(text) == key
    assert parse_key(text).is_version is is_version
    assert str(parse_key(text)) == text


@pytest.mark.parametrize("text", ["", "@3", "../x", "a/b", ".hidden", "a@", "a@b@c", "a@-x",
                                  "a@3/..", "x" * 129, "a b", 3, None])
def test_bad_keys(text):
    with pytest.raises(UsageError):
        parse_key(text)


def test_version_order():
    assert sorted(["10", "2", "1.10.0", "1.2.0", "1"], key=version_order) == \
        ["1", "1.2.0", "1.10.0", "2", "10"]
