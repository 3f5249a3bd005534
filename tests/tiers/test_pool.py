"""PagePool and MemoryTier (kvstore/tiers/pool.py, memory.py): paged allocation, views, copies."""

from __future__ import annotations

import random

import pytest
import torch

from kvstore.tiers.memory import MemoryTier
from kvstore.tiers.pool import PagePool

PAGE = 4096


def fill(pool: PagePool, alloc, data: bytes) -> None:
    pos = 0
    for v in pool.host_views(alloc):
        v[:] = data[pos:pos + len(v)]
        pos += len(v)
    assert pos == len(data)


def read(pool: PagePool, alloc) -> bytes:
    return b"".join(bytes(v) for v in pool.host_views(alloc))


def test_capacity_is_whole_pages():
    pool = PagePool(10 * PAGE + 100, PAGE)
    assert pool.num_pages == 10 and pool.capacity_bytes == 10 * PAGE
    assert pool.free_bytes == 10 * PAGE and pool.used_bytes == 0
    assert pool.pages_for(1) == 1 and pool.pages_for(PAGE) == 1 and pool.pages_for(PAGE + 1) == 2


def test_alloc_until_full_then_none():
    pool = PagePool(8 * PAGE, PAGE)
    allocs = [pool.alloc(PAGE) for _ in range(8)]
    assert all(allocs) and pool.free_bytes == 0
    assert pool.alloc(1) is None
    assert len({p for a in allocs for p in a.pages}) == 8  # no page handed out twice


def test_freeing_every_other_chunk_lets_a_large_chunk_in():
    """Pages need not be adjacent: free space scattered in holes is fully usable."""
    pool = PagePool(16 * PAGE, PAGE)
    allocs = [pool.alloc(PAGE) for _ in range(16)]
    for a in allocs[::2]:
        pool.free(a)
    assert pool.free_bytes == 8 * PAGE
    big = pool.alloc(8 * PAGE)
    assert big is not None and pool.free_bytes == 0
    data = random.Random(1).randbytes(8 * PAGE)
    fill(pool, big, data)
    assert read(pool, big) == data
    # the surviving chunks were not touched by the scattered allocation
    for i, a in enumerate(allocs[1::2]):
        fill(pool, a, bytes([i]) * PAGE)
    assert read(pool, big) == data


def test_partial_last_page_views_cover_exactly_nbytes():
    pool = PagePool(4 * PAGE, PAGE)
    a = pool.alloc(2 * PAGE + 10)
    assert sum(len(v) for v in pool.host_views(a)) == 2 * PAGE + 10
    data = random.Random(2).randbytes(2 * PAGE + 10)
    fill(pool, a, data)
    assert read(pool, a) == data


def test_adjacent_pages_merge_into_one_view():
    pool = PagePool(4 * PAGE, PAGE)
    a = pool.alloc(3 * PAGE)  # a fresh pool hands out pages 0, 1, 2 in order
    assert a.pages == (0, 1, 2)
    assert [len(v) for v in pool.host_views(a)] == [3 * PAGE]


def test_no_leak_after_many_random_alloc_free_cycles():
    pool = PagePool(32 * PAGE, PAGE)
    rng = random.Random(3)
    live = []
    for _ in range(2000):
        if live and (rng.random() < 0.5 or pool.free_bytes == 0):
            pool.free(live.pop(rng.randrange(len(live))))
        else:
            a = pool.alloc(rng.randint(1, 6 * PAGE))
            if a is not None:
                live.append(a)
        used = {p for a in live for p in a.pages}
        assert sum(len(a.pages) for a in live) == len(used)  # no page shared by two chunks
        assert pool.used_bytes == len(used) * PAGE
    for a in live:
        pool.free(a)
    assert pool.used_bytes == 0
    assert pool.alloc(32 * PAGE) is not None  # and the whole pool is one allocation again


def test_tensor_copies_round_trip():
    pool = PagePool(8 * PAGE, PAGE)
    pool.alloc(PAGE)  # so the next allocation does not start at page 0
    hole = pool.alloc(PAGE)
    a = pool.alloc(PAGE)
    pool.free(hole)
    b = pool.alloc(2 * PAGE + 7)  # pages are not contiguous
    src = torch.randint(0, 256, (2 * PAGE + 7,), dtype=torch.uint8)
    pool.copy_from(b, src)
    dst = torch.empty_like(src)
    pool.copy_to(b, dst)
    assert torch.equal(src, dst)
    assert a is not None


@pytest.mark.parametrize("simulated", [False, True])
def test_memory_tier_views_and_copy_between(simulated):
    cpu = MemoryTier("cpu", 8 * PAGE, PAGE)
    other = MemoryTier("gpu", 8 * PAGE, PAGE, simulated_device=simulated)
    assert cpu.write_views(cpu.alloc(1)) is not None
    # a simulated device tier has no host views: writes go through write_from, reads are staged
    a = other.alloc(3 * PAGE - 5)
    data = random.Random(4).randbytes(3 * PAGE - 5)
    if simulated:
        assert other.write_views(a) is None
        other.write_from(a, torch.frombuffer(bytearray(data), dtype=torch.uint8))
    else:
        fill(other.pool, a, data)
    assert b"".join(bytes(v) for v in other.read_views(a)) == data
    b = cpu.alloc(len(data))
    other.copy_between(a, cpu, b)
    assert b"".join(bytes(v) for v in cpu.read_views(b)) == data
    assert cpu.fits(8 * PAGE) and not cpu.fits(8 * PAGE + 1)
