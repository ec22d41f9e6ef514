"""The in-memory shard scheduler: the byte budget under concurrency, pinning, reference
counting, prefetch, idle release and statistics."""

from __future__ import annotations

import hashlib
import random
import threading
import time
import weakref
import zlib

import numpy as np
import pytest

from modelshard.cache import PreloadCache, ShardRef
from modelshard.errors import IntegrityError, NotFoundError, UsageError
from modelshard.fs import LocalFileSystem
from modelshard.scheduler import Fetched, GdsfPolicy, ShardScheduler


def fill(key) -> int:
    return zlib.crc32(repr(key).encode()) % 256


def wait_until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


class MemoryFetcher:
    """Allocates each shard as a numpy array filled with its key, and tracks the bytes of
    shards alive in the process (freed when the last reference goes) at every moment."""

    def __init__(self, sizes, *, delay=0.0):
        self.sizes = sizes
        self.delay = delay
        self.lock = threading.Lock()
        self.live = 0
        self.max_live = 0
        self.calls: list = []

    def _freed(self, n):
        with self.lock:
            self.live -= n

    def __call__(self, key):
        n = self.sizes[key]
        with self.lock:
            self.live += n
            self.max_live = max(self.max_live, self.live)
            self.calls.append(key)
        buf = np.full(n, fill(key), dtype=np.uint8)
        weakref.finalize(buf, self._freed, n)
        if self.delay:
            time.sleep(self.delay)
        return buf


def test_hits_misses_and_bytes():
    sizes = {0: 100, 1: 200}
    fetch = MemoryFetcher(sizes)
    sched = ShardScheduler(fetch, sizes, budget_bytes=300)
    with sched.acquire(0) as a:
        assert a.nbytes == 100 and a[0] == fill(0)
    with sched.acquire(0), sched.acquire(1) as b:
        assert b[-1] == fill(1)
    st = sched.stats()
    assert (st.hits, st.misses, st.bytes_fetched, st.bytes_held, st.resident) == (1, 2, 300, 300, 2)
    assert fetch.calls == [0, 1]


def test_budget_smaller_than_largest_shard():
    with pytest.raises(UsageError, match="budget smaller than the largest shard: 'big' has 500 bytes"):
        ShardScheduler(bytes, {"small": 10, "big": 500}, budget_bytes=400)


def test_unknown_shard_and_bad_options():
    sched = ShardScheduler(bytes, {0: 1}, budget_bytes=10)
    with pytest.raises(NotFoundError, match="not one of this scheduler's shards"):
        sched.acquire(7)
    with pytest.raises(UsageError, match="unknown eviction policy"):
        ShardScheduler(bytes, {0: 1}, budget_bytes=10, policy="fifo")
    with pytest.raises(UsageError, match="prefetch_order names 3"):
        ShardScheduler(bytes, {0: 1}, budget_bytes=10, prefetch_order=[0, 3])


def test_lru_evicts_least_recently_used():
    sizes = dict.fromkeys(range(4), 10)
    sched = ShardScheduler(MemoryFetcher(sizes), sizes, budget_bytes=30, policy="lru")
    for k in (0, 1, 2, 0, 3):
        with sched.acquire(k):
            pass
    assert [sched.contains(k) for k in range(4)] == [True, False, True, True]
    assert sched.stats().evictions == 1


def test_gdsf_keeps_frequent_and_cheap_per_byte_shards():
    sizes = {"hot": 100, "cold": 100, "new": 100}
    sched = ShardScheduler(lambda k: bytes(sizes[k]), sizes, budget_bytes=200, policy="gdsf")
    for k in ("hot", "hot", "hot", "cold", "new"):
        with sched.acquire(k):
            pass
    assert sched.contains("hot") and not sched.contains("cold")
    # A small shard costs more per byte (the latency), so it outranks a big one used as often.
    p = GdsfPolicy()
    p.admit("small", size=1_000, cost=0.01 + 1_000 / 200e6)
    p.admit("big", size=100_000_000, cost=0.01 + 100_000_000 / 200e6)
    assert next(p.victims()) == "big"


def test_gdsf_ages_out_shards_popular_long_ago():
    sizes = dict.fromkeys(range(12), 10)
    sched = ShardScheduler(lambda k: bytes(10), sizes, budget_bytes=20, policy="gdsf")
    for _ in range(3):  # shard 0 popular once
        with sched.acquire(0):
            pass
    for k in list(range(1, 12)) * 3:  # then never again, while others churn
        with sched.acquire(k):
            pass
    assert not sched.contains(0)


def test_pinned_shards_are_never_evicted_and_pinning_past_budget_fails():
    sizes = dict.fromkeys(range(5), 10)
    sched = ShardScheduler(MemoryFetcher(sizes), sizes, budget_bytes=30, policy="lru")
    sched.pin(0)
    sched.pin(1)
    for k in (2, 3, 4, 2, 3, 4):
        with sched.acquire(k):
            pass
    assert sched.contains(0) and sched.contains(1) and sched.stats().pinned_bytes == 20
    sched.pin(2)
    with pytest.raises(UsageError, match=r"cannot pin shard 3 \(10 bytes\): 30 bytes are pinned"):
        sched.pin(3)
    sched.unpin(0)
    with pytest.raises(UsageError, match="not pinned"):
        sched.unpin(0)
    with sched.acquire(3):
        pass
    assert not sched.contains(0) and sched.contains(1) and sched.contains(2)
    assert sched.stats().bytes_held <= 30


def test_reader_waits_for_shard_in_use_then_proceeds():
    sizes = {"a": 60, "b": 60}
    sched = ShardScheduler(MemoryFetcher(sizes), sizes, budget_bytes=100)
    got_b = threading.Event()

    def reader_b():
        with sched.acquire("b"):
            got_b.set()

    with sched.acquire("a"):
        t = threading.Thread(target=reader_b)
        t.start()
        time.sleep(0.1)
        assert not got_b.is_set()  # "a" is in use: it cannot be freed under its reader
    t.join(5)
    assert got_b.is_set() and not sched.contains("a")


def test_no_room_within_wait_timeout_is_a_clear_error():
    sizes = {"a": 60, "b": 60}
    sched = ShardScheduler(lambda k: bytes(sizes[k]), sizes, budget_bytes=100, wait_timeout_s=0.05)
    with sched.acquire("a"), pytest.raises(UsageError, match="no room within budget_bytes=100.*60 in use"):
        sched.acquire("b").__enter__()


def test_budget_holds_with_many_concurrent_readers_and_prefetch():
    rng = random.Random(0)
    sizes = {k: rng.choice([1_000, 4_000, 16_000, 60_000, 64_000]) for k in range(40)}
    budget = 200_000
    fetch = MemoryFetcher(sizes, delay=0.0005)
    sched = ShardScheduler(fetch, sizes, budget_bytes=budget, policy="gdsf",
                           prefetch_order=list(range(40)), prefetch_depth=2, idle_timeout_s=0.02)
    errors: list[str] = []
    peak_seen = [0]

    def reader(seed):
        r = random.Random(seed)
        for _ in range(150):
            k = r.choice(range(40)) if r.random() < 0.5 else min(int(r.paretovariate(1.0)), 39)
            with sched.acquire(k) as buf:
                if buf.nbytes != sizes[k] or buf[0] != fill(k) or buf[-1] != fill(k):
                    errors.append(f"shard {k}: wrong bytes")
                del buf  # leave only the scheduler's reference, so frees are immediate
                held = sched.stats().bytes_held
                peak_seen[0] = max(peak_seen[0], held)
            if r.random() < 0.05:
                sched.pin(k)
                sched.unpin(k)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    sched.close()
    st = sched.stats()
    assert not errors
    assert fetch.max_live <= budget, f"{fetch.max_live} bytes alive at once, budget {budget}"
    assert st.peak_bytes_held <= budget and peak_seen[0] <= budget
    assert st.evictions > 0 and st.prefetches > 0 and st.hits > 0 and st.room_waits > 0
    assert st.misses + st.prefetches == len(fetch.calls)
    assert st.bytes_fetched == sum(sizes[k] for k in fetch.calls)


def test_prefetch_follows_the_order_and_counts_hits():
    sizes = dict.fromkeys(range(6), 10)
    fetch = MemoryFetcher(sizes)
    sched = ShardScheduler(fetch, sizes, budget_bytes=30, prefetch_order=[0, 1, 2, 3, 4, 5], prefetch_depth=2)
    with sched.acquire(0):
        wait_until(lambda: sched.contains(1) and sched.contains(2))
    with sched.acquire(1):
        pass
    wait_until(lambda: sched.contains(3))
    st = sched.stats()
    assert st.prefetch_hits == 1 and st.prefetches == 3 and st.misses == 1
    assert st.bytes_held <= 30
    sched.close()


def test_prefetch_never_evicts_shards_in_use():
    sizes = dict.fromkeys(range(3), 10)
    sched = ShardScheduler(MemoryFetcher(sizes), sizes, budget_bytes=20, prefetch_order=[0, 1, 2])
    with sched.acquire(0):
        wait_until(lambda: sched.contains(1))
        with sched.acquire(1):  # asks for 2, but 0 and 1 fill the budget and are in use
            wait_until(lambda: sched.stats().prefetch_skipped == 1)
            assert not sched.contains(2)
    sched.prefetch([2])
    wait_until(lambda: sched.contains(2))
    assert sched.stats().bytes_held == 20
    sched.close()


def test_idle_shards_are_released():
    sizes = {0: 10, 1: 10}
    sched = ShardScheduler(MemoryFetcher(sizes), sizes, budget_bytes=20, idle_timeout_s=0.05)
    with sched.acquire(0):
        time.sleep(0.2)
        assert sched.contains(0)  # in use: not idle
    wait_until(lambda: not sched.contains(0))
    assert sched.stats().idle_releases == 1 and sched.stats().bytes_held == 0
    sched.close()
    manual = ShardScheduler(MemoryFetcher(sizes), sizes, budget_bytes=20)
    with manual.acquire(1):
        pass
    assert manual.release_idle(10.0) == 0 and manual.release_idle(0) == 10


def test_failed_or_wrong_sized_fetch_releases_its_reservation():
    sizes = {"a": 10, "b": 10}
    calls = []

    def flaky(k):
        calls.append(k)
        if len(calls) == 1:
            raise OSError("connection reset")
        return bytes(9) if k == "b" else bytes(10)

    sched = ShardScheduler(flaky, sizes, budget_bytes=10)
    with pytest.raises(OSError, match="connection reset"), sched.acquire("a"):
        pass
    assert sched.stats().bytes_held == 0
    with sched.acquire("a"):
        pass
    with pytest.raises(IntegrityError, match="fetched 9 bytes, expected 10"), sched.acquire("b"):
        pass
    assert sched.stats().bytes_held == 0  # "a" made room for "b", whose room was given back


def test_local_and_remote_reads_are_counted():
    sizes = {0: 4, 1: 4, 2: 4}
    sched = ShardScheduler(lambda k: Fetched(bytes(4), local=k == 0) if k < 2 else bytes(4),
                           sizes, budget_bytes=12)
    for k in (0, 1, 2):
        with sched.acquire(k):
            pass
    st = sched.stats()
    assert (st.local_reads, st.remote_reads) == (1, 1)


def test_for_shards_reads_through_the_preload_cache(tmp_path):
    fs = LocalFileSystem()
    refs = []
    for i, n in enumerate([3000, 5000, 2000]):
        data = bytes([i]) * n
        path = str(tmp_path / f"shard-{i}.safetensors")
        fs.write_bytes(path, data)
        refs.append(ShardRef(path=path, size=n, sha256=hashlib.sha256(data).hexdigest()))
    cache = PreloadCache(tmp_path / "cache", max_bytes=20_000)
    sched = ShardScheduler.for_shards(refs, fs=fs, budget_bytes=8000, cache=cache, policy="lru", prefetch_depth=0)
    for ref in refs + refs:
        with sched.acquire(ref) as buf:
            assert bytes(buf) == fs.read_bytes(ref.path)
    st = sched.stats()
    assert st.remote_reads == 3 and st.local_reads >= 1  # the second round hit the disk cache
    assert cache.stats().entries == 3
    direct = ShardScheduler.for_shards(refs, fs=fs, budget_bytes=8000, prefetch_depth=0)
    with direct.acquire(refs[1]) as buf:
        assert len(buf) == 5000
    assert direct.stats().local_reads == 1
    direct.close()
    fs.write_bytes(refs[2].path, b"x" * 2000)
    damaged = ShardScheduler.for_shards(refs, fs=fs, budget_bytes=8000, prefetch_depth=0)
    with pytest.raises(IntegrityError, match="sha256 .* where the manifest says .*damaged"), damaged.acquire(refs[2]):
        pass


def test_fresh_pages_are_zeroed_writable_memory_of_their_own():
    import mmap

    from modelshard.verified import fresh_pages

    buf = fresh_pages(3 << 20)
    assert isinstance(buf, mmap.mmap) and len(buf) == 3 << 20
    assert buf[:16] == bytes(16) and buf[-16:] == bytes(16)
    buf[-1:] = b"\x01"
    assert fresh_pages(3 << 20)[-1:] == b"\x00"  # a new buffer each time
    assert fresh_pages(0) == bytearray()
