"""The ``modelshard`` command. Subcommands live in modules listed in :data:`COMMAND_MODULES`;
each module has ``register(subparsers, common)``, which adds its subparsers (with
``parents=[common]`` for ``--catalog`` and ``--json``) and sets ``run=`` to a function of the
parsed arguments that returns an :class:`Output`. To add a command, write such a module and
append its name here.

Every error ends as one line on stderr and a non-zero exit: a
:class:`~modelshard.errors.ModelShardError` with its exit code, a bad command line with 2,
anything unexpected with 1 and the advice to rerun with ``--debug`` (or
``MODELSHARD_DEBUG=1``), which prints the traceback too.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelshard import __version__
from modelshard.errors import ModelShardError

DEBUG_ENV = "MODELSHARD_DEBUG"

COMMAND_MODULES: list[str] = ["modelshard.commands.store", "modelshard.commands.loading",
                              "modelshard.commands.jobs", "modelshard.commands.serve"]


@dataclass(frozen=True)
class Output:
    """A command's result: ``data`` is printed as JSON with ``--json``, else ``text``."""

    data: Any
    text: str


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def size_arg(text: str) -> int:
    """``4096``, ``512K``, ``128M``, ``1.5GiB`` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m or float(m[1]) * _UNITS[m[2].lower()] < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 4096, 512K or 128M")
    return int(float(m[1]) * _UNITS[m[2].lower()])


def duration_arg(text: str) -> float:
    """``0``, ``90s``, ``15m``, ``24h``, ``7d`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 0, 15m, 24h or 7d")
    return float(m[1]) * _SECONDS[m[2].lower()]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (usage goes to ``--help``); subcommands'
    parsers are of this class too."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--catalog", metavar="URI", default=argparse.SUPPRESS,
                        help="catalog root (local path or hdfs://...); default "
                             "$MODELSHARD_CATALOG, else ~/.modelshard/catalog")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the result as JSON, for scripts")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help=f"print the traceback of an error (also ${DEBUG_ENV}=1)")
    parser = _Parser(
        prog="modelshard", parents=[common],
        description="Large ML models on HDFS as balanced, checksummed safetensors shards "
                    "with a versioned catalog.")
    parser.add_argument("--version", action="version", version=f"modelshard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub, common)
    return parser


def _fail(command: str, message: str, *, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(f"modelshard {command}: {' '.join(message.split())}", file=sys.stderr)  # exactly one line


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``modelshard`` command line; returns the exit status::

        main(["ls", "--catalog", "/tmp/cat"])
    """
    args = build_parser().parse_args(argv)
    args.catalog = getattr(args, "catalog", None)
    args.json = getattr(args, "json", False)
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        out = args.run(args)
    except ModelShardError as e:
        _fail(args.command, f"error: {e}", debug=debug)
        return e.exit_code
    except KeyboardInterrupt:
        _fail(args.command, "interrupted", debug=debug)
        return 130
    except Exception as e:  # a bug or an error nobody translated: still one line
        _fail(args.command, f"internal error: {type(e).__name__}: {e}"[:2000]
              + "; rerun with --debug for the traceback and report it", debug=debug)
        return 1
    if args.json:
        print(json.dumps(out.data, indent=2, ensure_ascii=False))
    elif out.text:
        print(out.text)
    return 0
