"""Event-driven cluster simulation that drives the real ``kvstore.router.Router``.

The loop has two kinds of events: arrivals (the trace, in order) and prefill completions (a heap).
At an arrival the router routes the request exactly as the gRPC service would (``Router.route``),
the chosen instance queues it, any migrations the router ordered are carried out, and every touched
instance reports its load back (``Router.report_load``), as workers do over ReportLoad. The router
never looks at the instances' caches; it only sees what a real router sees.

A scaling event joins extra instances when a given share of the requests has arrived.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kvstore.router import Router
from kvstore.sim.instance import Completed, Instance, InstanceConfig
from kvstore.sim.trace import TraceRequest


@dataclass(frozen=True)
class ScaleEvent:
    """Join ``add`` instances once ``at_fraction`` of the requests have arrived."""

    at_fraction: float
    add: int


@dataclass
class SimResult:
    completed: list[Completed]
    busy_s: dict[str, float]
    route_s: list[float]  # wall-clock seconds per Router.route call
    reasons: Counter = field(default_factory=Counter)
    migrations: int = 0
    stale_migrations: int = 0  # ordered after the request had started (never in this loop)
    scale_time_s: float | None = None
    remapped_primaries: float | None = None  # share of keys whose primary moved at the scale event


def worker_name(i: int) -> str:
    return f"w{i:02d}"


class Simulation:
    def __init__(self, router: Router, instance_config: InstanceConfig, instances: int) -> None:
        self.router = router
        self.config = instance_config
        self.instances: dict[str, Instance] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self.result = SimResult([], {}, [])
        for i in range(instances):
            self.add_instance(worker_name(i))

    def add_instance(self, worker_id: str) -> None:
        self.instances[worker_id] = Instance(worker_id, self.config)
        self.router.join(worker_id, self.config.kv_capacity_tokens)

    # -- events -----------------------------------------------------------------------------

    def _kick(self, inst: Instance, now_s: float) -> None:
        """Start the instance's next prefill if it is idle, then report its load."""
        started = inst.start_next(now_s) if inst.idle else None
        if started is not None:
            request, end_s = started
            self._seq += 1
            heapq.heappush(self._heap, (end_s, self._seq, inst.worker_id))
            self.router.report_load(
                inst.worker_id, inst.pending_tokens(now_s), (request.request_id,), now_s
            )
        else:
            self.router.report_load(inst.worker_id, inst.pending_tokens(now_s), now_s=now_s)

    def _complete_until(self, now_s: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now_s:
            end_s, _, worker = heapq.heappop(heap)
            inst = self.instances[worker]
            self.result.completed.append(inst.finish())
            self._kick(inst, end_s)

    def arrive(self, request: TraceRequest) -> None:
        now_s = request.arrival_s
        self._complete_until(now_s)
        t0 = time.perf_counter()
        decision = self.router.route(
            request.request_id, request.blocks, request.input_tokens, now_s
        )
        self.result.route_s.append(time.perf_counter() - t0)
        self.result.reasons[decision.reason] += 1
        touched = {decision.worker}
        self.instances[decision.worker].enqueue(request)
        for move in decision.migrations:
            moved = self.instances[move.source].remove(move.request_id)
            if moved is None:
                self.result.stale_migrations += 1
                continue
            self.instances[move.target].enqueue(moved)
            touched.update((move.source, move.target))
            self.result.migrations += 1
        for worker in sorted(touched):
            self._kick(self.instances[worker], now_s)

    def drain(self) -> None:
        self._complete_until(float("inf"))
        self.result.busy_s = {w: inst.busy_s for w, inst in self.instances.items()}


def simulate(
    requests: Sequence[TraceRequest],
    router: Router,
    instance_config: InstanceConfig,
    instances: int,
    scale: ScaleEvent | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> SimResult:
    """Run the requests (already scaled to the wanted load) through a fresh cluster."""
    sim = Simulation(router, instance_config, instances)
    scale_at = int(len(requests) * scale.at_fraction) if scale else -1
    for i, request in enumerate(requests):
        if i == scale_at and scale is not None:
            sim.result.scale_time_s = request.arrival_s
            sim.result.remapped_primaries = _join_and_measure(sim, requests, instances, scale.add)
        sim.arrive(request)
        if on_progress is not None and (i + 1) % 1000 == 0:
            on_progress(1000)
    sim.drain()
    if on_progress is not None:
        on_progress(len(requests) % 1000)
    return sim.result


def _join_and_measure(
    sim: Simulation, requests: Sequence[TraceRequest], start: int, add: int
) -> float:
    """Join ``add`` instances; return the share of the trace's keys whose primary moved."""
    sample = [r.blocks for r in requests[:: max(len(requests) // 2000, 1)]]
    before = [sim.router.candidates(b)[0] for b in sample]
    for i in range(start, start + add):
        sim.add_instance(worker_name(i))
    after = [sim.router.candidates(b)[0] for b in sample]
    return sum(a != b for a, b in zip(before, after, strict=True)) / len(sample)
