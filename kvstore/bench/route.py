"""``kvstore bench route``: DualMap against baselines on the Mooncake conversation trace.

For every policy and load level the trace is replayed (arrival times divided by the load) through
a simulated cluster that drives the real router (kvstore.sim). Prints one table row per policy and
load, a summary with each policy's effective capacity (the load at which 90% of requests meet the
TTFT SLO), a 4 -> 8 instance scaling run, a final JSON line, and writes a plot of SLO attainment
against load. The cost model is kvstore.sim.instance (stated in docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from kvstore.errors import InvalidArgument
from kvstore.router import POLICIES, Router, RouterConfig
from kvstore.sim.instance import InstanceConfig
from kvstore.sim.metrics import (
    RunMetrics,
    capacity_bound,
    effective_capacity,
    prefix_hit_ceiling,
    summarize,
)
from kvstore.sim.simulator import ScaleEvent, SimResult, simulate
from kvstore.sim.trace import LONG_PROMPTS, TraceRequest, load_trace, scale_load, trace_path

DEFAULT_TRACE = "conversation"
DEFAULT_PLOT = Path("route_slo.png")
# Coarse below the baselines' capacities, 0.125x steps where the best policies cross 90%: the
# capacity ratio must be resolved to a few percent.
FULL_LOADS = (1.0, 2.0, 3.0, 3.5, 4.0, 4.25, 4.5, 4.75, 5.0, 5.125, 5.25, 5.375, 5.5, 5.625)
FULL_LOADS += (5.75, 6.0, 6.5)
QUICK_LOADS = (2.0, 4.0, 6.0, 8.0)
QUICK_REQUESTS = 1500
SCALE_LOAD = 3.0  # 4 instances are overloaded at this load, 8 are not
TARGET_ATTAINMENT = 0.9
RING_POLICIES = ("dualmap", "consistent_hash")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trace",
        type=trace_path,
        default=DEFAULT_TRACE,
        help="a shipped Mooncake trace (conversation, synthetic) or a JSON-lines file in its "
        "format (default: conversation)",
    )
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--slo-s", type=float, default=5.0, help="TTFT SLO in seconds")
    parser.add_argument(
        "--loads",
        type=str,
        default=None,
        help="comma-separated load multipliers of the trace's arrival rate",
    )
    parser.add_argument("--policies", type=str, default=",".join(POLICIES))
    parser.add_argument("--limit", type=int, default=None, help="use the first N requests")
    parser.add_argument(
        "--max-context-tokens",
        type=int,
        default=20480,
        help="the serving context (DualMap artifact: vLLM max-model-len 20480)",
    )
    parser.add_argument(
        "--long-prompts",
        choices=LONG_PROMPTS,
        default="drop",
        help="drop prompts of >= the context (as the DualMap artifact does) or truncate them to "
        "context - output tokens",
    )
    parser.add_argument(
        "--scale-load",
        type=float,
        default=SCALE_LOAD,
        help="load of the half -> all instances scaling run",
    )
    parser.add_argument("--kv-capacity-tokens", type=int, default=InstanceConfig.kv_capacity_tokens)
    parser.add_argument(
        "--slo-headroom",
        type=float,
        default=1.0,
        help="DualMap keeps affinity while predicted TTFT <= headroom * SLO",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help=f"PNG to write (default ./{DEFAULT_PLOT}; none in --quick mode)",
    )
    parser.add_argument(
        "--no-scaling", action="store_true", help="skip the half -> all instances scaling run"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"first {QUICK_REQUESTS} requests, loads {QUICK_LOADS} (smoke test)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        plan = _Plan.from_args(args)
    except InvalidArgument as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = plan.sweep()
    report = plan.report(results)
    scaling = None if args.no_scaling else plan.scaling()
    _print_tables(plan, results, report, scaling)
    if plan.plot_path is not None:
        _plot(plan, results, report, plan.plot_path)
        print(f"plot: {plan.plot_path}")
    print(json.dumps(_json_line(plan, report, scaling), sort_keys=True))
    return 0


class _Plan:
    def __init__(self, args: argparse.Namespace, requests: list[TraceRequest]) -> None:
        self.args = args
        self.requests = requests
        self.loads = (
            tuple(float(x) for x in args.loads.split(","))
            if args.loads
            else (QUICK_LOADS if args.quick else FULL_LOADS)
        )
        self.policies = [p.strip() for p in args.policies.split(",") if p.strip()]
        unknown = set(self.policies) - set(POLICIES)
        if unknown:
            raise InvalidArgument(f"unknown policies {sorted(unknown)}; choose from {POLICIES}")
        if list(self.loads) != sorted(self.loads) or self.loads[0] <= 0:
            raise InvalidArgument("--loads must be positive and increasing")
        self.instance_config = InstanceConfig(kv_capacity_tokens=args.kv_capacity_tokens)
        self.router_config = RouterConfig(
            slo_ttft_s=args.slo_s,
            slo_headroom=args.slo_headroom,
            prefill_s_per_token=self.instance_config.prefill_s_per_token,
            prefill_s_per_cached_token=self.instance_config.prefill_s_per_cached_token,
            prefill_overhead_s=self.instance_config.prefill_overhead_s,
        )
        span_s = requests[-1].arrival_s - requests[0].arrival_s
        self.base_rate = len(requests) / span_s if span_s > 0 else float(len(requests))
        plot = args.plot if args.plot is not None else (None if args.quick else DEFAULT_PLOT)
        self.plot_path: Path | None = plot

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> _Plan:
        limit = QUICK_REQUESTS if args.quick and args.limit is None else args.limit
        requests = load_trace(args.trace, args.max_context_tokens, limit, args.long_prompts)
        if len(requests) < 2:
            raise InvalidArgument(f"{args.trace}: need at least two requests")
        return cls(args, requests)

    def _run(
        self, policy: str, load: float, instances: int, scale: ScaleEvent | None, bar: tqdm
    ) -> SimResult:
        router = Router(replace(self.router_config, policy=policy))
        return simulate(
            scale_load(self.requests, load),
            router,
            self.instance_config,
            instances,
            scale,
            on_progress=bar.update,
        )

    def sweep(self) -> dict[str, dict[float, tuple[RunMetrics, SimResult]]]:
        total = len(self.policies) * len(self.loads) * len(self.requests)
        out: dict[str, dict[float, tuple[RunMetrics, SimResult]]] = {}
        with tqdm(
            total=total, desc="route sweep", unit="req", file=sys.stderr, disable=None
        ) as bar:
            for policy in self.policies:
                out[policy] = {}
                for load in self.loads:
                    res = self._run(policy, load, self.args.instances, None, bar)
                    out[policy][load] = (summarize(res, self.args.slo_s), res)
        return out

    def report(self, results: dict[str, dict[float, tuple[RunMetrics, SimResult]]]) -> dict:
        per_policy: dict[str, dict] = {}
        for policy, by_load in results.items():
            attain = [by_load[ld][0].slo_attainment for ld in self.loads]
            cap = effective_capacity(self.loads, attain, TARGET_ATTAINMENT)
            # Operating point: the highest measured load at or below the effective capacity.
            op = max((ld for ld in self.loads if ld <= cap), default=self.loads[0])
            m = by_load[op][0]
            per_policy[policy] = {
                "effective_capacity_x": round(cap, 3),
                "effective_capacity_rps": round(cap * self.base_rate, 3),
                "operating_load_x": op,
                "hit_rate": round(m.cache_hit_rate, 4),
                "ttft_p50_s": round(m.ttft_p50_s, 3),
                "ttft_p90_s": round(m.ttft_p90_s, 3),
                "load_imbalance": round(m.load_imbalance, 3),
                "attainment": [round(a, 4) for a in attain],
            }
        rep: dict = {"policies": per_policy}
        # Upper bounds: every instance busy 100% of the time with prefills, at the trace's hit
        # ceiling (every block seen before still cached) and at the best hit rate measured.
        ceiling = prefix_hit_ceiling(self.requests)
        best_hit = max(p["hit_rate"] for p in per_policy.values())
        n, cost = self.args.instances, self.instance_config
        rep["hit_ceiling"] = round(ceiling, 4)
        rep["capacity_bound_at_ceiling_x"] = round(
            capacity_bound(self.requests, n, cost, ceiling), 3
        )
        rep["capacity_bound_at_best_hit_x"] = round(
            capacity_bound(self.requests, n, cost, best_hit), 3
        )
        if "dualmap" in results:
            route_s = np.concatenate([np.array(r.route_s) for _, r in results["dualmap"].values()])
            rep["route_p50_us"] = round(float(np.percentile(route_s, 50)) * 1e6, 1)
            rep["route_p99_us"] = round(float(np.percentile(route_s, 99)) * 1e6, 1)
            baselines = {p: v for p, v in per_policy.items() if p != "dualmap"}
            if baselines:
                best = max(baselines, key=lambda p: baselines[p]["effective_capacity_x"])
                best_cap = baselines[best]["effective_capacity_x"]
                dm = per_policy["dualmap"]
                rep["best_baseline"] = best
                rep["capacity_ratio"] = (
                    round(dm["effective_capacity_x"] / best_cap, 3) if best_cap > 0 else None
                )
            if "cache_affinity" in per_policy and per_policy["cache_affinity"]["hit_rate"] > 0:
                rep["hit_ratio_vs_cache_affinity"] = round(
                    per_policy["dualmap"]["hit_rate"] / per_policy["cache_affinity"]["hit_rate"], 3
                )
        return rep

    def scaling(self) -> dict[str, dict]:
        """Start with half the instances, join the other half when half the trace has arrived."""
        start = max(self.args.instances // 2, 1)
        add = self.args.instances - start
        out: dict[str, dict] = {}
        with tqdm(
            total=len(self.policies) * len(self.requests),
            desc="scaling run",
            unit="req",
            file=sys.stderr,
            disable=None,
        ) as bar:
            for policy in self.policies:
                res = self._run(policy, self.args.scale_load, start, ScaleEvent(0.5, add), bar)
                t = res.scale_time_s if res.scale_time_s is not None else 0.0
                before = _window(res, self.args.slo_s, None, t)
                after = summarize(res, self.args.slo_s, since_s=t)
                out[policy] = {
                    "instances": f"{start}->{start + add}",
                    "attainment_before": round(before, 4),
                    "attainment_after": round(after.slo_attainment, 4),
                    "hit_rate_after": round(after.cache_hit_rate, 4),
                    # A ring property: only the ring-based policies route by it.
                    "remapped_primaries": (
                        round(res.remapped_primaries or 0.0, 4) if policy in RING_POLICIES else None
                    ),
                    "ideal_remap": round(add / (start + add), 4),
                }
        return out


def _window(res: SimResult, slo_s: float, lo: float | None, hi: float) -> float:
    ttft = [
        c.ttft_s
        for c in res.completed
        if (lo is None or c.request.arrival_s >= lo) and c.request.arrival_s < hi
    ]
    return float(np.mean(np.array(ttft) <= slo_s)) if ttft else 0.0


def _print_tables(plan: _Plan, results: dict, report: dict, scaling: dict | None) -> None:
    args = plan.args
    long = (
        f"prompts of >= {args.max_context_tokens} tokens dropped (as the DualMap artifact)"
        if args.long_prompts == "drop"
        else f"{sum(r.truncated for r in plan.requests)} prompts truncated to "
        f"{args.max_context_tokens} - output tokens"
    )
    print(
        f"trace {args.trace} : {len(plan.requests)} requests, base rate "
        f"{plan.base_rate:.2f} req/s, {args.instances} instances, TTFT SLO {args.slo_s:g} s, "
        f"{long}"
    )
    head = (
        f"{'policy':<16}{'load':>6}{'req/s':>8}{'in SLO':>8}{'P50 s':>8}{'P90 s':>9}"
        f"{'hit':>7}{'imbal':>7}{'route p99':>11}{'moves':>7}"
    )
    for policy, by_load in results.items():
        print()
        print(head)
        for load, (m, _res) in by_load.items():
            print(
                f"{policy:<16}{load:>5.2f}x{load * plan.base_rate:>8.2f}"
                f"{m.slo_attainment:>7.1%} {m.ttft_p50_s:>7.2f} {m.ttft_p90_s:>8.2f}"
                f"{m.cache_hit_rate:>7.1%}{m.load_imbalance:>7.2f}{m.route_p99_us:>9.0f}us"
                f"{m.migrations:>7}"
            )
    print()
    print("effective capacity (load with >= 90% of requests within the SLO):")
    print(f"{'policy':<16}{'capacity':>10}{'req/s':>8}{'hit@op':>8}{'P90@op':>8}{'vs dualmap':>12}")
    dm_cap = report["policies"].get("dualmap", {}).get("effective_capacity_x")
    for policy, p in report["policies"].items():
        ratio = (
            f"{dm_cap / p['effective_capacity_x']:.2f}x"
            if dm_cap and p["effective_capacity_x"]
            else "-"
        )
        print(
            f"{policy:<16}{p['effective_capacity_x']:>9.2f}x{p['effective_capacity_rps']:>8.2f}"
            f"{p['hit_rate']:>8.1%}{p['ttft_p90_s']:>8.2f}{ratio:>12}"
        )
    if "capacity_ratio" in report:
        print(
            f"dualmap / best baseline ({report['best_baseline']}): "
            f"{report['capacity_ratio']}x capacity (target >= 1.4x); hit rate vs cache "
            f"affinity: {report.get('hit_ratio_vs_cache_affinity')} (target >= 0.9); "
            f"routing p99 {report['route_p99_us']} us (target < 1000 us)"
        )
    print(
        f"upper bound (all {args.instances} instances 100% busy): "
        f"{report['capacity_bound_at_ceiling_x']:.2f}x at the trace's hit ceiling "
        f"({report['hit_ceiling']:.1%}), {report['capacity_bound_at_best_hit_x']:.2f}x at the "
        f"best measured hit rate"
    )
    if scaling:
        print()
        print(
            f"scaling at {args.scale_load:g}x load: instances join when half the trace has arrived"
        )
        print(
            f"{'policy':<16}{'instances':>10}{'SLO before':>12}{'SLO after':>11}{'hit after':>11}"
            f"{'remapped':>10}{'ideal':>7}"
        )
        for policy, s in scaling.items():
            remap = "-" if s["remapped_primaries"] is None else f"{s['remapped_primaries']:.1%}"
            print(
                f"{policy:<16}{s['instances']:>10}{s['attainment_before']:>11.1%}"
                f"{s['attainment_after']:>11.1%}{s['hit_rate_after']:>11.1%}"
                f"{remap:>10}{s['ideal_remap']:>7.1%}"
            )


def _json_line(plan: _Plan, report: dict, scaling: dict | None) -> dict:
    out = {
        "bench": "route",
        "trace": str(plan.args.trace),
        "requests": len(plan.requests),
        "instances": plan.args.instances,
        "slo_s": plan.args.slo_s,
        "base_rate_rps": round(plan.base_rate, 4),
        "loads": list(plan.loads),
        "quick": bool(plan.args.quick),
        "long_prompts": plan.args.long_prompts,
        "max_context_tokens": plan.args.max_context_tokens,
        "cost_model": {
            "prefill_ms_per_token": plan.instance_config.prefill_s_per_token * 1e3,
            "prefill_ms_per_cached_token": plan.instance_config.prefill_s_per_cached_token * 1e3,
            "prefill_overhead_ms": plan.instance_config.prefill_overhead_s * 1e3,
            "decode_ms_per_token": plan.instance_config.decode_s_per_token * 1e3,
            "kv_capacity_tokens": plan.instance_config.kv_capacity_tokens,
        },
        **report,
    }
    if scaling is not None:
        out["scaling"] = scaling
    return out


def _plot(plan: _Plan, results: dict, report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for policy in results:
        attain = report["policies"][policy]["attainment"]
        style: dict[str, Any] = {"linewidth": 2.5, "color": "black"} if policy == "dualmap" else {}
        cap = report["policies"][policy]["effective_capacity_x"]
        ax.plot(
            plan.loads,
            [a * 100 for a in attain],
            marker="o",
            markersize=4,
            label=f"{policy} (capacity {cap:.2f}x)",
            **style,
        )
    ax.axhline(TARGET_ATTAINMENT * 100, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(f"load (x trace rate; 1x = {plan.base_rate:.2f} req/s)")
    ax.set_ylabel(f"requests within {plan.args.slo_s:g} s TTFT (%)")
    ax.set_title(f"Mooncake conversation trace, {plan.args.instances} simulated instances")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvstore bench route", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
