"""Shared fixtures. Integration tests (marker ``integration``) use the real cluster that
``make test`` starts; each works under a throwaway HDFS folder that is wiped afterwards.
Outside CI a missing cluster skips them; in CI (CI=true) it fails them."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

NAMENODE = ("127.0.0.1", 9000)
RESOURCEMANAGER = ("127.0.0.1", 8032)


def _listening(addr: tuple[str, int]) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(addr) == 0


@pytest.fixture(scope="session")
def cluster() -> None:
    """The pseudo-distributed cluster: NameNode and ResourceManager must be listening."""
    missing = [name for name, addr in (("NameNode", NAMENODE), ("ResourceManager", RESOURCEMANAGER))
               if not _listening(addr)]
    if missing:
        msg = (f"{', '.join(missing)} not reachable: start the cluster with "
               "'bin/modelshard-cluster start'")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def hdfs_root(cluster):
    """A fresh HDFS folder (path, filesystem) for one test, deleted afterwards."""
    from modelshard.fs.hdfs import HdfsFileSystem

    fs = HdfsFileSystem.for_netloc("")
    root = f"/tmp/modelshard-test/{uuid.uuid4().hex}"
    fs.mkdirs(root)
    yield fs, root
    fs.delete(root, recursive=True)


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in f"/{item.nodeid}":
            item.add_marker(pytest.mark.integration)
