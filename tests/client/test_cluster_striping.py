"""Striping in the cluster client: a multi-chunk get is spread over both replicas by bytes, and
a replica lost mid-transfer fails over without fetching again what already arrived."""

from __future__ import annotations

import random

import pytest

from kvstore.keys import KEY_BYTES
from kvstore_client import RetryPolicy
from kvstore_client.aio import ClientOptions
from kvstore_client.cluster import AsyncClusterClient
from kvstore_client.dataplane import ConnectionPool
from kvstore_client.membership import Member

from .fake_dataplane import CuttingProxy

CHUNK = 64 << 10


@pytest.fixture
def two(start_node, node_config, tmp_path):
    nodes = [start_node(node_config(data_dir=str(tmp_path / f"n{i}"), page_bytes=16 << 10,
                                    cpu_capacity_bytes=32 << 20, max_chunk_bytes=1 << 20))
             for i in range(2)]
    return nodes, [Member(n.address, n.address) for n in nodes]


def chunks(n: int) -> tuple[list[bytes], list[bytes]]:
    rng = random.Random(7)
    return [rng.randbytes(KEY_BYTES) for _ in range(n)], [rng.randbytes(CHUNK) for _ in range(n)]


def served(node) -> int:  # noqa: ANN001
    return node.core.stats.hits


OPTIONS = ClientOptions(deadline_s=10.0, retry=RetryPolicy(max_attempts=1), max_connections=1)


async def test_a_get_is_striped_over_both_replicas(two, scheme):
    nodes, members = two
    keys, data = chunks(32)
    async with await AsyncClusterClient.connect(scheme, members, options=OPTIONS) as c:
        assert all(await c.put_many(keys, data))  # replication 2: both nodes hold every key
        before = [served(n) for n in nodes]
        got = await c.get_many(keys)
    assert [bytes(t.numpy()) for t in got] == data
    share = [served(n) - b for n, b in zip(nodes, before, strict=True)]
    assert share == [16, 16]  # equal bytes from each replica, every key fetched once


async def test_a_replica_lost_mid_transfer_fails_over_only_the_rest(two, scheme):
    nodes, members = two
    keys, data = chunks(16)
    async with await AsyncClusterClient.connect(scheme, members, options=OPTIONS) as c:
        assert all(await c.put_many(keys, data))
        node_a = c._nodes[members[0].node_id].client
        await c._nodes[members[0].node_id].ready()
        # node A's data plane goes through a proxy that dies inside A's fourth chunk
        arrived = 3
        proxy = CuttingProxy(nodes[0].core.data_port, arrived * (CHUNK + 200) + 2000)
        node_a._pool = ConnectionPool("127.0.0.1", proxy.port, lambda: node_a.session_id, 1)
        before = [served(n) for n in nodes]
        got = await c.get_many(keys)
        proxy.close()
    assert [bytes(t.numpy()) for t in got] == data
    share = [served(n) - b for n, b in zip(nodes, before, strict=True)]
    # A was asked for its half and read some of it before its sends failed (how many depends on
    # socket buffers); B served its own half and exactly what A never delivered
    assert arrived < share[0] <= 8
    assert share[1] == 16 - arrived
