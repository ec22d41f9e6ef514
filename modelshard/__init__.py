"""modelshard: large ML models on HDFS as checksummed safetensors shards with a versioned
catalog, budgeted loading, and Hadoop Streaming jobs for training, prediction and resharding.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# The public names, imported on first use (PEP 562): the ``modelshard`` command imports
# only what its subcommand needs, so that ``modelshard ls`` starts fast.
_EXPORTS = {
    **dict.fromkeys(("alias", "gc", "ls", "pull", "push", "rm", "show", "verify"), "modelshard.api"),
    "ModelShardError": "modelshard.errors",
    **dict.fromkeys(("ModelHandle", "load", "load_into", "open", "preload", "rank_rows"),
                   "modelshard.loading"),
}
__all__ = ["ModelHandle", "ModelShardError", "__version__", "alias", "gc", "load", "load_into",
           "ls", "open", "preload", "pull", "push", "rank_rows", "rm", "show", "verify"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'modelshard' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
