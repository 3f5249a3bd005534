"""One fault, measured: baseline -> inject -> hold -> heal -> recovery, with the figures.

    figures = run_fault(cluster, load, fault, hold_s=6.0, during=check_while_faulted)

Timeline and what is measured (times are load-generator call start times):

    [t_base, t_inject)   baseline: read failure rate (misses + errors among keys read)
    [t_inject, t_heal)   the fault; ``during()`` runs here (checks that the fault really took)
      availability       stable (R=2) keys read correctly / read, over
                         [t_inject + notice_s, t_heal): the first ``notice_s`` (one client deadline)
                         is the client's time to notice and is excluded; ``availability_raw``
                         keeps it
    t_heal ...           ring_s: until every node is registered and up and every node's watcher
                         and the load's client are at the registry's epoch
                         miss_s: until the read failure rate of every 1 s window since is within
                         ``tolerance`` of the baseline (held for ``settle_s``)
                         recovery_s = max(ring_s, miss_s), checked against ``bound_s``
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from kvstore.chaos.cluster import ChaosCluster
from kvstore.chaos.faults import FaultInjector
from kvstore.chaos.loadgen import LoadGen

WINDOW_S = 1.0
STEP_S = 0.25


@dataclass
class FaultFigures:
    fault: str
    target: str
    injected: int
    ops: int                 # load-generator calls from baseline to the end of recovery
    keys_read: int
    wrong: int
    stable_reads: int        # stable keys read in the availability window
    availability: float
    availability_raw: float
    baseline_fail: float
    during_fail: float
    max_call_s: float        # slowest load call from baseline to the end of recovery
    ring_s: float
    miss_s: float
    recovery_s: float
    bound_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_fault(cluster: ChaosCluster, load: LoadGen, fault: FaultInjector, *, hold_s: float,
              bound_s: float, baseline_s: float = 2.0, notice_s: float | None = None,
              settle_s: float = 2.0, tolerance: float = 0.01,
              during: Callable[[], dict[str, Any] | None] | None = None,
              before_heal: Callable[[], dict[str, Any] | None] | None = None,
              after_heal: Callable[[], dict[str, Any] | None] | None = None) -> FaultFigures:
    notice = load.deadline_s if notice_s is None else notice_s
    t_base = time.monotonic()
    time.sleep(baseline_s)  # a measurement window, not a wait for a condition
    t_inject = time.monotonic()
    fault.inject()
    extra: dict[str, Any] = {}
    if during is not None:
        extra.update(during() or {})
    remaining = t_inject + hold_s - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)  # keep the fault on for the availability window
    if before_heal is not None:
        extra.update(before_heal() or {})
    t_heal = time.monotonic()
    fault.heal()
    if after_heal is not None:
        extra.update(after_heal() or {})
    baseline = load.read_failure_rate(t_base, t_inject)
    ring_s, miss_s = _recover(cluster, load, t_heal, baseline + tolerance, bound_s, settle_s)
    t_end = time.monotonic()
    during_s = load.summary(t_inject + notice, t_heal)
    raw = load.summary(t_inject, t_heal)
    whole = load.summary(t_base, t_end)
    reads = sum(whole.counts.get(f"get.{o}", 0) for o in ("ok", "miss", "error", "wrong"))
    extra["errors_during"] = load.error_classes(t_inject, t_heal)
    extra["stable_misses_during"] = during_s.counts.get("get.stable.miss", 0)
    return FaultFigures(
        fault=fault.kind, target=fault.target, injected=len(fault.log.of(fault.kind, "inject")),
        ops=whole.ops, keys_read=reads, wrong=whole.wrong, stable_reads=during_s.stable_reads,
        availability=during_s.availability, availability_raw=raw.availability,
        baseline_fail=baseline, during_fail=load.read_failure_rate(t_inject, t_heal),
        max_call_s=whole.max_call_s, ring_s=ring_s, miss_s=miss_s,
        recovery_s=max(ring_s, miss_s), bound_s=bound_s,
        extra=extra)


def _recover(cluster: ChaosCluster, load: LoadGen, t_heal: float, max_fail: float,
             bound_s: float, settle_s: float) -> tuple[float, float]:
    """(ring_s, miss_s) after ``t_heal``; inf for what did not recover within ``bound_s``
    (the caller asserts the bound)."""
    ring_s = miss_s = float("inf")
    deadline = t_heal + bound_s + settle_s
    while time.monotonic() < deadline:
        now = time.monotonic()
        if ring_s == float("inf") and cluster.converged(lambda: load.client.view.epoch):
            ring_s = now - t_heal
        last_bad = _last_bad_window_end(load, t_heal, now, max_fail)
        if now - last_bad >= settle_s:
            miss_s = last_bad - t_heal
        if ring_s < float("inf") and miss_s < float("inf"):
            break
        time.sleep(STEP_S)
    return ring_s, miss_s


def _last_bad_window_end(load: LoadGen, t0: float, now: float, max_fail: float) -> float:
    """End of the last complete window since ``t0`` whose read failure rate exceeds
    ``max_fail`` (``t0`` if none did)."""
    n = int((now - t0) / STEP_S)
    reads, bad = [0] * (n + 1), [0] * (n + 1)
    for r in reversed(load.records):  # appended as calls end: scan back to t0 (and a deadline)
        if r.start < t0 - 2 * load.deadline_s:
            break
        if r.op != "get" or r.start < t0:
            continue
        b = int((r.start - t0) / STEP_S)
        if b <= n:
            reads[b] += 1
            bad[b] += r.outcome in ("miss", "error")
    per = int(WINDOW_S / STEP_S)
    last = t0
    for w in range(0, n - per + 1):
        rd, bd = sum(reads[w:w + per]), sum(bad[w:w + per])
        if rd and bd / rd > max_fail:
            last = t0 + (w + per) * STEP_S
    return last


def format_table(rows: list[dict[str, Any]]) -> str:
    """The summary table printed at the end of the chaos suite."""
    head = ("fault", "target", "injected", "ops", "keys read", "wrong bytes",
            "avail. during", "avail. incl. notice", "stable reads", "slowest call s", "ring s",
            "miss s", "recovery s", "bound s")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lines.append(" | ".join(str(x) for x in (
            r["fault"], r["target"], r["injected"], r["ops"], r["keys_read"], r["wrong"],
            f"{100 * r['availability']:.2f}%", f"{100 * r['availability_raw']:.2f}%",
            r["stable_reads"], f"{r['max_call_s']:.2f}", _s(r["ring_s"]),
            _s(r["miss_s"]), _s(r["recovery_s"]), _s(r["bound_s"]))))
    return "\n".join(lines)


def _s(x: float) -> str:
    return f"{x:.1f}" if x != float("inf") else "NOT RECOVERED"
