"""The node-local preload cache: remote shards copied to local disk, verified, bounded.

>>> cache = PreloadCache("/tmp/modelshard-cache", max_bytes=1 << 30)
>>> cache.stats().max_bytes
1073741824
"""

from __future__ import annotations

from modelshard.cache.preload import CacheStats, PreloadCache, ShardRef

__all__ = ["CacheStats", "PreloadCache", "ShardRef"]
