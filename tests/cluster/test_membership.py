"""Redis membership against a real redis-server: registry, heartbeats, reaping, outages."""

from __future__ import annotations

import asyncio
import time

import pytest
from cluster_helpers import await_for

from kvstore import procs
from kvstore.cluster.static import StaticMembership, load_members, parse_members
from kvstore.errors import ConfigError, Unavailable
from kvstore_client.membership import DRAINING, Member
from kvstore_client.redis_membership import HeartbeatAgent, RedisMembership, RedisRegistry


@pytest.fixture
async def watch(redis_server):
    """``watch(**kw)`` -> (started RedisMembership, list of views it delivered)."""
    made = []

    async def make(**kw):
        w = RedisMembership(f"redis://{redis_server.address}", **kw)
        views = []
        await w.start(views.append)
        made.append(w)
        return w, views

    yield make
    for w in made:
        await w.close()


@pytest.fixture
async def agents(redis_server):
    made = []

    async def make(node_id: str, ttl_s: float = 1.0, **kw):
        a = HeartbeatAgent(RedisRegistry(f"redis://{redis_server.address}"),
                           Member(node_id, f"127.0.0.1:{1000 + len(made)}", **kw), ttl_s)
        await a.start()
        made.append(a)
        return a

    yield make
    for a in made:
        a.stop()
        await asyncio.gather(*[t for t in (a._task,) if t], return_exceptions=True)
        await a.registry.close()


async def test_changes_arrive_by_pubsub_and_the_epoch_only_grows(watch, agents):
    w, views = await watch(poll_s=30.0)  # polling alone would take 30 s: only pub/sub is fast
    a = await agents("a", weight=2.0)
    await await_for(lambda: w.view.ids == {"a"}, 3, "a's registration")
    assert w.view.get("a").weight == 2.0
    await a.set_state(DRAINING)
    await await_for(lambda: w.view.get("a").state == DRAINING, 3, "the draining state")
    await a.leave()
    await await_for(lambda: not w.view.members, 3, "a's departure")
    epochs = [v.epoch for v in views]
    assert len(views) == 3 and epochs == sorted(set(epochs)), epochs


async def test_a_silent_member_is_reaped_after_its_ttl_and_a_live_one_is_not(watch, agents):
    w, _ = await watch(poll_s=0.1)
    live = await agents("live", ttl_s=0.6)
    silent = await agents("silent", ttl_s=0.6)
    await await_for(lambda: w.view.ids == {"live", "silent"}, 3, "both members")
    silent.stop()  # the process "crashed": no more heartbeats, no leave
    stopped = time.monotonic()
    await await_for(lambda: w.view.ids == {"live"}, 5, "the silent member to be reaped")
    assert time.monotonic() - stopped >= 0.4  # not before its heartbeat could have expired
    assert w.reaped == 1
    end = time.monotonic() + 3 * live.ttl_s  # the live member stays through several TTLs
    while time.monotonic() < end:
        assert w.view.ids == {"live"}
        await asyncio.sleep(0.05)


async def test_redis_restart_keeps_the_last_view_then_resyncs(redis_server, watch, agents):
    w, views = await watch(poll_s=0.1, resync_s=3.0)
    a = await agents("a", ttl_s=1.0)
    b = await agents("b", ttl_s=1.0)
    await await_for(lambda: w.view.ids == {"a", "b"}, 3, "both members")
    epoch_before = w.epoch
    redis_server.kill()  # Redis really goes away (no persistence: it comes back empty)
    with pytest.raises(OSError):
        procs.wait_port("127.0.0.1", redis_server.port, 0.2)
    await await_for(lambda: not w.connected, 3, "the watcher to notice the outage")
    b.stop()  # b dies while Redis is away: it can never re-register
    end = time.monotonic() + 2 * a.ttl_s  # longer than a TTL: the view must not shrink
    while time.monotonic() < end:
        assert w.view.ids == {"a", "b"}
        await asyncio.sleep(0.05)
    restarted = procs.start_redis(port=redis_server.port)
    redis_server.proc = restarted.proc  # the fixture kills whatever runs now
    back = time.monotonic()
    await await_for(lambda: w.connected, 5, "the watcher to reconnect")
    await await_for(lambda: a.reregistrations >= 1, 5, "a to re-register")
    await await_for(lambda: w.view.ids == {"a"}, 8, "b to be dropped after the resync window")
    assert time.monotonic() - back >= w.resync_s  # b was given time to come back
    assert w.epoch > epoch_before
    assert all(len(v.members) >= 1 for v in views)
    assert [v.epoch for v in views] == sorted(v.epoch for v in views)


async def test_unreachable_redis_at_start_is_an_error():
    w = RedisMembership(f"redis://127.0.0.1:{procs.free_port()}", timeout_s=0.5)
    with pytest.raises(Unavailable, match="cannot read the cluster registry"):
        await w.start(lambda v: None)
    await w.close()


def test_parse_static_members(tmp_path):
    got = parse_members("a=10.0.0.1:50051*2, 10.0.0.2:50051")
    assert got == [Member("a", "10.0.0.1:50051", 2.0), Member("10.0.0.2:50051",
                                                                "10.0.0.2:50051", 1.0)]
    for bad in ("", "a=nohostport", "h:1*zero", "h:1*-1"):
        with pytest.raises(ConfigError):
            parse_members(bad)
    f = tmp_path / "members.yaml"
    f.write_text("- {node_id: x, address: 'h:1', weight: 3}\n- {address: 'h:2'}\n")
    assert load_members(f) == [Member("x", "h:1", 3.0), Member("h:2", "h:2")]
    f.write_text("{}")
    with pytest.raises(ConfigError):
        load_members(f)


async def test_static_membership_updates_are_new_epochs():
    src = StaticMembership([Member("a", "h:1")])
    seen = []
    first = await src.start(seen.append)
    src.update([Member("a", "h:1"), Member("b", "h:2")])
    assert first.epoch == 1 and [v.epoch for v in seen] == [2] and seen[0].ids == {"a", "b"}


async def test_regression_watcher_kept_a_stale_epoch_after_missing_a_leave_and_rejoin(
        redis_server):
    """Chaos suite (partition): a node cut off from Redis was reaped and re-registered with the
    same incarnation. Its watcher then saw the same members at a newer epoch and ignored it, so
    it reported the old epoch forever and the ring never looked converged."""
    url = f"redis://{redis_server.address}"
    reg = RedisRegistry(url)
    a = Member("a", "127.0.0.1:1000", incarnation="x")
    await reg.put(a, 5.0)
    w = RedisMembership(url)  # refreshed by hand: it surely misses what happens in between
    views = []
    try:
        await w.start(views.append)
        await w.close()  # stop its loop; refresh() below is the only way it learns anything
        first = w.epoch
        await reg.leave("a", first)  # reaped while cut off, then back: same member
        await reg.put(a, 5.0, first)
        w.registry = RedisRegistry(url)
        await w.refresh()
        now = (await reg.snapshot()).view
        assert w.view.ids == {"a"} and w.epoch == now.epoch > first
        assert [v.epoch for v in views] == [now.epoch]  # passed on: clients adopt it too
    finally:
        await w.close()
        await reg.close()
