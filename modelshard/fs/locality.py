"""Is a replica of a file on this machine? HDFS names a block's hosts by the address or name
its DataNode registered with: on a pseudo-distributed cluster that is ``127.0.0.1``, on a
real one the node's name or IP. A file counts as local when every block has a replica on one
of this machine's names.

>>> "127.0.0.1" in host_names()
True
"""

from __future__ import annotations

import contextlib
import functools
import socket

from modelshard.errors import ModelShardError
from modelshard.fs.base import FileSystem


@functools.cache
def host_names() -> frozenset[str]:
    """Every name and address this machine answers to (looked up once per process)."""
    names = {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()}
    for name in list(names):
        with contextlib.suppress(OSError):  # an unresolvable host name still counts by name
            names.update(info[4][0] for info in socket.getaddrinfo(name, None))
    return frozenset(names)


def replica_is_local(fs: FileSystem, path: str) -> bool:
    """True if ``path`` is on this machine's disk or every block has a replica here; a
    NameNode that cannot say counts as remote (placement is only a statistic)."""
    if fs.local_path(path) is not None:
        return True
    with contextlib.suppress(ModelShardError):
        blocks = fs.block_hosts(path)
        return bool(blocks) and all(host_names() & set(b.hosts) for b in blocks)
    return False
