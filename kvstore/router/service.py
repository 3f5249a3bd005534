"""gRPC Router service: a thin layer that converts messages and delegates to ``Router``.

This is the only module that turns router messages into domain calls and back. One lock
serializes calls into the router (a routing decision takes tens of microseconds, so a lock is
cheaper than making every structure concurrent). Errors from the library keep their status codes
(kvstore.errors); anything else becomes INTERNAL with the message.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kvstore.errors import ConfigError, InvalidArgument, KVStoreError
from kvstore.router.blocks import block_hashes
from kvstore.router.config import RouterConfig
from kvstore.router.core import Router
from kvstore.router.rebalance import Migration
from kvstore.v1 import router_pb2, router_pb2_grpc

T = TypeVar("T")
SERVICE_NAME = "kvstore.v1.Router"


@dataclass(frozen=True)
class RouterServiceConfig:
    router: RouterConfig = RouterConfig()
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port (tests)
    max_workers: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if self.max_workers < 1:
            raise ConfigError(f"max_workers must be >= 1, got {self.max_workers}")


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, router: Router, clock: Callable[[], float] = time.monotonic) -> None:
        self._router = router
        self._clock = clock
        self._lock = threading.Lock()
        self._outbox: dict[str, list[Migration]] = defaultdict(list)  # source worker -> moves

    def _call(self, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
        try:
            with self._lock:
                return fn()
        except KVStoreError as exc:
            context.abort(exc.code, str(exc))
            raise  # abort raises; this line only satisfies type checkers

    def Join(self, request, context):  # noqa: N802 (gRPC method names)
        def join() -> router_pb2.RouterJoinResponse:
            epoch = self._router.join(
                request.worker_id, request.kv_capacity_tokens, request.weight or 1.0
            )
            return router_pb2.RouterJoinResponse(ring_epoch=epoch, workers=self._router.workers)

        return self._call(context, join)

    def Leave(self, request, context):  # noqa: N802
        def leave() -> router_pb2.RouterLeaveResponse:
            orphaned = self._router.leave(request.worker_id)
            self._outbox.pop(request.worker_id, None)
            return router_pb2.RouterLeaveResponse(
                ring_epoch=self._router.ring.epoch, orphaned_request_ids=orphaned
            )

        return self._call(context, leave)

    def ReportLoad(self, request, context):  # noqa: N802
        def report() -> router_pb2.ReportLoadResponse:
            self._router.report_load(
                request.worker_id,
                request.pending_prefill_tokens,
                request.started_request_ids,
                now_s=self._clock(),
            )
            moves = self._outbox.pop(request.worker_id, [])
            return router_pb2.ReportLoadResponse(
                migrations=[
                    router_pb2.RouteMigration(
                        request_id=m.request_id,
                        source_worker=m.source,
                        target_worker=m.target,
                        gain_s=m.gain_s,
                    )
                    for m in moves
                ],
                ring_epoch=self._router.ring.epoch,
            )

        return self._call(context, report)

    def Route(self, request, context):  # noqa: N802
        def route() -> router_pb2.RouteResponse:
            blocks, prompt_tokens = self._prompt(request)
            d = self._router.route(request.request_id, blocks, prompt_tokens, self._clock())
            for m in d.migrations:
                self._outbox[m.source].append(m)
            return router_pb2.RouteResponse(
                worker_id=d.worker,
                candidates=list(d.candidates),
                key_blocks=d.key_blocks,
                reason=d.reason,
                predicted_ttft_s=d.predicted_ttft_s,
                cached_tokens=d.cached_tokens,
                ring_epoch=self._router.ring.epoch,
            )

        return self._call(context, route)

    def _prompt(self, request: router_pb2.RouteRequest) -> tuple[list[int], int]:
        if not request.request_id:
            raise InvalidArgument("request_id is required")
        if request.token_ids and request.block_hashes:
            raise InvalidArgument("send token_ids or block_hashes, not both")
        if request.token_ids:
            tokens = list(request.token_ids)
            return block_hashes(tokens, self._router.config.block_tokens), len(tokens)
        if not request.block_hashes:
            raise InvalidArgument("a prompt needs token_ids or block_hashes")
        blocks = list(request.block_hashes)
        size = self._router.config.block_tokens
        if not (len(blocks) - 1) * size < request.prompt_tokens <= len(blocks) * size:
            raise InvalidArgument(
                f"prompt_tokens={request.prompt_tokens} does not match {len(blocks)} blocks of "
                f"{size} tokens"
            )
        return blocks, request.prompt_tokens


def create_server(config: RouterServiceConfig) -> tuple[grpc.Server, int, Router]:
    """Build (not start) a server with the Router, health and reflection services."""
    router = Router(config.router)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers))
    router_pb2_grpc.add_RouterServicer_to_server(RouterServicer(router), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    return server, port, router
