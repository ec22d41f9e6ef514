"""The one root exception of modelshard and its few subclasses.

Every message says what happened, names the thing (file, tensor, key, option) and says what
to do. The CLI prints ``str(error)`` as one line on stderr and exits non-zero.
"""

from __future__ import annotations


class ModelShardError(Exception):
    """Root of every error modelshard raises on purpose."""

    exit_code = 1


class UsageError(ModelShardError):
    """A bad option or argument: fix the call."""

    exit_code = 2


class NotFoundError(ModelShardError):
    """A model, version, alias, tensor, file or folder that does not exist."""


class AlreadyExistsError(ModelShardError):
    """Something that must be new already exists (a committed version, a file)."""


class IntegrityError(ModelShardError):
    """Stored bytes do not match their checksum or their header: the data is damaged."""


class UnreadableError(IntegrityError):
    """The storage itself found stored bytes damaged and serves none of them (HDFS: no
    replica of a block passes HDFS's checksum). ``what`` says what happened without the
    advice, for a caller that names the model, version and shard."""

    def __init__(self, message: str, what: str) -> None:
        super().__init__(message)
        self.what = what


class FormatError(ModelShardError):
    """A file or record is not in the expected format (safetensors header, manifest, record)."""


class StorageError(ModelShardError):
    """The filesystem refused or failed an operation (permission, full disk, lost connection)."""


class JobError(ModelShardError):
    """A Hadoop Streaming / mrjob job failed; the message carries the failing task's error."""
