"""One contract for every :class:`~modelshard.fs.base.FileSystem`: each test runs on the
local disk and on the real HDFS (marked ``integration``, so it fails in CI without the
cluster). A new implementation joins by adding a parameter to the ``fsroot`` fixture."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

import pytest

from modelshard.errors import AlreadyExistsError, NotFoundError, StorageError
from modelshard.fs import FileSystem, LocalFileSystem, get_fs

MiB = 1 << 20


@dataclass
class Root:
    fs: FileSystem
    path: str
    places_blocks: bool  # honours replication and block_size (HDFS) or ignores them (disk)

    def __call__(self, *parts: str) -> str:
        return "/".join((self.path, *parts))


@pytest.fixture(params=["local", pytest.param("hdfs", marks=pytest.mark.integration)])
def root(request, tmp_path) -> Root:
    if request.param == "local":
        return Root(LocalFileSystem(), str(tmp_path), places_blocks=False)
    fs, path = request.getfixturevalue("hdfs_root")
    return Root(fs, path, places_blocks=True)


def named(path: str) -> str:
    """A ``pytest.raises(match=...)`` pattern: the message names this exact path."""
    return re.escape(path)


def pattern(n: int) -> bytes:
    """``n`` bytes in which every offset is recognisable."""
    return (bytes(range(251)) * (n // 251 + 1))[:n]


# -- reading -----------------------------------------------------------------------
def test_write_then_read_back(root):
    root.fs.write_bytes(root("a", "b", "f.bin"), b"hello")  # parents are created
    assert root.fs.read_bytes(root("a", "b", "f.bin")) == b"hello"


def test_open_read_is_a_seekable_stream(root):
    data = pattern(3 * MiB + 17)
    root.fs.write_bytes(root("f.bin"), data, block_size=MiB)
    with root.fs.open_read(root("f.bin")) as f:
        assert f.read(10) == data[:10]
        assert f.tell() == 10
        f.seek(MiB - 3)
        assert f.read(6) == data[MiB - 3 : MiB + 3]  # across a block boundary
        f.seek(-5, 2)
        assert f.read() == data[-5:]
        f.seek(0)
        assert f.read() == data


@pytest.mark.parametrize(
    "offset,length",
    [(0, 5), (MiB - 3, 6), (MiB - 1, 2 * MiB + 2), (3 * MiB, 100), (3 * MiB + 17, 10), (7, 0)],
)
def test_read_range(root, offset, length):
    data = pattern(3 * MiB + 17)
    root.fs.write_bytes(root("f.bin"), data, block_size=MiB)
    assert root.fs.read_range(root("f.bin"), offset, length) == data[offset : offset + length]


def test_read_range_past_the_end_is_empty(root):
    root.fs.write_bytes(root("f.bin"), b"abc")
    assert root.fs.read_range(root("f.bin"), 10, 5) == b""


@pytest.mark.parametrize(
    "read",
    [
        lambda fs, path: fs.open_read(path).close(),
        lambda fs, path: fs.read_range(path, 0, 1),
        lambda fs, path: fs.read_bytes(path),
    ],
    ids=["open_read", "read_range", "read_bytes"],
)
def test_reading_a_missing_file_or_a_folder_fails(root, read):
    with pytest.raises(NotFoundError, match=named(root("nope"))):
        read(root.fs, root("nope"))
    root.fs.mkdirs(root("dir"))
    with pytest.raises(StorageError, match=named(root("dir"))):
        read(root.fs, root("dir"))


# -- writing -----------------------------------------------------------------------
def test_open_write_replaces_a_file(root):
    root.fs.write_bytes(root("f.bin"), b"old content")
    with root.fs.open_write(root("f.bin")) as f:
        f.write(b"new")
    assert root.fs.read_bytes(root("f.bin")) == b"new"


def test_open_write_honours_replication_and_block_size(root):
    root.fs.write_bytes(root("f.bin"), pattern(2 * MiB), replication=2, block_size=MiB)
    info = root.fs.stat(root("f.bin"))
    assert info.size == 2 * MiB
    if root.places_blocks:
        assert (info.replication, info.block_size) == (2, MiB)


def test_open_write_onto_a_folder_fails(root):
    root.fs.mkdirs(root("dir"))
    with pytest.raises(StorageError, match=named(root("dir"))):
        root.fs.write_bytes(root("dir"), b"x")


def test_create_exclusive(root):
    root.fs.create_exclusive(root("sub", "lock"), b"first")  # parents are created
    with pytest.raises(AlreadyExistsError, match=named(root("sub", "lock"))):
        root.fs.create_exclusive(root("sub", "lock"), b"second")
    assert root.fs.read_bytes(root("sub", "lock")) == b"first"
    root.fs.mkdirs(root("dir"))
    with pytest.raises(AlreadyExistsError, match=named(root("dir"))):
        root.fs.create_exclusive(root("dir"), b"x")
    assert [i.path for i in root.fs.ls(root("sub"))] == [root("sub", "lock")]  # no leftovers


def test_create_exclusive_race_has_exactly_one_winner(root):
    n = 8
    start = threading.Barrier(n)
    outcomes: list[str] = []

    def contender(i: int) -> None:
        start.wait()
        try:
            root.fs.create_exclusive(root("lock"), f"writer {i}".encode())
            outcomes.append(f"writer {i}")
        except AlreadyExistsError:
            outcomes.append("lost")

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    winners = [o for o in outcomes if o != "lost"]
    assert len(outcomes) == n and len(winners) == 1, outcomes
    assert root.fs.read_bytes(root("lock")).decode() == winners[0]
    assert [i.path for i in root.fs.ls(root.path)] == [root("lock")]  # no temporary files


def test_touch_moves_the_mtime_to_now_and_needs_the_file(root):
    root.fs.write_bytes(root("lease"), b"x")
    before = root.fs.stat(root("lease")).mtime
    time.sleep(1.1)  # HDFS sets whole seconds
    root.fs.touch(root("lease"))
    after = root.fs.stat(root("lease")).mtime
    assert after >= before + 1 and abs(after - time.time()) < 5
    assert root.fs.read_bytes(root("lease")) == b"x"
    with pytest.raises(NotFoundError, match=named(root("gone"))):
        root.fs.touch(root("gone"))
    assert not root.fs.exists(root("gone"))


# -- rename --------------------------------------------------------------------------
def test_rename_a_file(root):
    root.fs.write_bytes(root("f.tmp"), b"data")
    root.fs.rename(root("f.tmp"), root("new", "f.bin"))  # parents are created
    assert not root.fs.exists(root("f.tmp"))
    assert root.fs.read_bytes(root("new", "f.bin")) == b"data"


def test_rename_a_folder(root):
    root.fs.write_bytes(root("d.tmp", "x"), b"x")
    root.fs.rename(root("d.tmp"), root("d"))
    assert [i.path for i in root.fs.walk_files(root("d"))] == [root("d", "x")]


def test_rename_onto_an_existing_file_fails_and_changes_nothing(root):
    root.fs.write_bytes(root("src"), b"src")
    root.fs.write_bytes(root("dst"), b"dst")
    with pytest.raises(AlreadyExistsError, match=named(root("dst"))):
        root.fs.rename(root("src"), root("dst"))
    assert root.fs.read_bytes(root("src")) == b"src"
    assert root.fs.read_bytes(root("dst")) == b"dst"


@pytest.mark.parametrize("dst_empty", [True, False])
def test_rename_onto_an_existing_folder_fails_rather_than_moving_inside(root, dst_empty):
    root.fs.write_bytes(root("src", "a"), b"a")
    root.fs.mkdirs(root("dst"))
    if not dst_empty:
        root.fs.write_bytes(root("dst", "b"), b"b")
    with pytest.raises(AlreadyExistsError, match=named(root("dst"))):
        root.fs.rename(root("src"), root("dst"))
    expected = [root("src", "a")] if dst_empty else [root("dst", "b"), root("src", "a")]
    assert [i.path for i in root.fs.walk_files(root.path)] == expected


def test_rename_a_file_onto_a_folder_fails(root):
    root.fs.write_bytes(root("f"), b"f")
    root.fs.mkdirs(root("dir"))
    with pytest.raises(AlreadyExistsError, match=named(root("dir"))):
        root.fs.rename(root("f"), root("dir"))
    assert root.fs.ls(root("dir")) == []


def test_rename_a_missing_path_fails(root):
    with pytest.raises(NotFoundError, match=named(root("nope"))):
        root.fs.rename(root("nope"), root("other"))


# -- folders and deletion ------------------------------------------------------------------
def test_mkdirs(root):
    root.fs.mkdirs(root("a", "b", "c"))
    root.fs.mkdirs(root("a", "b", "c"))  # no error if it exists
    assert root.fs.stat(root("a", "b", "c")).is_dir


def test_mkdirs_over_or_under_a_file_fails(root):
    root.fs.write_bytes(root("f"), b"f")
    with pytest.raises(AlreadyExistsError, match=named(root("f"))):
        root.fs.mkdirs(root("f"))
    with pytest.raises(StorageError, match=named(root("f"))):
        root.fs.mkdirs(root("f", "sub"))


def test_delete(root):
    root.fs.write_bytes(root("f"), b"f")
    root.fs.delete(root("f"))
    assert not root.fs.exists(root("f"))
    root.fs.delete(root("f"))  # no error if it does not exist
    root.fs.write_bytes(root("d", "e", "f"), b"f")
    with pytest.raises(StorageError, match=named(root("d"))):
        root.fs.delete(root("d"))  # not empty
    root.fs.delete(root("d"), recursive=True)
    assert not root.fs.exists(root("d"))
    root.fs.mkdirs(root("empty"))
    root.fs.delete(root("empty"))
    assert root.fs.ls(root.path) == []


def together(n: int, fn) -> list[Exception]:
    """Run ``fn()`` on ``n`` threads released at once; the exceptions they raised."""
    start, errors = threading.Barrier(n), []

    def run() -> None:
        start.wait()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - the test reports it
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors


def test_concurrent_deletes_of_one_path_all_succeed(root):
    for i in range(40):
        root.fs.write_bytes(root("d", f"s{i % 4}", f"f{i}"), b"x")
    root.fs.write_bytes(root("f"), b"f")

    def delete_both() -> None:
        root.fs.delete(root("d"), recursive=True)
        root.fs.delete(root("f"))

    assert together(6, delete_both) == []
    assert root.fs.ls(root.path) == []


def test_ls_skips_entries_deleted_while_listing(root):
    names = [root(f"f{i:02d}") for i in range(40)]
    for name in names:
        root.fs.write_bytes(name, b"x")
    done = threading.Event()

    def delete_all() -> None:
        for name in names:
            root.fs.delete(name)
        done.set()

    deleter = threading.Thread(target=delete_all)
    deleter.start()
    listings = []
    try:
        while not done.is_set():
            listings.append([i.path for i in root.fs.ls(root.path)])
    finally:
        deleter.join()
    assert all(set(listing) <= set(names) for listing in listings)
    assert root.fs.ls(root.path) == []


# -- metadata --------------------------------------------------------------------------------
def test_stat(root):
    root.fs.write_bytes(root("f.bin"), b"12345")
    info = root.fs.stat(root("f.bin"))
    assert (info.path, info.size, info.is_dir) == (root("f.bin"), 5, False)
    assert abs(info.mtime - time.time()) < 120
    assert info.replication >= 1
    folder = root.fs.stat(root.path)
    assert folder.is_dir and folder.size == 0
    with pytest.raises(NotFoundError, match=named(root("nope"))):
        root.fs.stat(root("nope"))


def test_exists(root):
    root.fs.write_bytes(root("f"), b"")
    assert root.fs.exists(root("f")) and root.fs.exists(root.path)
    assert not root.fs.exists(root("nope"))
    assert root.fs.stat(root("f")).size == 0


def test_ls_and_walk_files(root):
    for name in ("b", "a", "d/y", "d/x", "c"):
        root.fs.write_bytes(root(name), name.encode())
    entries = root.fs.ls(root.path)
    assert [(i.path, i.is_dir) for i in entries] == [
        (root("a"), False), (root("b"), False), (root("c"), False), (root("d"), True)
    ]
    assert [i.size for i in entries if not i.is_dir] == [1, 1, 1]
    assert [i.path for i in root.fs.walk_files(root.path)] == [
        root(n) for n in ("a", "b", "c", "d/x", "d/y")
    ]


def test_ls_of_a_missing_path_or_a_file_fails(root):
    with pytest.raises(NotFoundError, match=named(root("nope"))):
        root.fs.ls(root("nope"))
    root.fs.write_bytes(root("f"), b"f")
    with pytest.raises(StorageError, match=named(root("f"))):
        root.fs.ls(root("f"))


# -- placement --------------------------------------------------------------------------------
def test_set_replication(root):
    root.fs.write_bytes(root("f"), b"f", replication=1)
    root.fs.set_replication(root("f"), 3)
    if root.places_blocks:
        assert root.fs.stat(root("f")).replication == 3
    with pytest.raises(NotFoundError, match=named(root("nope"))):
        root.fs.set_replication(root("nope"), 2)
    with pytest.raises(StorageError, match=named(root.path) + ": is a folder"):
        root.fs.set_replication(root.path, 2)


@pytest.mark.parametrize("offset,length", [(0, None), (MiB + 5, 10), (MiB - 1, 2), (10, 3 * MiB)])
def test_block_hosts_cover_the_range(root, offset, length):
    size = 3 * MiB - 7
    root.fs.write_bytes(root("f"), pattern(size), block_size=MiB)
    blocks = root.fs.block_hosts(root("f"), offset, length)
    end = size if length is None else min(size, offset + length)
    assert blocks and all(b.hosts for b in blocks)
    assert blocks[0].offset <= offset and blocks[-1].offset + blocks[-1].length >= end
    assert all(a.offset + a.length == b.offset for a, b in zip(blocks, blocks[1:], strict=False))
    if root.places_blocks:
        expected = range(offset // MiB * MiB, end, MiB)
        assert [(b.offset, b.length) for b in blocks] == [(o, min(MiB, size - o)) for o in expected]


def test_block_hosts_of_a_missing_path_or_a_folder_fail(root):
    with pytest.raises(NotFoundError, match=named(root("nope"))):
        root.fs.block_hosts(root("nope"))
    with pytest.raises(StorageError, match=named(root.path) + ": is a folder"):
        root.fs.block_hosts(root.path)


def test_uri_round_trips_through_get_fs(root):
    fs, path = get_fs(root.fs.uri(root("f.bin")))
    assert (type(fs), path) == (type(root.fs), root("f.bin"))
    if root.places_blocks:
        assert fs is root.fs  # one cached connection per NameNode
