"""Fixtures of the model store's tests. Every store test reaches the catalog only through
``catalog_root`` (a filesystem and a root path), so the same tests run on HDFS when a module
overrides it with ``hdfs_root`` from ``tests/conftest.py``::

    @pytest.fixture
    def catalog_root(hdfs_root):
        return hdfs_root
"""

from __future__ import annotations

import pytest

from modelshard.catalog.catalog import Catalog
from modelshard.fs import FileSystem, LocalFileSystem


@pytest.fixture
def catalog_root(tmp_path) -> tuple[FileSystem, str]:
    return LocalFileSystem(), str(tmp_path / "catalog")


@pytest.fixture
def catalog(catalog_root) -> Catalog:
    fs, root = catalog_root
    return Catalog(fs.uri(root))
