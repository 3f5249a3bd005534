"""TierManager (kvstore/tiers/manager.py): placement, eviction order, demotion and promotion,
disk admission, pinning, checksums on put, capacity errors and prefetch.

Tiers are tiny (4 KiB pages, a few pages per tier) so every movement is provoked on purpose; the
GPU tier is the CPU-simulated one (gpu_device="sim"), which takes the device code path.
"""

from __future__ import annotations

import random
import threading

import pytest

from kvstore.errors import CapacityError, ChecksumMismatch
from kvstore.tiers.manager import TierManager

PAGE = 4096
NS = "ns"


def put(m: TierManager, make_chunk, seed, nbytes: int = PAGE, **meta):
    info, data = make_chunk(seed, nbytes, **meta)
    m.put(info, NS, data)
    return info.key, data


def read(m: TierManager, key: bytes) -> bytes | None:
    lease = m.get(key)
    if lease is None:
        return None
    with lease:
        return b"".join(bytes(v) for v in lease.views)


def tier_of(m: TierManager, key: bytes) -> str | None:
    e = m.lookup([key])[0]
    return None if e is None else e.tier


def counts(m: TierManager, tier: str) -> dict[str, int]:
    return vars(m.counters[tier])


def usage(m: TierManager) -> dict[str, tuple[int, int]]:
    """tier -> (used_bytes, chunks)"""
    return {name: (used, n) for name, _, used, n in m.tier_usage()}


# ---- basics ---------------------------------------------------------------------------------
@pytest.mark.parametrize("gpu", ["none", "sim"])
@pytest.mark.parametrize("nbytes", [1, PAGE - 1, PAGE, 3 * PAGE + 1])
def test_put_get_round_trip(tier_manager, make_chunk, gpu, nbytes):
    m = tier_manager(gpu_device=gpu, gpu_capacity_bytes=4 * PAGE)
    key, data = put(m, make_chunk, "a", nbytes)
    top = "gpu" if gpu == "sim" else "cpu"
    assert tier_of(m, key) == top
    lease = m.get(key)
    assert lease.tier == top and lease.info.payload_bytes == nbytes
    assert b"".join(bytes(v) for v in lease.views) == data
    lease.release()
    assert read(m, b"\0" * 16) is None  # a miss is a result, not an error
    assert m.lookup([key, b"\0" * 16])[1] is None


def test_put_replaces_existing_key(tier_manager, make_chunk):
    m = tier_manager()
    key, _ = put(m, make_chunk, "a", 2 * PAGE)
    info, data = make_chunk("a", PAGE)  # same key, other bytes
    assert info.key == key
    m.put(info, NS, data)
    assert read(m, key) == data
    assert usage(m)["cpu"] == (PAGE, 1)


# ---- no leaks -------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["lru", "fifo", "lfu"])
@pytest.mark.parametrize("admission", ["on-demotion", "second-use", "write-through"])
def test_no_leak_after_many_put_evict_cycles(tier_manager, make_chunk, wait_until, policy,
                                             admission):
    m = tier_manager(gpu_device="sim", gpu_capacity_bytes=4 * PAGE, cpu_capacity_bytes=8 * PAGE,
                     disk_capacity_bytes=60 * PAGE, eviction_policy=policy,
                     disk_admission=admission)
    rng = random.Random(f"{policy}-{admission}")
    latest: dict[bytes, bytes] = {}
    for _ in range(250):
        seed = rng.randrange(40)
        op = rng.random()
        if op < 0.5:
            key, data = put(m, make_chunk, seed, rng.randint(1, 3 * PAGE))  # keys get reused
            latest[key] = data
        elif op < 0.85 and latest:
            key = rng.choice(list(latest))
            got = read(m, key)
            assert got is None or got == latest[key]  # evicted is fine, wrong bytes never
        elif latest:
            key = rng.choice(list(latest))
            m.delete([key])
            del latest[key]
            assert tier_of(m, key) is None
    m.delete(list(latest))
    # write-through writes finish in the background and hold a pin until then
    wait_until(lambda: all(used == 0 for used, _ in usage(m).values()), 10, "tiers to empty")
    assert all(n == 0 for _, n in usage(m).values())
    assert m.disk is not None and not list(m.disk.chunks_dir.glob("*/*.kvc"))
    assert m.disk.used_bytes == 0


# ---- eviction order -------------------------------------------------------------------------
def test_lru_demotes_least_recently_got_chunk_first(tier_manager, make_chunk):
    m = tier_manager(disk_capacity_bytes=1 << 20)
    a, b, c, d = (put(m, make_chunk, s)[0] for s in "abcd")
    assert read(m, a) is not None           # a is now the most recently used
    e = put(m, make_chunk, "e")[0]
    assert tier_of(m, b) == "disk"          # b, not a, made room
    assert {tier_of(m, k) for k in (a, c, d, e)} == {"cpu"}
    assert read(m, c) is not None
    put(m, make_chunk, "f")
    assert tier_of(m, d) == "disk"          # order is now d, a, e, c
    assert tier_of(m, a) == "cpu" and tier_of(m, c) == "cpu"
    assert counts(m, "cpu")["evictions"] == 2 and counts(m, "disk")["demotions_in"] == 2


def test_fifo_ignores_reads(tier_manager, make_chunk):
    m = tier_manager(eviction_policy="fifo")
    a = put(m, make_chunk, "a")[0]
    for s in "bcd":
        put(m, make_chunk, s)
    read(m, a)
    put(m, make_chunk, "e")
    assert tier_of(m, a) is None  # first in, first out (no disk: dropped)


def test_lfu_keeps_frequently_read_chunks(tier_manager, make_chunk):
    m = tier_manager(eviction_policy="lfu")
    keys = [put(m, make_chunk, s)[0] for s in "abcd"]
    for k in keys[:3]:
        read(m, k)
        read(m, k)
    read(m, keys[3])
    put(m, make_chunk, "e")
    assert tier_of(m, keys[3]) is None and all(tier_of(m, k) == "cpu" for k in keys[:3])


# ---- demotion and promotion -----------------------------------------------------------------
@pytest.fixture
def three_tiers(tier_manager, make_chunk):
    """gpu(sim) 2 pages -> cpu 2 pages -> disk room for 2 one-page chunk files."""
    info, _ = make_chunk("probe", PAGE)
    from kvstore.tiers.disk import DiskTier

    file_bytes = len(DiskTier._header(info, NS)) + PAGE
    return tier_manager(gpu_device="sim", gpu_capacity_bytes=2 * PAGE,
                        cpu_capacity_bytes=2 * PAGE, max_chunk_bytes=2 * PAGE,
                        disk_capacity_bytes=2 * file_bytes)


def test_demotion_chain_gpu_cpu_disk_dropped(three_tiers, make_chunk):
    m = three_tiers
    chunks = {s: put(m, make_chunk, s) for s in "abcdefg"}
    tier = {s: tier_of(m, k) for s, (k, _) in chunks.items()}
    assert tier == {"a": None, "b": "disk", "c": "disk", "d": "cpu", "e": "cpu",
                    "f": "gpu", "g": "gpu"}
    assert counts(m, "gpu")["evictions"] == 5
    assert counts(m, "cpu")["demotions_in"] == 5 and counts(m, "cpu")["evictions"] == 3
    assert counts(m, "disk")["demotions_in"] == 3 and counts(m, "disk")["evictions"] == 1
    assert {n: c for n, (_, c) in usage(m).items()} == {"gpu": 2, "cpu": 2, "disk": 2}
    for s in "defg":  # everything that was not dropped is intact (memory reads: gpu is full,
        assert read(m, chunks[s][0]) == chunks[s][1]  # so nothing moves)
    for s in "bc":    # read disk copies directly: a get would promote and cascade
        key, data = chunks[s]
        assert bytes(m.disk.read(m.lookup([key])[0].info, NS)) == data


def test_hit_on_disk_promotes_to_top_tier(three_tiers, make_chunk):
    """Also the regression test for: a disk hit was not touched in the disk tier's LRU, so the
    demotions that made room for its promotion dropped the very chunk being promoted."""
    m = three_tiers
    chunks = {s: put(m, make_chunk, s) for s in "abcdefg"}
    key, data = chunks["b"]
    lease = m.get(key)
    assert lease.tier == "disk"
    assert b"".join(bytes(v) for v in lease.views) == data
    lease.release()
    assert tier_of(m, key) == "gpu"
    assert counts(m, "disk")["promotions_out"] == 1 and counts(m, "disk")["hits"] == 1
    assert read(m, key) == data
    assert counts(m, "gpu")["hits"] == 1
    # making room demoted d (cpu -> disk) into a full disk: c, the disk LRU, was dropped
    assert tier_of(m, chunks["c"][0]) is None and tier_of(m, chunks["d"][0]) == "disk"


def test_hit_on_cpu_promotes_to_gpu_when_gpu_has_room(three_tiers, make_chunk):
    m = three_tiers
    chunks = {s: put(m, make_chunk, s) for s in "abcdefg"}
    d, data = chunks["d"]
    assert read(m, d) == data and tier_of(m, d) == "cpu"  # gpu full: served from cpu in place
    assert counts(m, "cpu")["promotions_out"] == 0
    m.delete([chunks["f"][0]])
    lease = m.get(d)
    assert lease.tier == "gpu"
    assert b"".join(bytes(v) for v in lease.views) == data
    lease.release()
    assert tier_of(m, d) == "gpu" and counts(m, "cpu")["promotions_out"] == 1
    assert usage(m)["gpu"][1] == 2 and usage(m)["cpu"][1] == 1


# ---- disk admission -------------------------------------------------------------------------
def test_second_use_admission_writes_only_chunks_that_were_read(tier_manager, make_chunk):
    m = tier_manager(cpu_capacity_bytes=2 * PAGE, max_chunk_bytes=PAGE,
                     disk_capacity_bytes=1 << 20, disk_admission="second-use")
    a, a_data = put(m, make_chunk, "a")
    b, _ = put(m, make_chunk, "b")
    assert read(m, a) == a_data
    put(m, make_chunk, "c")                 # evicts b: never read, so dropped
    put(m, make_chunk, "d")                 # evicts a: read once, so written
    assert tier_of(m, b) is None
    assert tier_of(m, a) == "disk" and read(m, a) == a_data
    assert counts(m, "disk")["demotions_in"] == 1


def test_on_demotion_admission_writes_unread_chunks(tier_manager, make_chunk):
    m = tier_manager(cpu_capacity_bytes=PAGE, max_chunk_bytes=PAGE, disk_capacity_bytes=1 << 20)
    a, a_data = put(m, make_chunk, "a")
    put(m, make_chunk, "b")
    assert tier_of(m, a) == "disk" and read(m, a) == a_data


def test_write_through_puts_every_chunk_on_disk(tier_manager, make_chunk, wait_until):
    m = tier_manager(disk_capacity_bytes=1 << 20, disk_admission="write-through")
    a, a_data = put(m, make_chunk, "a", 2 * PAGE)
    wait_until(lambda: m.disk.path(a).exists() and m.lookup([a])[0].disk_bytes, 5,
               "the write-through copy")
    assert tier_of(m, a) == "cpu"           # the memory copy stays
    used = m.disk.used_bytes
    for s in "bcd":                          # push a out of memory
        put(m, make_chunk, s)
    wait_until(lambda: tier_of(m, a) == "disk", 5, "a to leave memory")
    assert counts(m, "disk")["demotions_in"] == 1
    assert read(m, a) == a_data
    wait_until(lambda: usage(m)["disk"][1] == 4, 5, "all four chunks on disk")
    assert m.disk.used_bytes > used          # the others were written on put, a not twice


# ---- pinning --------------------------------------------------------------------------------
@pytest.mark.parametrize("gpu", ["none", "sim"])
def test_pinned_chunks_are_never_evicted(tier_manager, make_chunk, gpu):
    m = tier_manager(gpu_device=gpu, gpu_capacity_bytes=2 * PAGE, cpu_capacity_bytes=2 * PAGE,
                     max_chunk_bytes=PAGE)
    top = "gpu" if gpu == "sim" else "cpu"
    a, a_data = put(m, make_chunk, "a")
    b, _ = put(m, make_chunk, "b")
    lease_a = m.get(a)
    assert read(m, b) is not None           # a is now least recently used, but pinned
    c, _ = put(m, make_chunk, "c")
    assert tier_of(m, a) == top and tier_of(m, b) != top
    assert b"".join(bytes(v) for v in lease_a.views) == a_data
    lease_c = m.get(c)
    info_d, data_d = make_chunk("d", PAGE)
    with pytest.raises(CapacityError, match="being read"):
        m.put(info_d, NS, data_d)           # everything in the top tier is pinned
    assert tier_of(m, info_d.key) is None
    lease_a.release()
    lease_c.release()
    m.put(info_d, NS, data_d)
    assert read(m, info_d.key) == data_d


def test_deleted_pinned_chunk_stays_readable_until_release(tier_manager, make_chunk):
    m = tier_manager(cpu_capacity_bytes=2 * PAGE, max_chunk_bytes=PAGE)
    a, a_data = put(m, make_chunk, "a")
    lease = m.get(a)
    assert m.delete([a]) == 1
    assert tier_of(m, a) is None and m.get(a) is None
    for s in "bcde":                         # churn the only other page
        put(m, make_chunk, s)
    assert b"".join(bytes(v) for v in lease.views) == a_data
    assert m.mem_tiers[0].used_bytes == 2 * PAGE
    lease.release()
    lease.release()                          # idempotent
    assert m.mem_tiers[0].used_bytes == PAGE
    assert m.delete([a]) == 0


# ---- checksums and capacity on put ----------------------------------------------------------
@pytest.mark.parametrize("gpu", ["none", "sim"])
def test_put_with_bad_checksum_stores_nothing(tier_manager, make_chunk, gpu):
    m = tier_manager(gpu_device=gpu, gpu_capacity_bytes=4 * PAGE)
    info, data = make_chunk("a", 2 * PAGE, bad_checksum=True)
    with pytest.raises(ChecksumMismatch, match="nothing stored"):
        m.put(info, NS, data)
    assert tier_of(m, info.key) is None
    assert all(used == 0 for used, _ in usage(m).values())
    # a bad re-put of an existing key keeps the good copy
    good, good_data = make_chunk("a", 2 * PAGE)
    m.put(good, NS, good_data)
    with pytest.raises(ChecksumMismatch):
        m.put(info, NS, data)
    assert read(m, info.key) == good_data


def test_put_of_wrong_length_data_stores_nothing(tier_manager, make_chunk):
    m = tier_manager()
    info, data = make_chunk("a", PAGE)
    with pytest.raises(ValueError, match="payload"):
        m.put(info, NS, data[:-1])
    assert tier_of(m, info.key) is None and usage(m)["cpu"] == (0, 0)


def test_chunk_larger_than_top_tier_raises_capacity_error(tier_manager, make_chunk):
    m = tier_manager(gpu_device="sim", gpu_capacity_bytes=PAGE, cpu_capacity_bytes=4 * PAGE)
    info, data = make_chunk("big", 2 * PAGE)
    with pytest.raises(CapacityError, match="larger than the gpu tier"):
        m.put(info, NS, data)
    assert tier_of(m, info.key) is None
    assert all(used == 0 for used, _ in usage(m).values())


def test_reservation_abort_frees_its_pages(tier_manager, make_chunk):
    m = tier_manager()
    info, _ = make_chunk("a", 3 * PAGE)
    res = m.reserve(info, NS)
    assert m.mem_tiers[0].used_bytes == 3 * PAGE and tier_of(m, info.key) is None
    res.abort()
    res.abort()
    assert m.mem_tiers[0].used_bytes == 0


# ---- prefetch -------------------------------------------------------------------------------
@pytest.fixture
def chain_on_disk(tier_manager, make_chunk):
    """A four-chunk prefix chain k0 <- k1 <- k2 <- k3 pushed to disk, plus a sibling of k1."""
    m = tier_manager(cpu_capacity_bytes=8 * PAGE, max_chunk_bytes=PAGE,
                     disk_capacity_bytes=1 << 20, prefetch_queue=16)
    chain, parent = [], b""
    for i in range(4):
        key, data = put(m, make_chunk, f"k{i}", parent_key=parent)
        chain.append((key, data))
        parent = key
    sibling = put(m, make_chunk, "k1-sibling", parent_key=chain[0][0])
    for i in range(8):
        put(m, make_chunk, f"filler{i}")
    assert all(tier_of(m, k) == "disk" for k, _ in [*chain, sibling])
    return m, chain, sibling


class BlockedDiskReads:
    """Holds every disk read of the manager until ``release()`` (to observe queued work)."""

    def __init__(self, m: TierManager) -> None:
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)
        real = m.disk.read

        def read(*args, **kw):
            self.started.release()
            assert self.gate.wait(10), "test never released the disk"
            return real(*args, **kw)

        m.disk.read = read  # type: ignore[method-assign]

    def release(self) -> None:
        self.gate.set()


def test_prefetch_promotes_disk_chunks_in_the_background(chain_on_disk, wait_until):
    m, chain, _ = chain_on_disk
    blocked = BlockedDiskReads(m)
    keys = [k for k, _ in chain[:2]]
    assert m.prefetch(keys) == 2             # returns while the reads are still held
    assert blocked.started.acquire(timeout=5)
    assert all(tier_of(m, k) == "disk" for k in keys)
    assert m.prefetch(keys) == 0             # already queued: not queued twice
    blocked.release()
    wait_until(lambda: all(tier_of(m, k) == "cpu" for k in keys), 5, "prefetch")
    assert m.prefetches == 2 and counts(m, "disk")["promotions_out"] == 2
    for k, data in chain[:2]:
        assert read(m, k) == data
    assert m.prefetch(keys) == 0             # in memory: nothing to do
    assert m.prefetch([b"\1" * 16]) == 0     # unknown key


def test_prefetch_next_follows_parent_chains(chain_on_disk, wait_until):
    m, chain, sibling = chain_on_disk
    k0 = chain[0][0]
    # successors of k0, breadth first: k1 and its sibling, then k2; k3 is beyond next_n
    assert m.prefetch([k0], next_n=3) == 4
    expect = [k0, chain[1][0], sibling[0], chain[2][0]]
    wait_until(lambda: all(tier_of(m, k) == "cpu" for k in expect), 5, "chain prefetch")
    wait_until(lambda: m.prefetches == 4, 5, "prefetch counter")
    assert tier_of(m, chain[3][0]) == "disk"
    for k, data in chain[:3]:
        assert read(m, k) == data


def test_prefetch_queue_limit_drops_the_excess(tier_manager, make_chunk, wait_until):
    m = tier_manager(cpu_capacity_bytes=8 * PAGE, max_chunk_bytes=PAGE,
                     disk_capacity_bytes=1 << 20, prefetch_queue=2)
    keys = [put(m, make_chunk, f"k{i}")[0] for i in range(4)]
    for i in range(8):
        put(m, make_chunk, f"filler{i}")
    blocked = BlockedDiskReads(m)
    assert m.prefetch(keys) == 2
    assert m.prefetch_dropped == 2
    blocked.release()
    wait_until(lambda: m.prefetches == 2, 5, "the two queued prefetches")


def test_write_through_backlog_does_not_fail_puts(tier_manager, make_chunk, wait_until):
    """Regression: queued write-through copies pinned their memory, so puts that outran the
    background writer failed with "full of chunks being read" although nothing was being read.
    A chunk demoted before its write-through copy exists is written by the demotion instead."""
    m = tier_manager(cpu_capacity_bytes=4 * PAGE, max_chunk_bytes=PAGE,
                     disk_capacity_bytes=1 << 20, disk_admission="write-through")
    gate = threading.Event()
    m._prefetch_pool.submit(gate.wait, 10)   # the background writer is busy elsewhere
    try:
        chunks = [put(m, make_chunk, f"c{i}") for i in range(10)]
    finally:
        gate.set()
    for key, data in chunks:
        assert read(m, key) == data
    wait_until(lambda: usage(m)["disk"][1] == 10, 5, "every chunk on disk")
