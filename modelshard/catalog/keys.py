"""Model keys: ``name``, ``name@version`` and ``name@alias``.

Names, versions and aliases become folder and file names in the catalog, so each is checked
against a strict pattern first. A version starts with a digit (``3``, ``1.2.0``), an alias
with a letter (``latest``, ``prod``), so ``name@x`` is never ambiguous.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelshard.errors import UsageError

LATEST = "latest"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION = re.compile(r"[0-9][A-Za-z0-9._-]{0,63}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Key:
    name: str
    ref: str | None  # a version, an alias, or None for "the model" / its latest version

    @property
    def is_version(self) -> bool:
        return self.ref is not None and _VERSION.fullmatch(self.ref) is not None

    def __str__(self) -> str:
        return self.name if self.ref is None else f"{self.name}@{self.ref}"


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UsageError(f"model name {name!r}: use letters, digits, '.', '_' and '-', "
                         "starting with a letter or digit (at most 128 characters)")
    return name


def check_version(version: object) -> str:
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise UsageError(f"version {version!r}: a version starts with a digit and holds "
                         "letters, digits, '.', '_' and '-' (e.g. 3 or 1.2.0)")
    return version


def check_alias(alias: object) -> str:
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise UsageError(f"alias {alias!r}: an alias starts with a letter and holds letters, "
                         "digits, '.', '_' and '-' (e.g. prod)")
    return alias


def parse_key(key: object) -> Key:
    """``"bert"``, ``"bert@3"`` or ``"bert@prod"`` as a :class:`Key`; UsageError otherwise."""
    if not isinstance(key, str):
        raise UsageError(f"model key {key!r}: give a string such as 'bert', 'bert@3' or "
                         "'bert@prod'")
    name, at, ref = key.partition("@")
    check_name(name)
    if not at:
        return Key(name, None)
    if ref[:1].isdigit():
        return Key(name, check_version(ref))
    return Key(name, check_alias(ref))


def version_order(version: str) -> tuple:
    """Sort key that puts 2 before 10 and 1.2.0 before 1.10.0."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p)
                 for p in re.split(r"[._-]", version))
