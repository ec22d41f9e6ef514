"""Online prediction of many models at once under one memory budget: the shared shard pool
(:mod:`.pool`), the model bound to held shards (:mod:`.runner`), the HTTP server
(:mod:`.server`) and its replicas on YARN (:mod:`.yarn`).

>>> from modelshard.serve import ModelPool, Server                  # doctest: +SKIP
>>> server = Server(ModelPool("/tmp/cat", budget_bytes=1 << 30))    # doctest: +SKIP
"""

from __future__ import annotations

from modelshard.serve.pool import ModelPool, TooLargeError, UnavailableError
from modelshard.serve.server import Server, serve

__all__ = ["ModelPool", "Server", "TooLargeError", "UnavailableError", "serve"]
