"""Simulator: trace loading and truncation, the instance cost model, the event loop, metrics."""

from __future__ import annotations

import json

import pytest

from kvstore.errors import ConfigError, InvalidArgument
from kvstore.router import Router, RouterConfig
from kvstore.router.blocks import chain_block_ids
from kvstore.sim.instance import Instance, InstanceConfig
from kvstore.sim.metrics import effective_capacity, summarize
from kvstore.sim.simulator import ScaleEvent, simulate
from kvstore.sim.trace import TraceRequest, load_trace, scale_load

COSTS = InstanceConfig(
    prefill_s_per_token=1e-3,
    prefill_s_per_cached_token=1e-4,
    prefill_overhead_s=0.5,
    decode_s_per_token=0.01,
    kv_capacity_tokens=2048,  # four blocks
)


def _req(rid: str, arrival_s: float, ids: list[int], tokens: int, out: int = 10) -> TraceRequest:
    return TraceRequest(rid, arrival_s, tokens, out, tuple(chain_block_ids(ids)), False)


def _write_trace(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_trace_truncates_to_context_minus_output_and_keeps_the_prefix(tmp_path):
    trace = tmp_path / "t.jsonl"
    _write_trace(
        trace,
        [
            {"timestamp": 1500, "input_length": 1200, "output_length": 100, "hash_ids": [0, 1, 2]},
            {
                "timestamp": 500,
                "input_length": 3000,
                "output_length": 100,
                "hash_ids": [0, 1, 3, 4, 5, 6],
            },
        ],
    )
    reqs = load_trace(trace, max_context_tokens=1124, long_prompts="truncate")
    assert [r.arrival_s for r in reqs] == [0.5, 1.5]  # sorted by arrival, ms -> s
    long, short = reqs
    assert (long.input_tokens, long.truncated, len(long.blocks)) == (1024, True, 2)
    assert (short.input_tokens, short.truncated, len(short.blocks)) == (1024, True, 2)
    assert long.blocks == short.blocks  # same prefix ids -> same chained hashes
    assert [r.arrival_s for r in scale_load(reqs, 2.0)] == [0.25, 0.75]


def test_trace_drops_prompts_that_do_not_fit_like_the_dualmap_artifact(tmp_path):
    trace = tmp_path / "t.jsonl"
    records = [
        {"timestamp": 0, "input_length": 1123, "output_length": 900, "hash_ids": [0, 1, 2]},
        {"timestamp": 1, "input_length": 1124, "output_length": 1, "hash_ids": [0, 1, 3]},
        {"timestamp": 2, "input_length": 600, "output_length": 5, "hash_ids": [0, 4]},
    ]
    _write_trace(trace, records)
    reqs = load_trace(trace, max_context_tokens=1124)  # drop is the default
    # A prompt of >= context tokens is left out; one that fits is kept whole, whatever its output.
    assert [(r.request_id, r.input_tokens, r.truncated) for r in reqs] == [
        ("r1", 1123, False),
        ("r3", 600, False),
    ]
    assert len(load_trace(trace, max_context_tokens=1124, limit=1)) == 1
    with pytest.raises(InvalidArgument, match="long_prompts"):
        load_trace(trace, long_prompts="cut")


def test_trace_errors_name_the_file_and_line(tmp_path):
    trace = tmp_path / "bad.jsonl"
    trace.write_text('{"timestamp": 0}\n')
    with pytest.raises(InvalidArgument, match="bad.jsonl:1"):
        load_trace(trace)
    with pytest.raises(InvalidArgument, match="not found"):
        load_trace(tmp_path / "missing.jsonl")
    with pytest.raises(InvalidArgument):
        scale_load([], 0.0)


def test_instance_cost_model_fcfs_and_lru():
    inst = Instance("w", COSTS)
    a = _req("a", 0.0, [1, 2], 1000)
    b = _req("b", 0.0, [1, 2, 3], 1500)
    inst.enqueue(a)
    inst.enqueue(b)
    assert inst.pending_tokens(0.0) == 2500
    _, end_a = inst.start_next(0.0)
    assert end_a == pytest.approx(0.5 + 1000 * 1e-3)  # nothing cached
    assert inst.start_next(0.0) is None  # one prefill at a time
    done = inst.finish()
    assert done.ttft_s == pytest.approx(1.5) and done.decode_end_s == pytest.approx(1.6)
    _, end_b = inst.start_next(end_a)
    # b starts with a's two block ids (equal ids mean equal blocks in the trace): 1024 cached.
    assert inst.cached_tokens(b) == 1024
    assert end_b - end_a == pytest.approx(0.5 + 476 * 1e-3 + 1024 * 1e-4)
    inst.finish()
    # Capacity is four blocks: a fifth distinct block evicts the least recently used (block 1).
    c = _req("c", 9.0, [7, 8], 1024)
    inst.enqueue(c)
    inst.start_next(9.0)
    inst.finish()
    assert inst.cached_tokens(b) == 0


def test_fully_cached_prompt_still_computes_its_last_token():
    inst = Instance("w", COSTS)
    a = _req("a", 0.0, [1, 2], 1024)
    inst.enqueue(a)
    inst.start_next(0.0)
    inst.finish()
    assert inst.cached_tokens(a) == 1023


def test_migration_removes_only_queued_requests():
    inst = Instance("w", COSTS)
    inst.enqueue(_req("a", 0.0, [1], 100))
    inst.enqueue(_req("b", 0.0, [2], 100))
    inst.start_next(0.0)
    assert inst.remove("a") is None  # already running
    assert inst.remove("b").request_id == "b"
    assert inst.queued_ids() == []
    with pytest.raises(ConfigError):
        InstanceConfig(kv_capacity_tokens=10)


def test_simulation_drives_the_router_and_serves_every_request():
    reqs = [_req(f"r{i}", i * 0.5, [0, 100 + i // 3, 200 + i], 600 + 10 * i) for i in range(60)]
    router = Router(RouterConfig(prefill_s_per_token=1e-3, prefill_overhead_s=0.5))
    res = simulate(
        reqs, router, InstanceConfig(prefill_s_per_token=1e-3, prefill_overhead_s=0.5), instances=4
    )
    assert sorted(c.request.request_id for c in res.completed) == sorted(r.request_id for r in reqs)
    assert all(c.ttft_s > 0 for c in res.completed)
    assert sum(res.reasons.values()) == len(reqs) == len(res.route_s)
    assert router.cluster.owner_of == {}  # every start was reported back
    m = summarize(res, slo_s=5.0)
    assert m.requests == 60 and 0 < m.slo_attainment <= 1 and m.ttft_p50_s <= m.ttft_p90_s
    assert 0 < m.cache_hit_rate < 1 and m.load_imbalance >= 1.0


def test_scale_event_joins_instances_mid_run():
    reqs = [_req(f"r{i}", i * 0.1, [i], 500) for i in range(200)]
    router = Router()
    res = simulate(reqs, router, InstanceConfig(), instances=4, scale=ScaleEvent(0.5, 4))
    assert len(router.workers) == 8
    assert res.scale_time_s == pytest.approx(10.0)
    assert 0.3 < res.remapped_primaries < 0.7  # ideal: 4/8 of the primaries move
    late_workers = {c.worker for c in res.completed if c.request.arrival_s >= 10.0}
    assert late_workers & {"w04", "w05", "w06", "w07"}


def test_effective_capacity_interpolates_the_crossing():
    assert effective_capacity([1, 2, 3], [0.99, 0.95, 0.75]) == pytest.approx(2.25)
    assert effective_capacity([1, 2], [0.5, 0.4]) == 0.0
    assert effective_capacity([1, 2], [1.0, 0.95]) == 2.0
    with pytest.raises(ValueError):
        effective_capacity([], [])
