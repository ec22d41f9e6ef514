"""modelshard: large ML models on HDFS as checksummed safetensors shards with a versioned
catalog, budgeted loading, and Hadoop Streaming jobs for training, prediction and resharding.
"""

from modelshard.api import alias, gc, ls, pull, push, rm, show, verify
from modelshard.errors import ModelShardError
from modelshard.loading import ModelHandle, load, open, preload

__version__ = "0.1.0"
__all__ = ["ModelHandle", "ModelShardError", "__version__", "alias", "gc", "load", "ls", "open",
           "preload", "pull", "push", "rm", "show", "verify"]
