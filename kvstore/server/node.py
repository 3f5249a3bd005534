"""A store node: gRPC (KVStore, health, reflection) plus the bulk data plane over one StoreCore.

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
from kvstore.server.core import StoreCore
from kvstore.server.dataplane import DataPlaneServer
from kvstore.server.service import KVStoreServicer
from kvstore.v1 import kvstore_pb2, kvstore_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = kvstore_pb2.DESCRIPTOR.services_by_name["KVStore"].full_name
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.max_send_message_length", 8 << 20),
    ("grpc.http2.write_buffer_size", 8 << 20),
    ("grpc.so_reuseport", 0),
]


class StoreNode:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.core = StoreCore(config)
        self.server: grpc.aio.Server | None = None
        self.dataplane: DataPlaneServer | None = None
        self.health = health.aio.HealthServicer()
        self.port = 0

    async def start(self) -> int:
        cfg = self.config
        if cfg.data_plane:
            self.dataplane = DataPlaneServer(self.core, cfg.host, cfg.data_port)
            self.core.data_port = self.dataplane.port
            self.dataplane.start()
        self.server = grpc.aio.server(options=GRPC_OPTIONS)
        kvstore_pb2_grpc.add_KVStoreServicer_to_server(KVStoreServicer(self.core), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.port = self.server.add_insecure_port(f"{cfg.host}:{cfg.port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {cfg.host}:{cfg.port}")
        if not cfg.node_id:  # with port 0, resolved_node_id would say ":0" for every node
            self.core.node_id = f"{cfg.host}:{self.port}"
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("kvstore node %s serving gRPC on %s:%d, data plane on %s", self.core.node_id,
                 cfg.host, self.port, self.core.data_port or "off")
        return self.port

    async def stop(self, grace_s: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        if self.dataplane:
            self.dataplane.stop()
        if self.server:
            await self.server.stop(grace_s)
        self.core.close()

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"


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
