"""A node's health, for gRPC probes (grpc.health.v1) and plain HTTP probes alike.

``NodeHealth`` is the grpc.health.v1 servicer the node registers; it also keeps a copy of every
status it is given, so that the HTTP endpoints on the metrics port (``/healthz``, ``/readyz``,
kvstore/server/metrics.py), which run in their own threads, answer from the very statuses a gRPC
probe sees: the drain (kvstore/cluster/node.py) sets NOT_SERVING through ``set`` and both kinds
of probe see it. HTTP probes exist because kubelet's gRPC probes speak plaintext only, so a node
with TLS on gRPC can be probed over the (plaintext) metrics port instead (deploy/README.md).
"""

from __future__ import annotations

import asyncio
import threading

from grpc_health.v1 import health, health_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
LIVENESS_WAIT_S = 2.0  # how long the event loop may take to run a callback before /healthz fails

# (ok, reason): the reason is the HTTP probe's response body
ProbeResult = tuple[bool, str]


class NodeHealth(health.aio.HealthServicer):
    def __init__(self, ready_service: str) -> None:
        super().__init__()
        self.ready_service = ready_service   # readiness follows this service (KVStore)
        # Written on the node's loop, read by HTTP threads: single dict stores, no lock needed.
        self._status: dict[str, int] = {}
        self._shutting_down = False
        self._loop: asyncio.AbstractEventLoop | None = None  # set once the node serves

    async def set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus
                  ) -> None:
        await super().set(service, status)
        if not self._shutting_down:  # the base class ignores set() once shutting down
            self._status[service] = status

    async def enter_graceful_shutdown(self) -> None:
        self._shutting_down = True
        await super().enter_graceful_shutdown()

    def serving_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """The node serves RPCs on ``loop`` from now on (liveness watches it)."""
        self._loop = loop

    def live(self) -> ProbeResult:
        """``/healthz``: the node has started and its event loop still runs callbacks (a wedged
        loop serves no RPC, while this HTTP thread would still answer). Draining nodes are
        live: a drain must not restart the container."""
        loop = self._loop
        if loop is None:
            return False, "starting"
        ran = threading.Event()
        try:
            loop.call_soon_threadsafe(ran.set)
        except RuntimeError:  # the loop was closed: the node has stopped
            return False, "stopped"
        if not ran.wait(LIVENESS_WAIT_S):
            return False, f"event loop unresponsive for {LIVENESS_WAIT_S:g} s"
        return True, "alive"

    def ready(self) -> ProbeResult:
        """``/readyz``: the KVStore service is SERVING (not starting, draining or stopping)."""
        if self._shutting_down:
            return False, "shutting down"
        status = self._status.get(self.ready_service)
        if status is None:
            return False, "starting"
        if status != SERVING:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            return False, f"{self.ready_service} is {name} (draining)"
        return True, "ready"


__all__ = ["LIVENESS_WAIT_S", "NodeHealth", "ProbeResult"]
