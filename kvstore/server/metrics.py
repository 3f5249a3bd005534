"""Prometheus metrics of one node, over HTTP (``metrics_port``; -1 = off, 0 = a free port).

The collector reads the very snapshot the ``KVStore/Stats`` RPC returns (``StoreCore.stats_pb``)
on every scrape, so `kvstore admin stats` and Prometheus can never disagree: no second set of
counters exists. Every metric carries ``node``; tier metrics add ``tier``, latencies ``op`` and
``quantile``, tenant metrics ``tenant`` ("" = clients that name no tenant).

Latency quantiles are gauges over the node's window of the last 4096 operations per op (the
window kvstore/server/stats.py keeps), not a Prometheus summary: the node keeps no all-time sum.

The HTTP server (a daemon thread per node, a thread per request) answers ``/healthz`` and
``/readyz`` with the node's probes (kvstore/server/health.py: 200, or 503 and the reason) and
every other path (``/metrics``) with the text exposition format. It is plaintext and has no
auth, whatever the gRPC port's TLS: docs/SECURITY.md says what it exposes and how to fence it.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvstore.errors import ConfigError
from kvstore.server.health import ProbeResult
from kvstore.v1 import kvstore_pb2 as pb

log = logging.getLogger(__name__)

# (metric name without _total, help, StatsResponse field) per node
_NODE_COUNTERS = (
    ("kvstore_hits", "Gets that found their chunk", "hits"),
    ("kvstore_misses", "Gets that found no chunk", "misses"),
    ("kvstore_lookup_keys", "Keys asked about by Lookup calls", "lookup_keys"),
    ("kvstore_lookup_hits", "Lookup keys found", "lookup_hits"),
    ("kvstore_lookup_misses", "Lookup keys not found", "lookup_misses"),
    ("kvstore_received_bytes", "Payload bytes stored by puts", "bytes_in"),
    ("kvstore_sent_bytes", "Payload bytes served by gets", "bytes_out"),
    ("kvstore_puts", "Chunks stored", "puts"),
    ("kvstore_rejected_puts", "Puts refused (bad input, no room, checksum mismatch)", "rejected"),
    ("kvstore_prefetches", "Disk chunks promoted to memory by lookup prefetch", "prefetches"),
)
# (name, help, TierStats field, is_counter) per tier
_TIER_METRICS = (
    ("kvstore_tier_capacity_bytes", "Capacity of the tier", "capacity_bytes", False),
    ("kvstore_tier_used_bytes", "Bytes in use in the tier", "used_bytes", False),
    ("kvstore_tier_chunks", "Chunks held by the tier", "chunks", False),
    ("kvstore_tier_hits", "Gets served from the tier", "hits", True),
    ("kvstore_tier_evictions", "Chunks that left the tier to make room", "evictions", True),
    ("kvstore_tier_demotions", "Chunks demoted into the tier from the one above",
     "demotions_in", True),
    ("kvstore_tier_promotions", "Chunks promoted from the tier to the top memory tier",
     "promotions_out", True),
    ("kvstore_tier_corrupt_chunks_dropped", "Chunks dropped because they failed their checksum",
     "corrupt_dropped", True),
)
# (name, help, TenantStats field, is_counter) per tenant
_TENANT_METRICS = (
    ("kvstore_tenant_hits", "Gets that found their chunk, per tenant", "hits", True),
    ("kvstore_tenant_misses", "Gets that found no chunk, per tenant", "misses", True),
    ("kvstore_tenant_lookup_keys", "Keys asked about by Lookup calls, per tenant",
     "lookup_keys", True),
    ("kvstore_tenant_lookup_hits", "Lookup keys found, per tenant", "lookup_hits", True),
    ("kvstore_tenant_lookup_misses", "Lookup keys not found, per tenant", "lookup_misses", True),
    ("kvstore_tenant_received_bytes", "Payload bytes stored, per tenant", "bytes_in", True),
    ("kvstore_tenant_sent_bytes", "Payload bytes served, per tenant", "bytes_out", True),
    ("kvstore_tenant_used_bytes", "Stored bytes (memory and disk copies), per tenant",
     "used_bytes", False),
    ("kvstore_tenant_chunks", "Chunks stored, per tenant", "chunks", False),
)


def _family(name: str, doc: str, labels: list[str], counter: bool
            ) -> CounterMetricFamily | GaugeMetricFamily:
    return (CounterMetricFamily(name, doc, labels=labels) if counter
            else GaugeMetricFamily(name, doc, labels=labels))


def metric_families(s: pb.StatsResponse) -> Iterator[Metric]:
    """The metrics of one Stats snapshot (names follow Prometheus conventions)."""
    node = s.node_id
    for name, doc, field in _NODE_COUNTERS:
        fam = CounterMetricFamily(name, doc, labels=["node"])
        fam.add_metric([node], getattr(s, field))
        yield fam
    up = GaugeMetricFamily("kvstore_uptime_seconds", "Seconds since the node started",
                           labels=["node"])
    up.add_metric([node], s.uptime_s)
    yield up
    for name, doc, field, counter in _TIER_METRICS:
        per_tier = _family(name, doc, ["node", "tier"], counter)
        for t in s.tiers:
            per_tier.add_metric([node, t.name], getattr(t, field))
        yield per_tier
    ops = CounterMetricFamily("kvstore_operations", "Operations timed, per op",
                              labels=["node", "op"])
    lat = GaugeMetricFamily("kvstore_latency_seconds", "Latency quantiles over the last 4096 "
                            "operations, per op", labels=["node", "op", "quantile"])
    for op in s.latencies:
        ops.add_metric([node, op.op], op.count)
        lat.add_metric([node, op.op, "0.5"], op.p50_ms / 1e3)
        lat.add_metric([node, op.op, "0.99"], op.p99_ms / 1e3)
    yield ops
    yield lat
    for name, doc, field, counter in _TENANT_METRICS:
        per_tenant = _family(name, doc, ["node", "tenant"], counter)
        for tn in s.tenants:
            per_tenant.add_metric([node, tn.tenant], getattr(tn, field))
        yield per_tenant


class StatsCollector(Collector):
    """A custom collector: every scrape calls ``snapshot`` (StoreCore.stats_pb) once."""

    def __init__(self, snapshot: Callable[[], pb.StatsResponse]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from metric_families(self._snapshot())


Probe = Callable[[], ProbeResult]
PROBE_PATHS = ("/healthz", "/readyz")


def _always_ok() -> ProbeResult:
    return True, "ok"


def http_app(registry: CollectorRegistry, live: Probe, ready: Probe) -> Callable[..., Any]:
    """The WSGI app: the two probe paths, else prometheus_client's exposition."""
    metrics_app = make_wsgi_app(registry)
    probes = dict(zip(PROBE_PATHS, (live, ready), strict=True))

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        probe = probes.get(environ.get("PATH_INFO", ""))
        if probe is None:
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        ok, why = probe()
        body = f"{why}\n".encode()
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "text/plain; charset=utf-8"),
                        ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
        return [body]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scrape must not keep the process alive


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a probe every few seconds would flood the log


def _listen(host: str, port: int, app: Callable[..., Any]) -> WSGIServer:
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                flags=socket.AI_PASSIVE)[0][0]
    server_class = type("_FamilyServer", (_Server,), {"address_family": family})
    return make_server(host, port, app, server_class, handler_class=_QuietHandler)


class MetricsServer:
    """The node's HTTP endpoint on ``host:port`` (0 = a free port) in a daemon thread:
    /metrics, and /healthz and /readyz answered by ``live`` and ``ready``."""

    def __init__(self, snapshot: Callable[[], pb.StatsResponse], host: str, port: int,
                 live: Probe = _always_ok, ready: Probe = _always_ok) -> None:
        self.registry = CollectorRegistry(auto_describe=False)  # one per node: tests run several
        self.registry.register(StatsCollector(snapshot))
        try:
            self._server = _listen(host, port, http_app(self.registry, live, ready))
        except OSError as exc:
            raise ConfigError(f"metrics_port {port}: cannot listen on {host}:{port} ({exc}); "
                              "pick another port, 0 for a free one, -1 for no metrics") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="kvstore-metrics")
        self._thread.start()
        self.port: int = self._server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


__all__ = ["PROBE_PATHS", "MetricsServer", "StatsCollector", "http_app", "metric_families"]
