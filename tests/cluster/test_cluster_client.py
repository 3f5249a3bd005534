"""ClusterClient with a static member list (no Redis) over in-process nodes: placement,
replication 1 and 2, batched reads, failover on UNAVAILABLE and on a deadline."""

from __future__ import annotations

import socket
import time

import pytest
import torch
from cluster_helpers import holders, random_chunks, same_bytes

from kvstore.errors import Unavailable
from kvstore_client import KVStoreClient
from kvstore_client.cluster import AsyncClusterClient, ClusterClient
from kvstore_client.membership import DRAINING, Member, build_ring


def test_replication_2_writes_both_candidates_and_reads_back_exactly(three, scheme):
    nodes, members = three
    keys, data = random_chunks(120, seed=1)
    with ClusterClient(scheme, members) as c:
        assert all(c.put_many(keys, data))
        pairs = build_ring(members).candidates_many(keys)
        assert holders(nodes, keys) == [set(p) for p in pairs]
        assert same_bytes(c.get_many(keys), data) == []
        t = torch.randn(2, 3, 8).to(torch.float16)
        c.put(keys[0], t)
        assert torch.equal(c.get(keys[0]), t)
        res = c.lookup(keys + [b"\x00" * 16])
        assert res.found == [True] * len(keys) + [False] and res.prefix_hits == len(keys)
        assert [set(n) for n in res.nodes[:-1]] == [set(p) for p in pairs]
        assert c.delete_many(keys[:10]) == 20
        assert c.get_many(keys[:10]) == [None] * 10


def test_batch_reads_fan_out_to_every_holder_in_one_round(three, scheme):
    nodes, members = three
    keys, data = random_chunks(60, seed=2)
    with ClusterClient(scheme, members) as c:
        c.put_many(keys, data)
        before = {n.address: n.core.stats.latency["lookup"].count for n in nodes}
        assert same_bytes(c.get_many(keys), data) == []
        after = {n.address: n.core.stats.latency["lookup"].count for n in nodes}
        assert all(after[a] - before[a] == 1 for a in after), (before, after)  # one Lookup each
        served = {n.address: n.core.stats.bytes_out for n in nodes}
        assert all(v > 0 for v in served.values())  # replicas share the fetch


def test_replication_1_places_one_copy_on_the_emptier_candidate(three, scheme):
    nodes, members = three
    full = nodes[0]
    with KVStoreClient(full.address, scheme) as direct:  # fill node 0 to ~60 %
        fill_keys, fill = random_chunks(20, seed=3, min_bytes=1 << 20, max_bytes=1 << 20)
        direct.put_many(fill_keys, fill)
    keys, data = random_chunks(150, seed=4, max_bytes=8 << 10)
    with ClusterClient(scheme, members, replication=1) as c:
        c._loop.run(c._client.refresh_usage())
        assert c.put_many(keys, data) == [True] * len(keys)
        pairs = build_ring(members).candidates_many(keys)
        where = holders(nodes, keys)
        assert all(len(h) == 1 and h <= set(p) for h, p in zip(where, pairs, strict=True))
        with_full = [h for h, p in zip(where, pairs, strict=True) if full.address in p]
        assert with_full and all(full.address not in h for h in with_full)
        assert same_bytes(c.get_many(keys), data) == []


def test_reads_and_writes_fail_over_from_a_stopped_node(three, scheme, start_node):
    nodes, members = three
    keys, data = random_chunks(90, seed=5)
    with ClusterClient(scheme, members) as c:
        c.put_many(keys, data)
        start_node.stop(nodes[1])  # really gone: connections refused from now on
        assert same_bytes(c.get_many(keys), data) == []
        more, more_data = random_chunks(40, seed=6)
        assert all(c.put_many(more, more_data))  # the live candidate of each key took it
        assert same_bytes(c.get_many(more), more_data) == []
        start_node.stop(nodes[2])
        lone = [k for k, p in zip(more, build_ring(members).candidates_many(more), strict=True)
                if nodes[0].address not in p]
        with pytest.raises(Unavailable, match="reached none of their candidates"):
            c.put_many(lone[:3], more_data[:3])


@pytest.fixture
def black_hole():
    """A TCP port that accepts connections and never answers (a hung node)."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as s:
        yield f"127.0.0.1:{s.getsockname()[1]}"


async def test_a_hung_candidate_costs_half_the_deadline_once(three, scheme, black_hole):
    nodes, members = three
    keys, data = random_chunks(60, seed=7)
    async with await AsyncClusterClient.connect(scheme, members[:2]) as c:
        await c.put_many(keys, data)  # every key on both nodes 0 and 1
    hung = [*members[:2], Member("hung", black_hole)]
    async with await AsyncClusterClient.connect(scheme, hung, suspect_s=30.0) as c:
        assert any("hung" in p for p in build_ring(hung).candidates_many(keys))
        t0 = time.monotonic()
        assert same_bytes(await c.get_many(keys, deadline_s=2.0), data) == []
        first = time.monotonic() - t0
        t0 = time.monotonic()
        assert same_bytes(await c.get_many(keys, deadline_s=2.0), data) == []
        second = time.monotonic() - t0
    assert 0.9 <= first < 1.9, first  # waited for the hung node's lookup, then failed over
    assert second < 0.5, second      # it is suspect now: the other replica is asked first


def test_draining_members_serve_reads_but_take_no_writes(three, scheme):
    nodes, members = three
    keys, data = random_chunks(90, seed=8)
    # One copy, no transition reads: a key on the drained node is found only if draining
    # members stay read candidates.
    with ClusterClient(scheme, members, replication=1, transition_s=0.0) as c:
        c.put_many(keys, data)
        only_there = [i for i, h in enumerate(holders(nodes, keys)) if h == {nodes[2].address}]
        assert only_there
        drained = Member(members[2].node_id, members[2].address, state=DRAINING)
        c.update_members([*members[:2], drained])
        assert same_bytes(c.get_many(keys), data) == []
        new, new_data = random_chunks(40, seed=9)
        c.put_many(new, new_data)
        assert not any(nodes[2].address in h for h in holders(nodes, new))
        c.update_members(members[:2])  # gone: its keys are misses now (no silent stale reads)
        assert all(c.get_many([keys[i] for i in only_there])[j] is None
                   for j in range(len(only_there)))
