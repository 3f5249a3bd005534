"""Cluster membership in Redis: the node registry, heartbeats, and the watcher that turns it into
views.

Keys (``prefix`` defaults to ``kvstore:cluster:``):

    {prefix}nodes     hash  node id -> JSON {address, weight, state, incarnation, ttl_s}
    {prefix}hb:{id}   string with a TTL: the member is alive while it exists
    {prefix}epoch     integer, only grows: bumped on every change (INCR-like, in the scripts)
    {prefix}gone      hash  node id -> epoch at which it left or was reaped
    {prefix}changes   pub/sub channel: the new epoch after every change

Every write is one Lua script, so a change and its epoch bump are atomic. A member leaves by
deleting its entry; a member that stopped heartbeating is *reaped* by any watcher (entry moved to
``gone``). A watcher reaps a member only after its own connection has been up for longer than
that member's TTL, so members that lost Redis together with the watcher get to heartbeat first.

Redis outages: the agent keeps heartbeating into the void and re-registers (same state) once
Redis is back and its entry is missing; the watcher keeps its last view and, when members vanish
without being in ``gone`` (Redis restarted empty), holds the last view for ``resync_s`` so that
members can re-register. Epochs survive a restart because every writer passes the highest epoch
it has seen (``min_epoch``) and the scripts never go below it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from kvstore.errors import KVStoreError, Unavailable
from kvstore_client.membership import ClusterView, Member, OnChange

log = logging.getLogger(__name__)
DEFAULT_PREFIX = "kvstore:cluster:"
REDIS_ERRORS = (RedisError, OSError)

# KEYS: nodes, epoch, gone, hb. ARGV: op ("put" | "leave"), id, json, ttl_ms, min_epoch, channel.
_CHANGE = """
if ARGV[1] == 'leave' then
  redis.call('HDEL', KEYS[1], ARGV[2])
  redis.call('DEL', KEYS[4])
else
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  redis.call('SET', KEYS[4], '1', 'PX', ARGV[4])
  redis.call('HDEL', KEYS[3], ARGV[2])
end
local e = tonumber(redis.call('GET', KEYS[2]) or '0')
local m = tonumber(ARGV[5])
if e < m then e = m end
e = e + 1
redis.call('SET', KEYS[2], e)
if ARGV[1] == 'leave' then redis.call('HSET', KEYS[3], ARGV[2], e) end
redis.call('PUBLISH', ARGV[6], e)
return e
"""
# KEYS: nodes, hb. ARGV: id, ttl_ms. 1 = refreshed, 0 = not registered (Redis lost it).
_HEARTBEAT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  return 1
end
return 0
"""
# KEYS: nodes, epoch, gone. ARGV: hb prefix, min_epoch.
# Returns {epoch, [id, json, alive]..., gone ids}; an epoch below min_epoch means Redis lost it.
_SNAPSHOT = """
local e = tonumber(redis.call('GET', KEYS[2]) or '0')
local m = tonumber(ARGV[2])
if e < m then
  e = m + 1
  redis.call('SET', KEYS[2], e)
end
local flat = redis.call('HGETALL', KEYS[1])
local rows = {}
for i = 1, #flat, 2 do
  rows[#rows + 1] = {flat[i], flat[i + 1], redis.call('EXISTS', ARGV[1] .. flat[i])}
end
return {e, rows, redis.call('HKEYS', KEYS[3])}
"""
# KEYS: nodes, epoch, gone. ARGV: hb prefix, min_epoch, channel, ids... (reap only if still silent)
_REAP = """
local e = tonumber(redis.call('GET', KEYS[2]) or '0')
local m = tonumber(ARGV[2])
if e < m then e = m end
local reaped = 0
for i = 4, #ARGV do
  local silent = redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0
  if silent and redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    reaped = reaped + 1
    redis.call('HSET', KEYS[3], ARGV[i], e + 1)
  end
end
if reaped > 0 then
  e = e + 1
  redis.call('SET', KEYS[2], e)
  redis.call('PUBLISH', ARGV[3], e)
end
return reaped
"""


@dataclass(frozen=True)
class Snapshot:
    view: ClusterView
    ttl_s: dict[str, float]   # each member's heartbeat TTL
    silent: set[str]          # registered members whose heartbeat key expired
    gone: set[str]            # members that left or were reaped


def connect(url: str, timeout_s: float = 1.0) -> aioredis.Redis:
    """A Redis client whose failures surface at once (no hidden retries): callers decide."""
    return aioredis.Redis.from_url(url, socket_timeout=timeout_s,
                                   socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))


class RedisRegistry:
    """The registry's operations, one script each."""

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX, timeout_s: float = 1.0) -> None:
        self.url, self.prefix, self.timeout_s = url, prefix, timeout_s
        self.redis = connect(url, timeout_s)
        self.nodes_key, self.epoch_key = prefix + "nodes", prefix + "epoch"
        self.gone_key, self.channel = prefix + "gone", prefix + "changes"
        self._change = self.redis.register_script(_CHANGE)
        self._heartbeat = self.redis.register_script(_HEARTBEAT)
        self._snapshot = self.redis.register_script(_SNAPSHOT)
        self._reap = self.redis.register_script(_REAP)

    def hb_key(self, node_id: str) -> str:
        return f"{self.prefix}hb:{node_id}"

    async def put(self, member: Member, ttl_s: float, min_epoch: int = 0) -> int:
        """Register or update ``member`` (and its heartbeat); returns the new epoch."""
        doc = json.dumps({"address": member.address, "weight": member.weight,
                          "state": member.state, "incarnation": member.incarnation,
                          "ttl_s": ttl_s})
        keys = [self.nodes_key, self.epoch_key, self.gone_key, self.hb_key(member.node_id)]
        args: list[str | int] = ["put", member.node_id, doc, int(ttl_s * 1000), min_epoch,
                                 self.channel]
        return int(await self._change(keys=keys, args=args))

    async def leave(self, node_id: str, min_epoch: int = 0) -> int:
        keys = [self.nodes_key, self.epoch_key, self.gone_key, self.hb_key(node_id)]
        return int(await self._change(keys=keys, args=["leave", node_id, "", 0, min_epoch,
                                                       self.channel]))

    async def heartbeat(self, node_id: str, ttl_s: float) -> bool:
        keys = [self.nodes_key, self.hb_key(node_id)]
        return bool(await self._heartbeat(keys=keys, args=[node_id, int(ttl_s * 1000)]))

    async def snapshot(self, min_epoch: int = 0) -> Snapshot:
        epoch, rows, gone = await self._snapshot(
            keys=[self.nodes_key, self.epoch_key, self.gone_key],
            args=[self.prefix + "hb:", min_epoch])
        members, ttls, silent = [], {}, set()
        for raw_id, raw_doc, alive in rows:
            node_id, doc = raw_id.decode(), json.loads(raw_doc)
            members.append(Member(node_id, doc["address"], float(doc["weight"]), doc["state"],
                                  doc.get("incarnation", "")))
            ttls[node_id] = float(doc["ttl_s"])
            if not alive:
                silent.add(node_id)
        members.sort(key=lambda m: m.node_id)
        return Snapshot(ClusterView(int(epoch), tuple(members)), ttls, silent,
                        {g.decode() for g in gone})

    async def reap(self, node_ids: list[str], min_epoch: int = 0) -> int:
        """Remove members whose heartbeat key is (still) missing; returns how many."""
        return int(await self._reap(keys=[self.nodes_key, self.epoch_key, self.gone_key],
                                    args=[self.prefix + "hb:", min_epoch, self.channel,
                                          *node_ids]))

    async def publish_counters(self, node_id: str, counters: dict[str, object]) -> None:
        """A member's rebalance counters, for `kvstore cluster status` and tests."""
        await self.redis.hset(self.prefix + "rebalance", node_id, json.dumps(counters))

    async def counters(self) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(self.prefix + "rebalance")
        return {_text(k): json.loads(v) for k, v in raw.items()}

    async def close(self) -> None:
        await self.redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class HeartbeatAgent:
    """Keeps one member registered: heartbeats every ttl/3, re-registers after Redis lost it."""

    def __init__(self, registry: RedisRegistry, member: Member, ttl_s: float,
                 min_epoch: Callable[[], int] = lambda: 0) -> None:
        self.registry, self.member, self.ttl_s = registry, member, ttl_s
        self._min_epoch = min_epoch
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self.registered = False
        self.reregistrations = 0

    async def start(self) -> None:
        """Register (Redis must be reachable now), then heartbeat in the background."""
        try:
            await self.registry.put(self.member, self.ttl_s, self._min_epoch())
        except REDIS_ERRORS as exc:
            raise Unavailable(f"cannot register {self.member.node_id} in Redis at "
                              f"{self.registry.url}: {exc}") from exc
        self.registered = True
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def set_state(self, state: str) -> None:
        """Publish a new state (e.g. draining); if Redis is down, it is sent when it returns."""
        self.member = replace(self.member, state=state)
        try:
            await self.registry.put(self.member, self.ttl_s, self._min_epoch())
        except REDIS_ERRORS as exc:
            self.registered = False  # the loop re-registers with the new state
            log.warning("Redis unreachable; state %s will be published later: %s", state, exc)

    async def _run(self) -> None:
        down = False
        while True:
            await _pause(self._stopping, self.ttl_s / 3)
            if self._stopping.is_set():
                return
            try:
                if not self.registered or not await self.registry.heartbeat(
                        self.member.node_id, self.ttl_s):
                    await self.registry.put(self.member, self.ttl_s, self._min_epoch())
                    self.reregistrations += 1
                    log.info("re-registered %s in Redis", self.member.node_id)
                    self.registered = True
                if down:
                    log.info("Redis reachable again")
                down = False
            except REDIS_ERRORS as exc:
                if not down:
                    log.warning("Redis unreachable, serving with the last ring: %s", exc)
                down = True

    def stop(self) -> None:
        """Stop heartbeating without leaving (the entry expires after the TTL: a crash)."""
        self._stopping.set()

    async def leave(self) -> None:
        self._stopping.set()
        await _stop_task(self._task, 2 * self.registry.timeout_s + 1)
        self._task = None
        try:
            await self.registry.leave(self.member.node_id, self._min_epoch())
        except REDIS_ERRORS as exc:
            log.warning("could not deregister %s (Redis down); it will be reaped after its "
                        "TTL: %s", self.member.node_id, exc)


class RedisMembership:
    """A MembershipSource that watches the registry (pub/sub for speed, polling as a floor)."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, poll_s: float = 0.5,
                 resync_s: float = 10.0, timeout_s: float = 1.0) -> None:
        self.registry = RedisRegistry(url, prefix, timeout_s)
        self.poll_s, self.resync_s, self.timeout_s = poll_s, resync_s, timeout_s
        self._stopping = asyncio.Event()
        self._view: ClusterView | None = None
        self._on_change: OnChange | None = None
        self._task: asyncio.Task | None = None
        self._connected_since: float | None = None
        self._hold_since: float | None = None
        self.reaped = 0

    @property
    def view(self) -> ClusterView | None:
        return self._view

    @property
    def epoch(self) -> int:
        return self._view.epoch if self._view else 0

    @property
    def connected(self) -> bool:
        return self._connected_since is not None

    async def start(self, on_change: OnChange) -> ClusterView:
        try:
            await self.refresh()
        except REDIS_ERRORS as exc:
            raise Unavailable(f"cannot read the cluster registry in Redis at "
                              f"{self.registry.url}: {exc}") from exc
        assert self._view is not None
        self._on_change = on_change
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self._view

    async def refresh(self) -> None:
        """Read the registry once, reap silent members, and apply what changed."""
        now = time.monotonic()
        if self._connected_since is None:
            self._connected_since = now
        snap = await self.registry.snapshot(self.epoch)
        up_for = now - self._connected_since
        silent = sorted(n for n in snap.silent if up_for > snap.ttl_s[n])
        if silent:
            self.reaped += await self.registry.reap(silent, snap.view.epoch)
            snap = await self.registry.snapshot(self.epoch)
        self._accept(snap)

    def _accept(self, snap: Snapshot) -> None:
        cur, new = self._view, snap.view
        if cur is not None:
            if new.epoch < cur.epoch or (new.epoch == cur.epoch and new.same_members(cur)):
                return
            # Same members at a newer epoch (this watcher missed a leave and re-join while cut
            # off from Redis, or members re-registered after Redis restarted empty): nothing
            # moves, but the epoch is adopted and passed on, else this member would report a
            # stale epoch forever and the ring would never look converged.
            vanished = cur.ids - new.ids - snap.gone
            if vanished:  # Redis lost them (restart): give them time to re-register
                now = time.monotonic()
                if self._hold_since is None:
                    self._hold_since = now
                    log.warning("members %s vanished from Redis without leaving; keeping the "
                                "last ring for up to %.1f s", sorted(vanished), self.resync_s)
                if now - self._hold_since < self.resync_s:
                    return
        self._hold_since = None
        self._view = new
        if cur is not None and self._on_change is not None:
            self._on_change(new)

    async def _run(self) -> None:
        pubsub = None
        try:
            while not self._stopping.is_set():
                try:
                    if pubsub is None:
                        pubsub = self.registry.redis.pubsub()
                        await pubsub.subscribe(self.registry.channel)
                    await pubsub.get_message(ignore_subscribe_messages=True,
                                             timeout=self.poll_s)
                    await self.refresh()
                except REDIS_ERRORS as exc:
                    if self._connected_since is not None:
                        log.warning("Redis unreachable, keeping the last ring (epoch %d): %s",
                                    self.epoch, exc)
                    self._connected_since = None
                    if pubsub is not None:
                        await _close_quietly(pubsub)
                        pubsub = None
                    await _pause(self._stopping, self.poll_s)
                except (KVStoreError, ValueError, KeyError, TypeError):
                    log.exception("unreadable cluster registry entry; keeping the last ring")
                    await _pause(self._stopping, self.poll_s)
        finally:
            if pubsub is not None:
                await _close_quietly(pubsub)

    async def close(self) -> None:
        """Stop watching: the loop is asked to stop, then cancelled if it is still waiting for
        a message; either way it closes its pub/sub connection itself (a pub/sub connection left
        open can block the pool's close), and the pool's close is bounded too."""
        self._stopping.set()
        await _stop_task(self._task, self.timeout_s)
        self._task = None
        await close_registry(self.registry)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass  # the normal case: nobody asked us to stop


async def _stop_task(task: asyncio.Task | None, grace_s: float) -> None:
    if task is None:
        return
    try:
        await asyncio.wait_for(asyncio.shield(task), grace_s)
    except TimeoutError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def close_registry(registry: RedisRegistry, timeout_s: float = 2.0) -> None:
    try:
        await asyncio.wait_for(registry.close(), timeout_s)
    except TimeoutError:
        log.warning("closing the Redis connections to %s took over %.0f s; abandoned",
                    registry.url, timeout_s)


async def _close_quietly(pubsub: aioredis.client.PubSub) -> None:
    try:
        await pubsub.aclose()
    except REDIS_ERRORS as exc:  # the connection is already gone; nothing left to release
        log.debug("closing a broken pub/sub connection: %s", exc)
