"""Smoke test of ``kvstore bench route --quick``: its JSON line is complete and sane."""

from __future__ import annotations

import argparse
import json

import pytest

from kvstore.bench import route
from kvstore.errors import InvalidArgument
from kvstore.router import POLICIES
from kvstore.sim.trace import BUILTIN_TRACES, load_trace, trace_path


def test_quick_benchmark_prints_tables_and_a_sane_json_line(capsys, tmp_path):
    parser = argparse.ArgumentParser()
    route.add_arguments(parser)
    assert trace_path(route.DEFAULT_TRACE).is_file()
    plot = tmp_path / "slo.png"
    assert route.run(parser.parse_args(["--quick", "--plot", str(plot)])) == 0
    out = capsys.readouterr().out
    assert "effective capacity" in out and "scaling at" in out
    result = json.loads(out.strip().splitlines()[-1])

    assert result["bench"] == "route" and result["quick"] is True
    assert result["requests"] == route.QUICK_REQUESTS and result["instances"] == 8
    assert result["slo_s"] == 5.0 and result["loads"] == list(route.QUICK_LOADS)
    assert set(result["policies"]) == set(POLICIES)
    for name, p in result["policies"].items():
        assert len(p["attainment"]) == len(route.QUICK_LOADS), name
        assert all(0.0 <= a <= 1.0 for a in p["attainment"]), name
        assert 0.0 <= p["effective_capacity_x"] <= route.QUICK_LOADS[-1], name
        assert 0.0 <= p["hit_rate"] < 0.6, name
        assert p["ttft_p50_s"] <= p["ttft_p90_s"], name
        assert p["load_imbalance"] >= 1.0, name
    pol = result["policies"]
    # Sanity of the physics: affinity routing reuses far more cache than round robin, and
    # attainment falls as load rises.
    assert pol["dualmap"]["hit_rate"] > 2 * pol["round_robin"]["hit_rate"]
    assert pol["dualmap"]["attainment"][0] > pol["dualmap"]["attainment"][-1]
    assert result["best_baseline"] in POLICIES and result["best_baseline"] != "dualmap"
    assert result["capacity_ratio"] > 0 and result["hit_ratio_vs_cache_affinity"] > 0
    assert 0 < result["route_p50_us"] <= result["route_p99_us"]
    scaling = result["scaling"]["dualmap"]
    assert scaling["instances"] == "4->8"
    assert 0.3 < scaling["remapped_primaries"] < 0.7
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shipped_traces_load_from_the_package_and_unknown_names_are_refused():
    """Both Mooncake traces ship inside the package (no ../shared), with their NOTICE."""
    counts = {name: len(load_trace(trace_path(name), 10**9, None, "truncate"))
              for name in BUILTIN_TRACES}
    assert counts == {"conversation": 12031, "synthetic": 3993}
    assert "Apache License 2.0" in (trace_path("conversation").parent / "NOTICE").read_text()
    with pytest.raises(InvalidArgument, match="no such file"):
        trace_path("no-such-trace")
