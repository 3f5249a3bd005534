"""ClusterNode: makes a running StoreNode a cluster member (`kvstore serve --redis-url ...`).

    start:  register in Redis -> watch the registry -> rebalance on every new view
    drain:  health NOT_SERVING -> state=draining (clients stop writing here) -> hand every chunk
            to its owners -> leave
    leave:  deregister at once (chunks stay where they are; replicas elsewhere still serve)

The node keeps serving whatever happens to Redis: the watcher keeps the last view and the agent
re-registers when Redis returns. Rebalance counters are published to ``{prefix}rebalance`` (a
hash: node id -> JSON) for `kvstore cluster status` and tests.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import replace
from typing import TYPE_CHECKING

from grpc_health.v1 import health_pb2

from kvstore.cluster.rebalance import CoreChunks, Rebalancer
from kvstore.cluster.security import peer_security
from kvstore.config import NodeConfig
from kvstore.server.node import SERVICE_NAME
from kvstore_client.membership import DRAINING, ClusterView, Member
from kvstore_client.redis_membership import (
    DEFAULT_PREFIX,
    REDIS_ERRORS,
    HeartbeatAgent,
    RedisMembership,
    RedisRegistry,
    close_registry,
)

if TYPE_CHECKING:
    from kvstore.server.node import StoreNode

log = logging.getLogger(__name__)


class ClusterNode:
    def __init__(self, node: StoreNode, config: NodeConfig, *, prefix: str = DEFAULT_PREFIX,
                 poll_s: float = 0.5) -> None:
        if not config.redis_url:
            raise ValueError("ClusterNode needs config.redis_url")
        self.node, self.config = node, config
        address = f"{config.advertise_host or config.host}:{node.port}"
        self.member = Member(config.node_id or address, address, config.capacity_weight,
                             incarnation=secrets.token_hex(8))
        ttl = config.heartbeat_ttl_s
        self.registry = RedisRegistry(config.redis_url, prefix)
        self.watcher = RedisMembership(config.redis_url, prefix=prefix, poll_s=poll_s,
                                       resync_s=3 * ttl)
        self.agent = HeartbeatAgent(self.registry, self.member, ttl,
                                    min_epoch=lambda: self.watcher.epoch)
        self.rebalancer = Rebalancer(self.member.node_id, CoreChunks(node.core),
                                     replication=config.replication,
                                     bytes_per_s=config.rebalance_bytes_per_s,
                                     security=peer_security(config))
        self._report_task: asyncio.Task | None = None

    @property
    def node_id(self) -> str:
        return self.member.node_id

    async def start(self) -> ClusterView:
        await self.agent.start()
        try:
            view = await self.watcher.start(self.rebalancer.update)
        except BaseException:
            await self.agent.leave()
            raise
        self.rebalancer.start(view)
        self._report_task = asyncio.get_running_loop().create_task(self._report())
        log.info("joined the cluster at %s as %s (epoch %d, %d members)", self.config.redis_url,
                 self.node_id, view.epoch, len(view.members))
        return view

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Stop taking writes, hand every chunk over, leave; True if nothing was left behind."""
        for name in ("", SERVICE_NAME):
            await self.node.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.agent.set_state(DRAINING)
        log.info("draining %s: handing chunks to their new owners", self.node_id)
        timeout = self.config.drain_timeout_s if timeout_s is None else timeout_s
        ok = await self.rebalancer.drain(self._drain_view, timeout)
        await self._publish_stats()
        await self.leave()
        return ok

    def _drain_view(self) -> ClusterView:
        """The latest view with this node marked draining (whatever Redis says right now)."""
        view = self.watcher.view
        assert view is not None
        me = replace(self.member, state=DRAINING)
        others = tuple(m for m in view.members if m.node_id != self.node_id)
        return ClusterView(view.epoch, (*others, me))

    async def leave(self) -> None:
        log.info("leaving the cluster as %s", self.node_id)
        if self._report_task is not None:
            self._report_task.cancel()
            await asyncio.gather(self._report_task, return_exceptions=True)
            self._report_task = None
        await self.rebalancer.close()
        await self.agent.leave()
        await self.watcher.close()
        await close_registry(self.registry)
        log.info("left the cluster")

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.agent.ttl_s / 3)
            await self._publish_stats()

    async def _publish_stats(self) -> None:
        doc = dict(self.rebalancer.stats.as_dict(), epoch=self.watcher.epoch,
                   idle=self.rebalancer.idle, state=self.agent.member.state)
        try:
            await self.registry.publish_counters(self.node_id, doc)
        except REDIS_ERRORS as exc:  # counters only; the heartbeat agent reports outages
            log.debug("could not publish rebalance counters: %s", exc)
