"""`kvstore admin stats` and the Prometheus endpoint report exactly the traffic a test made."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kvstore import procs
from kvstore.keys import KeyScheme

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "kvstore-dashboard.json"


def _key(name: str) -> bytes:
    return name.encode().ljust(16, b".")[:16]


def _traffic(connect, a, b):
    """Known traffic on two nodes; returns what each node and tenant must report."""
    rng = random.Random(0)
    acme_a = connect(a.address, KeyScheme("m1", "float16", tenant="acme"))
    beta_a = connect(a.address, KeyScheme("m1", "float16", tenant="beta"))
    beta_b = connect(b.address, KeyScheme("m1", "float16", tenant="beta"))
    for i, n in enumerate((1000, 2000, 3000)):
        assert acme_a.put(_key(f"acme{i}"), rng.randbytes(n))
    assert beta_a.put(_key("beta-a"), rng.randbytes(700))
    assert beta_b.put(_key("beta-b"), rng.randbytes(5000))
    got = acme_a.get_many([_key("acme0"), _key("acme2")] + [_key(f"nope{i}") for i in range(4)])
    assert [g is not None for g in got] == [True, True, False, False, False, False]
    assert beta_a.get(_key("nope")) is None
    assert beta_b.get(_key("beta-b")) is not None
    assert beta_b.get(_key("nope")) is None
    # lookups count apart from gets: keys found / not found, per node and tenant
    assert acme_a.lookup([_key("acme0"), _key("acme1"), _key("nope0"), _key("nope1"),
                          _key("acme2")]).found == [True, True, False, False, True]
    assert beta_a.lookup([_key("nope"), _key("nope2"), _key("acme0")]).found == [False] * 3
    assert beta_b.lookup([_key("beta-b"), _key("nope")]).found == [True, False]
    nodes = {
        a.core.node_id: dict(hits=2, misses=5, lookup_keys=8, lookup_hits=3, lookup_misses=5,
                             bytes_in=6700, bytes_out=4000, puts=4, chunks=4),
        b.core.node_id: dict(hits=1, misses=1, lookup_keys=2, lookup_hits=1, lookup_misses=1,
                             bytes_in=5000, bytes_out=5000, puts=1, chunks=1),
    }
    tenants = {
        "acme": dict(hits=2, misses=4, lookup_keys=5, lookup_hits=3, lookup_misses=2,
                     bytes_in=6000, bytes_out=4000, used_bytes=6000, chunks=3),
        "beta": dict(hits=1, misses=2, lookup_keys=5, lookup_hits=1, lookup_misses=4,
                     bytes_in=5700, bytes_out=5000, used_bytes=5700, chunks=2),
    }
    return nodes, tenants


def test_stats_json_and_prometheus_report_the_traffic(metrics_node, connect, cli_json, cli,
                                                      metrics):
    a, b = metrics_node(), metrics_node()
    want_nodes, want_tenants = _traffic(connect, a, b)
    rc, doc, err = cli_json("admin", "stats", "--nodes", f"{a.address},{b.address}")
    assert rc == 0, err
    assert doc["errors"] == []
    by_id = {n["node_id"]: n for n in doc["nodes"]}
    assert set(by_id) == set(want_nodes)
    for node_id, want in want_nodes.items():
        assert {k: by_id[node_id][k] for k in want} == want
    c = doc["cluster"]
    assert (c["nodes"], c["reachable"], c["hits"], c["misses"]) == (2, 2, 3, 6)
    assert (c["bytes_in"], c["bytes_out"], c["puts"], c["chunks"]) == (11700, 9000, 5, 5)
    assert c["hit_rate"] == pytest.approx(3 / 9)
    assert (c["lookup_keys"], c["lookup_hits"], c["lookup_misses"]) == (10, 4, 6)
    assert c["lookup_hit_rate"] == pytest.approx(4 / 10)
    assert by_id[a.core.node_id]["lookup_hit_rate"] == pytest.approx(3 / 8)
    assert {t["tenant"]: t["lookup_hit_rate"] for t in doc["tenants"]} == {
        "acme": pytest.approx(3 / 5), "beta": pytest.approx(1 / 5)}
    # per namespace (one per tenant here): the tenant's figures
    for ns in by_id[a.core.node_id]["namespaces"]:
        want = {"acme": (5, 3, 2), "beta": (3, 0, 3)}[ns["tenant"]]
        assert (ns["lookup_keys"], ns["lookup_hits"], ns["lookup_misses"]) == want
    assert {t["tenant"]: {k: t[k] for k in want_tenants["acme"]}
            for t in doc["tenants"]} == want_tenants
    (cpu,) = doc["tiers"]
    assert (cpu["tier"], cpu["chunks"], cpu["hits"]) == ("cpu", 5, 3)
    assert by_id[a.core.node_id]["latency_ms"]["get"]["count"] == 7
    assert by_id[a.core.node_id]["latency_ms"]["put"]["count"] == 4
    assert by_id[a.core.node_id]["latency_ms"]["lookup"]["count"] == 2

    # the Prometheus endpoint of each node says the same
    for node in (a, b):
        m = metrics(node.metrics_port)
        n = by_id[node.core.node_id]
        lab = (("node", node.core.node_id),)
        for metric, field in (("kvstore_hits_total", "hits"), ("kvstore_misses_total", "misses"),
                              ("kvstore_lookup_keys_total", "lookup_keys"),
                              ("kvstore_lookup_hits_total", "lookup_hits"),
                              ("kvstore_lookup_misses_total", "lookup_misses"),
                              ("kvstore_received_bytes_total", "bytes_in"),
                              ("kvstore_sent_bytes_total", "bytes_out"),
                              ("kvstore_puts_total", "puts"),
                              ("kvstore_rejected_puts_total", "rejected")):
            assert m[(metric, lab)] == n[field] == want_nodes[node.core.node_id].get(field, 0)
        for t in n["tiers"]:
            tl = tuple(sorted((*lab, ("tier", t["tier"]))))
            for metric, field in (("kvstore_tier_capacity_bytes", "capacity_bytes"),
                                  ("kvstore_tier_used_bytes", "used_bytes"),
                                  ("kvstore_tier_chunks", "chunks"),
                                  ("kvstore_tier_hits_total", "hits"),
                                  ("kvstore_tier_evictions_total", "evictions"),
                                  ("kvstore_tier_demotions_total", "demotions_in"),
                                  ("kvstore_tier_corrupt_chunks_dropped_total",
                                   "corrupt_dropped")):
                assert m[(metric, tl)] == t[field]
        for t in n["tenants"]:
            tl = tuple(sorted((*lab, ("tenant", t["tenant"]))))
            for metric, field in (("kvstore_tenant_hits_total", "hits"),
                                  ("kvstore_tenant_misses_total", "misses"),
                              ("kvstore_tenant_lookup_keys_total", "lookup_keys"),
                              ("kvstore_tenant_lookup_hits_total", "lookup_hits"),
                              ("kvstore_tenant_lookup_misses_total", "lookup_misses"),
                                  ("kvstore_tenant_received_bytes_total", "bytes_in"),
                                  ("kvstore_tenant_sent_bytes_total", "bytes_out"),
                                  ("kvstore_tenant_used_bytes", "used_bytes"),
                                  ("kvstore_tenant_chunks", "chunks")):
                assert m[(metric, tl)] == t[field]
        for op, lat in n["latency_ms"].items():
            ol = tuple(sorted((*lab, ("op", op))))
            assert m[("kvstore_operations_total", ol)] == lat["count"]
            assert m[("kvstore_latency_seconds", tuple(sorted((*ol, ("quantile", "0.99")))))] \
                == pytest.approx(lat["p99"] / 1e3, rel=1e-3, abs=1e-9)
    assert metrics(a.metrics_port)[("kvstore_tenant_hits_total", (
        ("node", a.core.node_id), ("tenant", "acme")))] == 2
    # known lookup figures straight from the scrape (not only "equal to --json")
    m_b = metrics(b.metrics_port)
    lab_b = (("node", b.core.node_id),)
    assert [m_b[(f"kvstore_lookup_{k}_total", lab_b)] for k in ("keys", "hits", "misses")] \
        == [2, 1, 1]
    assert [m_b[(f"kvstore_tenant_lookup_{k}_total", (*lab_b, ("tenant", "beta")))]
            for k in ("keys", "hits", "misses")] == [2, 1, 1]

    # the table for people names every node and tenant on aligned rows
    rc, out, _ = cli("admin", "stats", "--nodes", f"{a.address},{b.address}")
    assert rc == 0
    assert "cluster: 2/2 nodes reachable, 5 chunks" in out
    assert "lookups: 10 keys, 4 found (lookup hit rate 40.0%)" in out
    assert "gets: 3 hits, 6 misses (get hit rate 33.3%)" in out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("node ") and "misses" in line)
    assert "lookup hit rate" in header and "get hit rate" in header
    rows = [line for line in lines if line.startswith((a.core.node_id, b.core.node_id))]
    assert rows and all(len(r) <= len(header) for r in rows[:2])
    row_a = next(r for r in rows if r.startswith(a.core.node_id + " "))
    assert "37.5%" in row_a and "28.6%" in row_a   # lookup 3/8, get 2/7
    tenant_header = next(line for line in lines if line.startswith("tenant "))
    assert "lookup hit rate" in tenant_header and "get hit rate" in tenant_header
    acme = next(line for line in lines if line.startswith("acme "))
    assert "60.0%" in acme and "33.3%" in acme     # lookup 3/5, get 2/6


def test_unreachable_node_is_an_error_line_and_the_rest_is_reported(metrics_node, connect,
                                                                    cli_json, cli):
    a = metrics_node()
    assert connect(a.address).put(_key("x"), b"\0" * 100)
    dead = f"127.0.0.1:{procs.free_port()}"
    rc, doc, err = cli_json("admin", "stats", "--nodes", f"{dead},{a.address}",
                            "--timeout-s", "3")
    assert rc == 1
    assert f"node {dead}: unreachable" in err
    assert [n["node_id"] for n in doc["nodes"]] == [a.core.node_id]
    assert doc["nodes"][0]["puts"] == 1 and doc["nodes"][0]["bytes_in"] == 100
    assert [e["address"] for e in doc["errors"]] == [dead]
    assert (doc["cluster"]["nodes"], doc["cluster"]["reachable"]) == (2, 1)
    rc, out, err = cli("admin", "stats", "--nodes", f"{dead},{a.address}", "--timeout-s", "3")
    assert rc == 1 and dead in err and a.core.node_id in out


def test_dashboard_queries_only_metrics_the_endpoint_exports(metrics_node, connect, metrics):
    import re

    node = metrics_node()
    c = connect(node.address, KeyScheme("m1", "float16", tenant="t"))
    assert c.put(_key("d"), b"\1" * 64) and c.get(_key("d")) is not None
    exported = {name for name, _ in metrics(node.metrics_port)}
    text = DASHBOARD.read_text()
    dash = json.loads(text)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10, "the dashboard has too few queries"
    used = set(re.findall(r"\bkvstore_[a-z0-9_]+", text))  # queries, variables, descriptions
    assert {m for e in exprs for m in re.findall(r"\bkvstore_[a-z0-9_]+", e)} <= used
    assert used - exported == set(), "the dashboard names metrics the node does not export"
    # and the dashboard covers the figures the issue asks for
    for needed in ("kvstore_hits_total", "kvstore_misses_total", "kvstore_tier_used_bytes",
                   "kvstore_tier_evictions_total", "kvstore_latency_seconds",
                   "kvstore_tenant_used_bytes", "kvstore_lookup_hits_total",
                   "kvstore_lookup_misses_total", "kvstore_tenant_lookup_hits_total"):
        assert needed in used


def test_metrics_port_in_use_stops_startup(node_config):
    import socket

    from kvstore.errors import ConfigError
    from kvstore.server.node import NodeThread

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        t = NodeThread(node_config(metrics_port=s.getsockname()[1]))
        with pytest.raises(ConfigError, match="metrics_port"):
            t.start()
        t.loop.call_soon_threadsafe(t.loop.stop)
