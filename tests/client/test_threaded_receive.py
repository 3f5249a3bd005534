"""The threaded receive path (kvstore_client/receiver.py) against a scripted data-plane server:
order, partial frames, a connection dying mid-chunk, checksum failures, partial results."""

from __future__ import annotations

import random
import threading

import pytest
import torch

from kvstore.errors import Unavailable
from kvstore_client import AsyncKVStoreClient, RetryPolicy
from kvstore_client.dataplane import ConnectionPool
from kvstore_client.gather import PENDING, Gather
from kvstore_client.receiver import PIECE_BYTES

from .fake_dataplane import FakeDataPlane


def key(i: int) -> bytes:
    return i.to_bytes(16, "little")


@pytest.fixture
async def client_on(start_node, scheme):
    """``await client_on(fake, **options)``: an AsyncKVStoreClient (handshaken with a real node)
    whose data plane is the fake."""
    node = start_node()
    made: list[AsyncKVStoreClient] = []

    async def make(fake: FakeDataPlane, **options: object) -> AsyncKVStoreClient:
        c = await AsyncKVStoreClient.connect(node.address, scheme, **options)
        c._pool.close()
        c._pool = ConnectionPool("127.0.0.1", fake.port, lambda: c.session_id,
                                 c.options.max_connections)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


def payloads(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(1, 3000)) for _ in range(n)]


async def test_results_in_key_order_with_misses_and_tiny_frames(client_on):
    """Replies in 7-byte pieces (headers and payloads split anywhere), misses in between, keys
    spread over three connections: every result lands at its own index."""
    fake = FakeDataPlane(piece_bytes=7)
    data = payloads(12)
    for i, p in enumerate(data):
        if i % 4 != 1:
            fake.add(key(i), p)
    c = await client_on(fake, max_connections=3)
    got = await c.get_many([key(i) for i in range(12)])
    for i, t in enumerate(got):
        if i % 4 == 1:
            assert t is None
        else:
            assert t is not None and bytes(t.numpy()) == data[i]
    assert len(fake.requests) == 3  # one GET per connection


async def test_connections_are_drained_by_threads_in_parallel(client_on, monkeypatch):
    fake = FakeDataPlane(piece_bytes=256, piece_delay_s=0.002)
    for i, p in enumerate(payloads(8)):
        fake.add(key(i), p)
    c = await client_on(fake, max_connections=4)
    threads: set[str] = set()
    target = Gather.target

    def spy(self, index, meta):  # noqa: ANN001
        threads.add(threading.current_thread().name)
        return target(self, index, meta)

    monkeypatch.setattr(Gather, "target", spy)
    got = await c.get_many([key(i) for i in range(8)])
    assert all(t is not None for t in got)
    assert len(threads) == 4 and all(n.startswith("kvstore-recv") for n in threads)
    assert fake.max_open == 4  # four connections open at once


async def test_a_connection_dying_mid_chunk_refetches_only_what_had_not_arrived(client_on):
    """The first connection closes in the middle of its third chunk: the retry asks for that
    chunk and the ones after it, never for the two that arrived."""
    fake = FakeDataPlane()
    data = [random.Random(i).randbytes(1000) for i in range(5)]
    for i, p in enumerate(data):
        fake.add(key(i), p)
    per_chunk = 1 + 4 + len(fake.chunks[key(0)][0]) + 1000
    fake.die_after = [2 * per_chunk + 500]
    c = await client_on(fake, max_connections=1, retry=RetryPolicy(initial_backoff_s=0.01))
    got = await c.get_many([key(i) for i in range(5)])
    assert [bytes(t.numpy()) for t in got] == data
    assert fake.requests == [[key(i) for i in range(5)], [key(i) for i in range(2, 5)]]


async def test_out_buffers_are_filled_in_place_and_survive_a_retry(client_on):
    fake = FakeDataPlane(piece_bytes=4096)
    data = [random.Random(i).randbytes(PIECE_BYTES + 12345) for i in range(3)]  # > one piece
    for i, p in enumerate(data):
        fake.add(key(i), p)
    per_chunk = 1 + 4 + len(fake.chunks[key(0)][0]) + len(data[0])
    fake.die_after = [per_chunk + PIECE_BYTES + 10]  # inside the second chunk's second piece
    out = [torch.zeros(len(data[0]) + 8, dtype=torch.uint8) for _ in range(3)]
    c = await client_on(fake, max_connections=1, retry=RetryPolicy(initial_backoff_s=0.01))
    got = await c.get_many([key(i) for i in range(3)], out=out)
    for i, t in enumerate(got):
        assert t.data_ptr() == out[i].data_ptr()
        assert bytes(t.numpy()) == data[i]


async def test_checksum_failure_in_transit_is_a_miss(client_on):
    fake = FakeDataPlane(piece_bytes=1000)
    data = payloads(4, seed=3)
    for i, p in enumerate(data):
        fake.add(key(i), p)
    fake.corrupt = {key(2)}
    c = await client_on(fake, max_connections=2)
    got = await c.get_many([key(i) for i in range(4)])
    assert got[2] is None and c.corrupt_received == 1
    assert all(bytes(got[i].numpy()) == data[i] for i in (0, 1, 3))
    raw = await client_on(fake, verify_checksums=False)
    damaged = (await raw.get_many([key(2)]))[0]
    assert damaged is not None and bytes(damaged.numpy()) != data[2]  # the check caught it


async def test_partial_results_keep_what_arrived(client_on):
    """With no retry left, get_many raises but get_many_partial returns the chunks that landed
    and PENDING for the rest (what the cluster client fails over)."""
    fake = FakeDataPlane()
    data = [random.Random(i).randbytes(500) for i in range(4)]
    for i, p in enumerate(data):
        fake.add(key(i), p)
    per_chunk = 1 + 4 + len(fake.chunks[key(0)][0]) + 500
    fake.die_after = [per_chunk + 100, per_chunk + 100]
    c = await client_on(fake, max_connections=1, retry=RetryPolicy(max_attempts=1))
    results, error = await c.get_many_partial([key(i) for i in range(4)])
    assert isinstance(error, Unavailable)
    assert bytes(results[0].numpy()) == data[0]
    assert results[1:] == [PENDING] * 3
    with pytest.raises(Unavailable):
        await c.get_many([key(i) for i in range(4)])


async def test_typed_chunks_come_back_with_dtype_and_shape(client_on):
    fake = FakeDataPlane()
    t = torch.randn(2, 3, 4).half()
    fake.add(key(0), bytes(t.view(torch.uint8).reshape(-1).numpy()), "float16", (2, 3, 4))
    c = await client_on(fake)
    got = (await c.get_many([key(0)]))[0]
    assert got.dtype == torch.float16 and torch.equal(got, t)
