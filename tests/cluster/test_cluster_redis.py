"""The cluster end to end on loopback: a real redis-server and real `kvstore serve --redis-url`
processes. Faults are real: kill -9, SIGTERM (drain), Redis killed and restarted."""

from __future__ import annotations

import signal
import time
from contextlib import asynccontextmanager

import grpc
import pytest
from cluster_helpers import (
    TTL_S,
    await_async,
    await_for,
    random_chunks,
    rebalance_stats,
    registry_members,
    same_bytes,
    settled,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvstore import procs
from kvstore.cluster.rebalance import TokenBucket
from kvstore_client import AsyncKVStoreClient
from kvstore_client.cluster import AsyncClusterClient
from kvstore_client.membership import DRAINING, build_ring
from kvstore_client.redis_membership import RedisMembership

pytestmark = pytest.mark.chaos


@asynccontextmanager
async def cluster_client(redis_url: str, scheme, members: int, **kw):
    """A client watching the registry, once it sees ``members`` members and they settled."""
    source = RedisMembership(redis_url, poll_s=0.1)
    client = await AsyncClusterClient.connect(scheme, source=source, **kw)
    try:
        await await_for(lambda: len(client.view.members) == members, 30,
                        f"{members} registered members")
        await await_for(lambda: settled(redis_url, client.view.ids, client.view.epoch), 10,
                        "the nodes to process the ring")
        yield client, source
    finally:
        await client.close()


async def copies(client, keys) -> list[set[str]]:
    return [set(n) for n in (await client.lookup(keys)).nodes]


async def node_stats(address: str, scheme):
    async with AsyncKVStoreClient(address, scheme) as c:
        return await c.stats()


async def test_kill_9_loses_no_chunk_written_with_replication_2(nodes, scheme):
    started = nodes.start(3)
    async with cluster_client(nodes.redis_url, scheme, 3) as (c, _):
        keys, data = random_chunks(200, seed=31)
        assert all(await c.put_many(keys, data))
        held = await copies(c, keys)
        assert all(len(h) == 2 for h in held)
        victim = max(started, key=lambda p: sum(p.address in h for h in held))
        victim.kill()
        assert victim.proc.returncode == -signal.SIGKILL
        with pytest.raises(OSError):
            procs.wait_port("127.0.0.1", victim.port, 0.2)
        assert same_bytes(await c.get_many(keys), data) == []  # failover, ring not updated yet
        await await_for(lambda: victim.address not in c.view.ids, 4 * TTL_S + 5,
                        "the dead node to leave the ring")
        assert same_bytes(await c.get_many(keys), data) == []

        async def two_live_copies():
            return all(len(h) == 2 and victim.address not in h for h in await copies(c, keys))
        await await_async(two_live_copies, 20, "the survivors to re-replicate")
        assert same_bytes(await c.get_many(keys), data) == []


async def test_a_joining_node_fills_its_share_and_only_changed_keys_move(nodes, scheme):
    rate = 256 << 10
    limit = ["--rebalance-bytes-per-s", str(rate)]
    old_nodes = nodes.start(3, limit)
    async with cluster_client(nodes.redis_url, scheme, 3) as (c, _):
        keys, data = random_chunks(160, seed=32, min_bytes=8 << 10, max_bytes=8 << 10)
        assert all(await c.put_many(keys, data))
        puts_before = {p.address: (await node_stats(p.address, scheme)).puts for p in old_nodes}
        (new,) = nodes.start(1, limit)
        await await_for(lambda: new.address in c.view.ids, 20, "the new node to join")
        assert same_bytes(await c.get_many(keys), data) == []  # readable while it fills
        pairs = build_ring(c.view.up()).candidates_many(keys)
        share = [i for i, p in enumerate(pairs) if new.address in p]

        async def filled():
            s = await node_stats(new.address, scheme)
            total = 0
            for p in [*old_nodes, new]:
                total += sum(t.chunks for t in (await node_stats(p.address, scheme)).tiers)
            return s.tiers[0].chunks == len(share) and total == 2 * len(keys)
        await await_async(filled, 30, "the new node's share to fill and old copies to go")
        assert await copies(c, keys) == [set(p) for p in pairs]
        assert (await node_stats(new.address, scheme)).puts == len(share)  # each sent once
        for p in old_nodes:  # nothing was copied between the old members
            assert (await node_stats(p.address, scheme)).puts == puts_before[p.address]
        await await_for(lambda: settled(nodes.redis_url, c.view.ids, c.view.epoch), 10,
                        "the counters to be published")
        stats = rebalance_stats(nodes.redis_url)
        assert sum(s["keys_copied"] for s in stats.values()) == len(share)
        burst = TokenBucket(rate, max(64 << 10, rate / 4)).burst  # the node's own default
        for s in stats.values():
            assert s["bytes_copied"] <= burst + rate * s["copy_seconds"], s
        assert sum(s["bytes_copied"] for s in stats.values()) > 2 * burst  # the limit bit
        assert len(share) / (2 * len(keys)) == pytest.approx(1 / 4, abs=0.1)
        assert same_bytes(await c.get_many(keys), data) == []


async def test_redis_stop_and_restart_while_clients_read_and_write(nodes, redis_server, scheme):
    nodes.start(3)
    async with cluster_client(nodes.redis_url, scheme, 3) as (c, source):
        views = []
        deliver = source._on_change
        source._on_change = lambda v: (views.append(v), deliver(v))
        written: dict[bytes, bytes] = {}

        async def write_and_read(seed: int) -> None:
            keys, data = random_chunks(20, seed=seed)
            assert all(await c.put_many(keys, data))
            written.update(zip(keys, data, strict=True))
            assert same_bytes(await c.get_many(list(written)), list(written.values())) == []

        await write_and_read(100)
        members = c.view.ids
        redis_server.kill()  # really gone: the port refuses connections
        with pytest.raises(OSError):
            procs.wait_port("127.0.0.1", redis_server.port, 0.2)
        await await_for(lambda: not source.connected, 5, "the client to notice the outage")
        outage_end, seed = time.monotonic() + 3 * TTL_S, 101
        while time.monotonic() < outage_end:  # longer than a TTL, serving all along
            await write_and_read(seed)
            assert c.view.ids == members
            seed += 1
        restarted = procs.start_redis(port=redis_server.port)
        redis_server.proc = restarted.proc

        async def all_registered_again():
            return set(await registry_members(nodes.redis_url)) == members
        await await_async(all_registered_again, 10, "the nodes to re-register")
        await await_for(lambda: source.connected, 5, "the client to reconnect")
        await write_and_read(200)
        await await_for(lambda: settled(nodes.redis_url, members, 0), 10, "node counters")
        stats = rebalance_stats(nodes.redis_url)
        assert all(s["keys_copied"] == 0 and s["keys_released"] == 0 for s in stats.values())
        assert all(v.ids == members for v in views)  # the ring never shrank or reshuffled
        assert same_bytes(await c.get_many(list(written)), list(written.values())) == []


async def test_sigterm_drains_a_node_before_it_leaves(nodes, scheme):
    started = nodes.start(3, ["--rebalance-bytes-per-s", "512KiB"])
    victim = started[2]
    async with cluster_client(nodes.redis_url, scheme, 3) as (c, _):
        keys, data = random_chunks(150, seed=33, min_bytes=8 << 10, max_bytes=8 << 10)
        assert all(await c.put_many(keys, data))
        victim.proc.send_signal(signal.SIGTERM)
        await await_for(lambda: getattr(c.view.get(victim.address), "state", "") == DRAINING,
                        10, "the draining state in the registry")
        async with grpc.aio.insecure_channel(victim.address) as ch:
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        more, more_data = random_chunks(30, seed=34)
        assert all(await c.put_many(more, more_data))
        async with AsyncKVStoreClient(victim.address, scheme) as direct:
            assert not any((await direct.lookup(more)).found)  # no writes to a draining node
        await await_for(lambda: victim.proc.poll() is not None, 30, "the drained node to exit")
        assert victim.proc.returncode == 0
        await await_for(lambda: victim.address not in c.view.ids, 5, "it to leave the ring")
        everything = keys + more
        pairs = build_ring(c.view.up()).candidates_many(everything)
        assert await copies(c, everything) == [set(p) for p in pairs]
        assert same_bytes(await c.get_many(everything), data + more_data) == []
