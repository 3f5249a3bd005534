"""Metrics of one simulated run, and effective capacity across load levels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from kvstore.sim.instance import InstanceConfig
from kvstore.sim.simulator import SimResult
from kvstore.sim.trace import TRACE_BLOCK_TOKENS, TraceRequest


@dataclass(frozen=True)
class RunMetrics:
    requests: int
    slo_attainment: float  # share of requests with TTFT <= SLO
    ttft_p50_s: float
    ttft_p90_s: float
    cache_hit_rate: float  # cached prompt tokens / prompt tokens
    load_imbalance: float  # max / mean prefill busy time over instances
    route_p50_us: float
    route_p99_us: float
    migrations: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize(result: SimResult, slo_s: float, since_s: float | None = None) -> RunMetrics:
    """Metrics over all completed requests, or those that arrived at or after ``since_s``."""
    done = result.completed
    if since_s is not None:
        done = [c for c in done if c.request.arrival_s >= since_s]
    ttft = np.array([c.ttft_s for c in done])
    prompt = np.array([c.request.input_tokens for c in done], dtype=np.float64)
    cached = np.array([c.cached_tokens for c in done], dtype=np.float64)
    busy = np.array(list(result.busy_s.values()) or [0.0])
    route_us = np.array(result.route_s or [0.0]) * 1e6
    return RunMetrics(
        requests=len(done),
        slo_attainment=float(np.mean(ttft <= slo_s)) if len(done) else 0.0,
        ttft_p50_s=float(np.percentile(ttft, 50)) if len(done) else float("nan"),
        ttft_p90_s=float(np.percentile(ttft, 90)) if len(done) else float("nan"),
        cache_hit_rate=float(cached.sum() / prompt.sum()) if len(done) else 0.0,
        load_imbalance=float(busy.max() / busy.mean()) if busy.mean() > 0 else 1.0,
        route_p50_us=float(np.percentile(route_us, 50)),
        route_p99_us=float(np.percentile(route_us, 99)),
        migrations=result.migrations,
    )


def effective_capacity(
    loads: Sequence[float], attainment: Sequence[float], target: float = 0.9
) -> float:
    """Highest load with ``attainment >= target``, interpolated linearly to the crossing.

    Loads must be increasing. Returns 0 when even the lowest load misses the target, and the
    highest load measured when none misses it (a lower bound; the grid should reach past it).
    """
    if len(loads) != len(attainment) or not loads:
        raise ValueError("loads and attainment must be non-empty and of equal length")
    if attainment[0] < target:
        return 0.0
    for i in range(1, len(loads)):
        if attainment[i] < target:
            lo, hi = loads[i - 1], loads[i]
            a_lo, a_hi = attainment[i - 1], attainment[i]
            return float(lo + (hi - lo) * (a_lo - target) / (a_lo - a_hi))
    return float(loads[-1])


def prefix_hit_ceiling(requests: Sequence[TraceRequest]) -> float:
    """Share of prompt tokens cached if every block seen before were still cached everywhere."""
    seen: set[int] = set()
    hit = total = 0
    for r in requests:
        n = 0
        for block in r.blocks:
            if block not in seen:
                break
            n += 1
        hit += min(n * TRACE_BLOCK_TOKENS, r.input_tokens - 1)
        total += r.input_tokens
        seen.update(r.blocks)
    return hit / total if total else 0.0


def capacity_bound(
    requests: Sequence[TraceRequest], instances: int, cost: InstanceConfig, hit_rate: float
) -> float:
    """Load (x the trace's rate) at which ``instances`` are 100% busy with prefills at this hit
    rate: no policy can keep 90% of requests within any SLO above it for long."""
    span_s = requests[-1].arrival_s - requests[0].arrival_s
    if span_s <= 0:
        return float("inf")
    mean_tokens = sum(r.input_tokens for r in requests) / len(requests)
    prefill_s = cost.prefill_overhead_s + mean_tokens * (
        (1 - hit_rate) * cost.prefill_s_per_token + hit_rate * cost.prefill_s_per_cached_token
    )
    return instances / (len(requests) / span_s * prefill_s)
