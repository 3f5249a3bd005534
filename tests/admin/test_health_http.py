"""/healthz and /readyz on the metrics port: the HTTP probes the TLS deployment uses
(deploy/k8s/components/tls), answered from the statuses grpc.health.v1 reports."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvstore import procs
from kvstore.server.health import LIVENESS_WAIT_S, NodeHealth
from kvstore.server.node import SERVICE_NAME, NodeThread


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def grpc_status(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_probes_of_a_serving_node_and_metrics_on_other_paths(metrics_node):
    node = metrics_node()
    assert http_get(node.metrics_port, "/healthz") == (200, "alive\n")
    assert http_get(node.metrics_port, "/readyz") == (200, "ready\n")
    for path in ("/metrics", "/"):  # every other path is still the exposition
        status, body = http_get(node.metrics_port, path)
        assert status == 200 and "kvstore_uptime_seconds" in body, path


def test_not_live_nor_ready_before_the_node_serves():
    health = NodeHealth(ready_service=SERVICE_NAME)
    assert health.live() == (False, "starting")
    assert health.ready() == (False, "starting")


def test_drain_turns_readyz_503_and_healthz_stays_200(node_config):
    """A real drain (kvstore/cluster/node.py, as SIGTERM or `kvstore admin drain` runs it): the
    KVStore service turns NOT_SERVING for gRPC probes and /readyz alike; the node stays live."""
    from kvstore.cluster.node import ClusterNode

    redis = procs.start_redis()
    t = NodeThread(node_config(metrics_port=0, redis_url=f"redis://{redis.address}",
                               heartbeat_ttl_s=1.5))
    try:
        node = t.start()
        member = ClusterNode(node, node.config)
        asyncio.run_coroutine_threadsafe(member.start(), t.loop).result(30)
        assert http_get(node.metrics_port, "/readyz") == (200, "ready\n")
        asyncio.run_coroutine_threadsafe(member.drain(5.0), t.loop).result(30)
        assert grpc_status(node.address, SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING
        status, body = http_get(node.metrics_port, "/readyz")
        assert status == 503 and "NOT_SERVING (draining)" in body
        assert http_get(node.metrics_port, "/healthz") == (200, "alive\n")
        # then the node stops: graceful shutdown is never ready again
        asyncio.run_coroutine_threadsafe(node.health.enter_graceful_shutdown(), t.loop).result(5)
        assert http_get(node.metrics_port, "/readyz") == (503, "shutting down\n")
        assert http_get(node.metrics_port, "/healthz") == (200, "alive\n")
    finally:
        t.stop()
        redis.kill()


def test_healthz_fails_while_the_event_loop_is_wedged(metrics_node):
    """The HTTP server runs in its own thread; /healthz must still notice a loop that runs no
    callbacks (such a node answers no RPC), and recover when the loop does."""
    node = metrics_node()
    loop = node.health._loop
    assert loop is not None
    wedge_s = LIVENESS_WAIT_S + 2.0
    loop.call_soon_threadsafe(time.sleep, wedge_s)  # blocks the node's loop
    started = time.monotonic()
    status, body = http_get(node.metrics_port, "/healthz")
    assert status == 503 and "event loop unresponsive" in body
    assert time.monotonic() - started == pytest.approx(LIVENESS_WAIT_S, abs=1.5)
    assert http_get(node.metrics_port, "/readyz")[0] == 200  # readiness reads statuses only
    deadline = time.monotonic() + wedge_s + 10
    while http_get(node.metrics_port, "/healthz")[0] != 200:
        assert time.monotonic() < deadline, "/healthz did not recover after the loop did"
        time.sleep(0.2)
