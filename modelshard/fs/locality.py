"""Is a replica of a file on this host? HDFS names a block's hosts by the address or name its
DataNode registered with (the node's name or IP; on the bundled cluster each node's own
loopback address, 127.0.0.2 and up). A file counts as local when every block has a replica
on one of this host's names.

>>> "127.0.0.1" in host_names()
True
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import time

from modelshard.errors import ModelShardError
from modelshard.fs.base import FileSystem


def this_host() -> str:
    """The host this process runs on as the cluster names it: inside a YARN container its
    NodeManager's host (``NM_HOST``), else this machine's name."""
    return os.environ.get("NM_HOST") or socket.gethostname()


@functools.cache
def host_names() -> frozenset[str]:
    """Every name and address this host answers to (looked up once per process). Inside a
    YARN container that is its node's (``NM_HOST``), which need not be the machine's own:
    several nodes may share a machine, each with an address of its own."""
    names = ({os.environ["NM_HOST"]} if os.environ.get("NM_HOST")
             else {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()})
    for name in list(names):
        with contextlib.suppress(OSError):  # an unresolvable host name still counts by name
            names.update(info[4][0] for info in socket.getaddrinfo(name, None))
    return frozenset(names)


# A file's block hosts, remembered a while: they change only when HDFS re-replicates or
# balances, and asking the NameNode (a stat and a block lookup) for every shard read was
# half of the NameNode calls of a read. uri -> (when asked, each block's hosts)
_HOSTS_TTL_S = 30.0
_hosts: dict[str, tuple[float, list[frozenset[str]]]] = {}


def replica_is_local(fs: FileSystem, path: str) -> bool:
    """True if ``path`` is on this machine's disk or every block has a replica here; a
    NameNode that cannot say counts as remote (placement is only a statistic). The block
    hosts of a file are asked again after 30 s."""
    if fs.local_path(path) is not None:
        return True
    uri, now = fs.uri(path), time.monotonic()
    known = _hosts.get(uri)
    if known is None or now - known[0] > _HOSTS_TTL_S:
        try:
            known = (now, [frozenset(b.hosts) for b in fs.block_hosts(path)])
        except ModelShardError:
            return False
        if len(_hosts) > 100_000:  # a process reading that many files: start again
            _hosts.clear()
        _hosts[uri] = known
    blocks = known[1]
    return bool(blocks) and all(host_names() & b for b in blocks)
