"""Node-level counters: get hits/misses, lookup hits/misses, bytes, latencies, per-namespace
figures."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class NamespaceCounters:
    model_id: str = ""
    tenant: str = ""
    hits: int = 0
    misses: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    lookup_hits: int = 0    # keys a Lookup found (hits/misses above: Gets only)
    lookup_misses: int = 0  # keys a Lookup did not find


class LatencyWindow:
    """The last ``size`` latencies of one operation, for p50/p99 (a window, not all time)."""

    def __init__(self, size: int = 4096) -> None:
        self.samples: deque[float] = deque(maxlen=size)
        self.count = 0

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        self.count += 1

    def percentiles_ms(self) -> tuple[float, float]:
        if not self.samples:
            return 0.0, 0.0
        p50, p99 = np.percentile(np.fromiter(self.samples, float), [50, 99])
        return float(p50) * 1e3, float(p99) * 1e3


class NodeStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.hits = self.misses = self.bytes_in = self.bytes_out = 0
        self.puts = self.rejected = 0
        # Lookup keys found / not found. Clients look up first and get only what was found, so
        # Get hits/misses alone read near 100% while lookups miss: these give the real rate.
        self.lookup_hits = self.lookup_misses = 0
        self.latency = {op: LatencyWindow() for op in ("get", "put", "lookup")}
        self.namespaces: dict[str, NamespaceCounters] = {}

    def namespace(self, ns: str, model_id: str = "", tenant: str = "") -> NamespaceCounters:
        with self._lock:
            c = self.namespaces.get(ns)
            if c is None:
                c = self.namespaces[ns] = NamespaceCounters(model_id, tenant)
            return c

    def record_get(self, ns: str, hit: bool, nbytes: int, seconds: float) -> None:
        c = self.namespace(ns)
        with self._lock:
            if hit:
                self.hits += 1
                self.bytes_out += nbytes
                c.hits += 1
                c.bytes_out += nbytes
            else:
                self.misses += 1
                c.misses += 1
            self.latency["get"].add(seconds)

    def record_put(self, ns: str, nbytes: int, seconds: float) -> None:
        c = self.namespace(ns)
        with self._lock:
            self.puts += 1
            self.bytes_in += nbytes
            c.bytes_in += nbytes
            self.latency["put"].add(seconds)

    def record_rejected(self) -> None:
        with self._lock:
            self.rejected += 1

    def record_lookup(self, ns: str, found: int, not_found: int, seconds: float) -> None:
        c = self.namespace(ns)
        with self._lock:
            self.lookup_hits += found
            self.lookup_misses += not_found
            c.lookup_hits += found
            c.lookup_misses += not_found
            self.latency["lookup"].add(seconds)

    def latency_percentiles(self) -> list[tuple[str, int, float, float]]:
        """(op, count, p50_ms, p99_ms) per operation. The windows are copied under the lock:
        puts and gets append to them from worker threads while Stats or a scrape reads."""
        with self._lock:
            copies = [(op, w.count, LatencyWindow()) for op, w in self.latency.items()]
            for (_, _, c), w in zip(copies, self.latency.values(), strict=True):
                c.samples.extend(w.samples)
        return [(op, n, *c.percentiles_ms()) for op, n, c in copies]
