"""A store node: gRPC (KVStore, Admin, health, reflection), the bulk data plane and the HTTP
endpoint (Prometheus /metrics, /healthz, /readyz: kvstore/server/metrics.py), all over one
StoreCore.

``create_server(config)`` returns a started node and its gRPC port, so tests bind port 0.
``NodeThread`` runs a node on its own event loop in a background thread (tests, demo, bench).
"""

from __future__ import annotations

import asyncio
import logging
import threading

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kvstore.config import NodeConfig
from kvstore.server import admin
from kvstore.server.auth import AuthInterceptor
from kvstore.server.core import StoreCore
from kvstore.server.dataplane import DataPlaneServer
from kvstore.server.health import NodeHealth
from kvstore.server.metrics import MetricsServer
from kvstore.server.service import KVStoreServicer, RejectUndecodable
from kvstore.server.tls import server_credentials, server_ssl_context
from kvstore.v1 import kvstore_pb2, kvstore_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = kvstore_pb2.DESCRIPTOR.services_by_name["KVStore"].full_name
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.max_send_message_length", 8 << 20),
    ("grpc.http2.write_buffer_size", 8 << 20),
    ("grpc.so_reuseport", 0),
]
# RPCs in flight at once, all clients together; more are refused with RESOURCE_EXHAUSTED rather
# than queued, so a flood of open streams cannot grow the node's memory without bound (each may
# hold a receive buffer of up to grpc.max_receive_message_length). Generous: a worker keeps a few
# calls in flight, and a node serves a few hundred workers.
MAX_CONCURRENT_RPCS = 4096


class StoreNode:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.core = StoreCore(config)
        self.server: grpc.aio.Server | None = None
        self.dataplane: DataPlaneServer | None = None
        self.health = NodeHealth(ready_service=SERVICE_NAME)  # also read by /healthz, /readyz
        self.port = 0
        self.metrics: MetricsServer | None = None
        # Admin/Drain calls this (cluster members only: cli/serve.py sets it); None = standalone
        self.drain_hook: admin.DrainHook | None = None

    async def start(self) -> int:
        cfg = self.config
        creds, ssl_ctx = server_credentials(cfg), server_ssl_context(cfg)  # TLS: docs/SECURITY.md
        _warn_if_exposed(cfg, self.core.auth is not None)
        if cfg.data_plane:
            self.dataplane = DataPlaneServer(self.core, cfg.host, cfg.data_port, ssl_ctx)
            self.core.data_port = self.dataplane.port
            self.dataplane.start()
        auth = [AuthInterceptor(self.core.auth)] if self.core.auth is not None else []
        self.server = grpc.aio.server(options=GRPC_OPTIONS,
                                      interceptors=[*auth, RejectUndecodable()],
                                      maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS)
        kvstore_pb2_grpc.add_KVStoreServicer_to_server(KVStoreServicer(self.core), self.server)
        kvstore_pb2_grpc.add_AdminServicer_to_server(
            admin.AdminServicer(self.core, lambda: self.drain_hook), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, admin.SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
            self.server)
        address = f"{cfg.host}:{cfg.port}"
        self.port = (self.server.add_secure_port(address, creds) if creds is not None
                     else self.server.add_insecure_port(address))
        if self.port == 0:
            raise OSError(f"cannot listen on {cfg.host}:{cfg.port}")
        if not cfg.node_id:  # with port 0, resolved_node_id would say ":0" for every node
            self.core.node_id = f"{cfg.host}:{self.port}"
        if cfg.metrics_port >= 0:
            try:
                self.metrics = MetricsServer(self.core.stats_pb, cfg.host, cfg.metrics_port,
                                             live=self.health.live, ready=self.health.ready)
            except BaseException:  # a configured endpoint that cannot start stops startup
                if self.dataplane:
                    self.dataplane.stop()
                raise
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.health.serving_on(asyncio.get_running_loop())
        log.info("kvstore node %s serving gRPC on %s:%d, data plane on %s, metrics on %s",
                 self.core.node_id, cfg.host, self.port, self.core.data_port or "off",
                 self.metrics_port or "off")
        return self.port

    async def stop(self, grace_s: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        if self.dataplane:
            self.dataplane.stop()
        if self.server:
            await self.server.stop(grace_s)
        if self.metrics:
            self.metrics.stop()
        self.core.close()

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    @property
    def metrics_port(self) -> int:
        """The bound Prometheus port (0 = no metrics endpoint)."""
        return self.metrics.port if self.metrics else 0


def _warn_if_exposed(cfg: NodeConfig, auth: bool) -> None:
    """Security is off only in the embedded local default; say so when a node runs without it
    where others can reach it, or sends tokens in the clear."""
    if not auth and cfg.insecure:
        log.warning("kvstore node on %s with insecure: true: anyone who can reach it can "
                    "read, write and delete every chunk (docs/SECURITY.md)", cfg.host)
    if auth and not cfg.tls_cert:
        log.warning("auth is on but TLS is off: tokens and session ids cross the network in "
                    "plaintext; set tls_cert and tls_key (docs/SECURITY.md)")


async def create_server(config: NodeConfig) -> tuple[StoreNode, int]:
    node = StoreNode(config)
    port = await node.start()
    return node, port


class NodeThread:
    """A node on a private event loop in a daemon thread; ``with NodeThread(cfg) as node: ...``."""

    def __init__(self, config: NodeConfig) -> None:
        self.node = StoreNode(config)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="kvstore-node")

    def start(self) -> StoreNode:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.node.start(), self.loop).result(30)
        return self.node

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.node.stop(0.5), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> StoreNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
