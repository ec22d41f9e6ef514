"""The node-local preload cache: verification, eviction, bad folders, full disks, and
several processes sharing one folder."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock

from modelshard.cache import PreloadCache, ShardRef
from modelshard.cache import preload as preload_mod
from modelshard.errors import IntegrityError, StorageError, UsageError
from modelshard.fs import LocalFileSystem
from tests.privileges import without_file_mode_override

REPO = Path(__file__).resolve().parents[2]


def make_shards(root, sizes, seed=0) -> list[ShardRef]:
    rng = random.Random(seed)
    refs = []
    for i, size in enumerate(sizes):
        data = rng.randbytes(size)
        path = os.path.join(root, f"shard-{i:05d}.safetensors")
        with open(path, "wb") as f:
            f.write(data)
        refs.append(ShardRef(path=path, size=size, sha256=hashlib.sha256(data).hexdigest()))
    return refs


class CountingFs(LocalFileSystem):
    """Counts the files opened and the chunks read from them (a remote storage stand-in)."""

    def __init__(self) -> None:
        self.opens = 0
        self.reads: list[int] = []

    def open_read(self, path):
        self.opens += 1
        f = super().open_read(path)
        outer = self

        class Tracking:
            def read(self, n=-1):
                chunk = f.read(n)
                if chunk:
                    outer.reads.append(len(chunk))
                return chunk

            def readinto(self, buffer):
                n = f.readinto(buffer)
                if n:
                    outer.reads.append(n)
                return n

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

        return Tracking()


@pytest.fixture
def remote(tmp_path):
    root = tmp_path / "remote"
    root.mkdir()
    return str(root)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def get(cache, fs, ref):
    return cache.get(fs, ref.path, sha256=ref.sha256, size=ref.size)


def test_fetch_once_in_chunks_then_hit(tmp_path, remote):
    (ref,) = make_shards(remote, [100_000])
    fs = CountingFs()
    cache = PreloadCache(tmp_path / "cache", max_bytes=1 << 20, chunk_bytes=16384)
    local = get(cache, fs, ref)
    assert local == str(tmp_path / "cache" / "sha256" / ref.sha256[:2] / ref.sha256)
    assert read(local) == read(ref.path)
    assert max(fs.reads) == 16384 and sum(fs.reads) == ref.size
    assert get(cache, fs, ref) == local
    assert cache.read(fs, ref.path, sha256=ref.sha256, size=ref.size) == read(ref.path)
    assert fs.opens == 1
    st = cache.stats()
    assert (st.hits, st.misses, st.bytes_fetched, st.entries, st.bytes_used) == (2, 1, ref.size, 1, ref.size)
    assert cache.contains(ref.sha256) and not cache.contains("0" * 64)
    assert os.listdir(tmp_path / "cache" / "tmp") == []


def test_remote_bytes_not_matching_checksum_are_never_cached(tmp_path, remote):
    (ref,) = make_shards(remote, [5000])
    cache = PreloadCache(tmp_path / "cache", max_bytes=1 << 20)
    with pytest.raises(IntegrityError, match="sha256 .* where the manifest says .*push the model"):
        cache.get(LocalFileSystem(), ref.path, sha256="ab" * 32, size=ref.size)
    with pytest.raises(IntegrityError, match="5000 bytes where the manifest says 4000"):
        cache.get(LocalFileSystem(), ref.path, sha256=ref.sha256, size=4000)
    with pytest.raises(IntegrityError, match="5000 bytes where the manifest says 6000"):
        cache.get(LocalFileSystem(), ref.path, sha256=ref.sha256, size=6000)
    assert cache.stats().entries == 0 and cache.stats().bytes_used == 0


def test_entry_damaged_on_disk_is_dropped_and_fetched_again(tmp_path, remote):
    (ref,) = make_shards(remote, [50_000])
    fs = CountingFs()
    cache = PreloadCache(tmp_path / "cache", max_bytes=1 << 20)
    local = get(cache, fs, ref)
    with open(local, "r+b") as f:  # flip one bit in the middle
        f.seek(25_000)
        b = f.read(1)
        f.seek(25_000)
        f.write(bytes([b[0] ^ 0x01]))
    assert cache.read(fs, ref.path, sha256=ref.sha256, size=ref.size) == read(ref.path)
    assert fs.opens == 2 and cache.stats().corrupt_dropped == 1
    os.truncate(local, 10)  # a truncated entry too
    assert read(get(cache, fs, ref)) == read(ref.path)
    assert fs.opens == 3 and cache.stats().corrupt_dropped == 2


def _hold_lock_in_another_process(path: str) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock\n"
         f"with FileLock({path!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_hit_is_served_while_another_process_holds_the_entry_lock(tmp_path, remote):
    """A hit takes no lock (an entry is never changed in place); a damaged entry is only
    dropped under the lock, so with the lock held elsewhere it is waited for, never deleted."""
    (ref,) = make_shards(remote, [50_000])
    fs = LocalFileSystem()
    cache = PreloadCache(tmp_path / "cache", max_bytes=1 << 20, lock_timeout_s=0.5)
    local = get(cache, fs, ref)
    holder = _hold_lock_in_another_process(
        str(tmp_path / "cache" / "locks" / ref.sha256[:2] / f"{ref.sha256}.lock"))
    try:
        started = time.monotonic()
        assert cache.read(fs, ref.path, sha256=ref.sha256, size=ref.size) == read(ref.path)
        assert time.monotonic() - started < 0.5
        with open(local, "r+b") as f:  # flip one bit: no longer a hit
            f.seek(100)
            b = f.read(1)
            f.seek(100)
            f.write(bytes([b[0] ^ 0x01]))
        with pytest.raises(StorageError, match="entry .* lock"):
            cache.read(fs, ref.path, sha256=ref.sha256, size=ref.size)
        assert os.path.exists(local) and cache.stats().corrupt_dropped == 0
    finally:
        holder.kill()
        holder.wait()
    assert cache.read(fs, ref.path, sha256=ref.sha256, size=ref.size) == read(ref.path)
    assert cache.stats().corrupt_dropped == 1


def test_lru_eviction_keeps_the_budget(tmp_path, remote):
    refs = make_shards(remote, [1000, 1000, 1000, 1000])
    fs = LocalFileSystem()
    cache = PreloadCache(tmp_path / "cache", max_bytes=3000)
    for ref in refs[:3]:
        get(cache, fs, ref)
    get(cache, fs, refs[0])  # now refs[1] is the least recently used
    get(cache, fs, refs[3])
    assert [cache.contains(r.sha256) for r in refs] == [True, False, True, True]
    st = cache.stats()
    assert st.bytes_used == 3000 and st.evictions == 1 and st.bytes_evicted == 1000
    assert cache.evict_to(1000) == 2000
    assert [cache.contains(r.sha256) for r in refs] == [False, False, False, True]


def test_eviction_skips_entries_in_use(tmp_path, remote):
    refs = make_shards(remote, [1000, 1000])
    fs = LocalFileSystem()
    cache = PreloadCache(tmp_path / "cache", max_bytes=2000)
    for ref in refs:
        get(cache, fs, ref)
    in_use = FileLock(str(tmp_path / "cache" / "locks" / refs[0].sha256[:2] / f"{refs[0].sha256}.lock"))
    with in_use:
        assert cache.evict_to(0) == 1000
    assert cache.contains(refs[0].sha256) and not cache.contains(refs[1].sha256)


def test_map_survives_eviction(tmp_path, remote):
    (ref,) = make_shards(remote, [3000])
    cache = PreloadCache(tmp_path / "cache", max_bytes=3000)
    with cache.map(LocalFileSystem(), ref.path, sha256=ref.sha256, size=ref.size) as m:
        cache.evict_to(0)
        assert not cache.contains(ref.sha256)
        assert m[:] == read(ref.path)


def test_shard_larger_than_budget_and_bad_digest_are_usage_errors(tmp_path, remote):
    (ref,) = make_shards(remote, [3000])
    cache = PreloadCache(tmp_path / "cache", max_bytes=2000)
    with pytest.raises(UsageError, match="larger than the cache budget"):
        get(cache, LocalFileSystem(), ref)
    with pytest.raises(UsageError, match="not a sha256 digest"):
        cache.get(LocalFileSystem(), ref.path, sha256="xyz", size=10)
    with pytest.raises(UsageError, match="must be positive"):
        PreloadCache(tmp_path / "c2", max_bytes=0)


def test_cache_folder_that_cannot_be_written(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(StorageError, match=r"a-file/cache: the preload cache folder cannot be written.*--cache-dir"):
        PreloadCache(tmp_path / "a-file" / "cache", max_bytes=1000)


def test_read_only_cache_folder(tmp_path):
    """A folder the user may not write (as root too: the check runs without root's power
    over file modes, in a process of its own)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        opened = subprocess.run(
            [*without_file_mode_override(), sys.executable, "-c", _OPEN_CACHE, str(ro)],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=120)
        assert opened.returncode == 1, opened.stderr
        assert opened.stderr == (f"{ro}: the preload cache folder cannot be written (Permission "
                                 "denied); pass a writable folder with --cache-dir or fix the "
                                 "folder's permissions\n")
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o700)


_OPEN_CACHE = """
import sys
from modelshard.cache import PreloadCache
from modelshard.errors import StorageError
try:
    PreloadCache(sys.argv[1], max_bytes=1000)
except StorageError as e:
    sys.exit(str(e))
"""


def test_disk_full_mid_fetch_leaves_no_partial_entry(tmp_path, remote, monkeypatch):
    (ref,) = make_shards(remote, [100_000])
    cache = PreloadCache(tmp_path / "cache", max_bytes=1 << 20, chunk_bytes=10_000)
    real_write, writes = preload_mod._write_all, []

    def filling_disk(fd, data):
        writes.append(len(data))
        if len(writes) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fd, data)

    monkeypatch.setattr(preload_mod, "_write_all", filling_disk)
    with pytest.raises(StorageError, match="disk full while caching .*free space.*--cache-dir"):
        get(cache, LocalFileSystem(), ref)
    assert not cache.contains(ref.sha256)
    assert os.listdir(tmp_path / "cache" / "tmp") == []
    assert cache.stats().bytes_used == 0
    monkeypatch.setattr(preload_mod, "_write_all", real_write)
    assert read(get(cache, LocalFileSystem(), ref)) == read(ref.path)


def test_fetch_of_dead_process_does_not_hold_budget(tmp_path, remote):
    (ref,) = make_shards(remote, [1000])
    cache = PreloadCache(tmp_path / "cache", max_bytes=1500)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / "cache" / "tmp" / f"{'cd' * 32}.{dead.stdout.strip()}.0.part"
    stale.write_bytes(b"x" * 1000)
    assert cache.stats().bytes_used == 1000
    get(cache, LocalFileSystem(), ref)
    assert not stale.exists() and cache.stats().bytes_used == 1000


# -- several processes on one node -------------------------------------------------------
def _worker(cache_dir: str, max_bytes: int, refs: list[ShardRef], seed: int, n: int) -> tuple[int, int]:
    """(bad reads, evictions) of one process reading random shards through the cache."""
    cache = PreloadCache(cache_dir, max_bytes=max_bytes, chunk_bytes=32768)
    fs = LocalFileSystem()
    rng = random.Random(seed)
    for _ in range(n):
        ref = rng.choice(refs)
        with cache.map(fs, ref.path, sha256=ref.sha256, size=ref.size) as m:
            if hashlib.sha256(m).hexdigest() != ref.sha256:
                return 1, cache.stats().evictions
    return 0, cache.stats().evictions


def test_processes_sharing_one_cache(tmp_path, remote):
    refs = make_shards(remote, [200_000, 150_000, 300_000, 50_000, 250_000, 100_000, 120_000, 80_000])
    max_bytes = 700_000
    cache_dir = str(tmp_path / "cache")
    cache = PreloadCache(cache_dir, max_bytes=max_bytes)
    by_digest = {r.sha256: r for r in refs}
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(6) as pool:
        jobs = [pool.apply_async(_worker, (cache_dir, max_bytes, refs, seed, 40)) for seed in range(6)]
        polls = 0
        while not all(j.ready() for j in jobs):
            # Reservations and evictions happen under the eviction lock: measure under it.
            with cache._evict_lock():
                assert cache._used_bytes() <= max_bytes
                for digest, size, _ in cache._scan_entries():
                    assert size == by_digest[digest].size  # no partial entry is ever visible
            polls += 1
            time.sleep(0.005)
        results = [j.get(timeout=60) for j in jobs]
    assert [bad for bad, _ in results] == [0] * 6
    assert sum(evictions for _, evictions in results) > 10 and polls > 0
    st = cache.stats()
    assert st.bytes_used <= max_bytes
    for digest, _, _ in cache._scan_entries():
        with open(cache.entry_path(digest), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest
    assert os.listdir(os.path.join(cache_dir, "tmp")) == []


def test_many_caches_over_one_folder_open_at_once_in_one_process(tmp_path):
    # The server opens one per model it builds, from several threads: their temp names
    # (the probe of the folder at opening) must never collide.
    errors = []
    start = threading.Barrier(8)

    def opener() -> None:
        start.wait()
        for _ in range(100):
            try:
                PreloadCache(tmp_path / "cache", max_bytes=1 << 20)
            except Exception as e:  # noqa: BLE001 - collected for the assertion
                errors.append(e)

    threads = [threading.Thread(target=opener) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_put_keeps_bytes_that_are_no_file_and_lookup_serves_them_only_intact(tmp_path):
    from modelshard.shards.checksums import ChunkWriter, fixed_chunk_ends

    def ref_of(data: bytes) -> ShardRef:
        sums = ChunkWriter(fixed_chunk_ends(len(data)), sha256=True)
        sums.update(data)
        return ShardRef("m@1 tensor:w", len(data), sums.sha256(), sums.finish(), "m@1")

    data = random.Random(5).randbytes(3 << 20)
    ref = ref_of(data)
    cache = PreloadCache(str(tmp_path / "cache"), max_bytes=1 << 24)
    assert cache.lookup(ref) is None  # nothing is fetched: there is nowhere to fetch from
    cache.put(data, ref)
    assert bytes(cache.lookup(ref)) == data
    cache.put(b"x" * len(data), ref)  # one there already: left as it is
    assert bytes(cache.lookup(ref)) == data

    other = bytearray(data)
    other[(2 << 20) + 7] ^= 1
    wrong = ShardRef(ref.path, ref.size, hashlib.sha256(other).hexdigest(), ref.checksums, "m@1")
    with pytest.raises(IntegrityError, match=r"m@1: shard m@1 tensor:w \(in memory\): bytes 2097152"):
        cache.put(other, wrong)  # not the bytes its checksums say: never kept
    assert cache.lookup(wrong) is None and not os.listdir(tmp_path / "cache" / "tmp")

    with open(cache.entry_path(ref.sha256), "r+b") as f:  # a byte flipped on disk
        f.seek(100)
        f.write(bytes([data[100] ^ 0x40]))
    assert cache.lookup(ref) is None and not cache.contains(ref.sha256)
    st = cache.stats()
    assert (st.entries, st.hits, st.corrupt_dropped) == (0, 2, 1)
