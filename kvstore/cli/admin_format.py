"""What `kvstore admin` prints: Stats snapshots as plain dicts (the --json output) and aligned
tables for people. No gRPC here: kvstore/cli/admin.py gathers, this module shapes and renders.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from kvstore.v1 import kvstore_pb2 as pb

_TIER_FIELDS = ("capacity_bytes", "used_bytes", "chunks", "hits", "evictions", "demotions_in",
                "promotions_out", "corrupt_dropped")
# hits/misses count Gets; lookup_* count the keys of Lookup calls. Clients look up first and get
# only what was found, so the get hit rate reads near 100% and the lookup hit rate is the cache's.
_LOOKUP_FIELDS = ("lookup_keys", "lookup_hits", "lookup_misses")
_TENANT_FIELDS = ("hits", "misses", *_LOOKUP_FIELDS, "bytes_in", "bytes_out", "used_bytes",
                  "chunks")
_NODE_FIELDS = ("hits", "misses", *_LOOKUP_FIELDS, "bytes_in", "bytes_out", "puts", "rejected",
                "prefetches")


def hit_rate(hits: int, misses: int) -> float | None:
    return hits / (hits + misses) if hits + misses else None


def node_dict(address: str, s: pb.StatsResponse) -> dict[str, Any]:
    """One node's Stats as JSON-ready numbers (ints stay ints, unlike protobuf's json_format)."""
    tiers = [{"tier": t.name, **{f: getattr(t, f) for f in _TIER_FIELDS}} for t in s.tiers]
    d: dict[str, Any] = {"node_id": s.node_id, "address": address,
                         "uptime_s": round(s.uptime_s, 3)}
    d.update({f: getattr(s, f) for f in _NODE_FIELDS})
    d["hit_rate"] = hit_rate(s.hits, s.misses)
    d["lookup_hit_rate"] = hit_rate(s.lookup_hits, s.lookup_misses)
    d["chunks"] = sum(n.chunks for n in s.namespaces)  # each chunk once, memory and disk copies
    d["capacity_bytes"] = sum(t.capacity_bytes for t in s.tiers)
    d["used_bytes"] = sum(t.used_bytes for t in s.tiers)
    for f in ("evictions", "demotions_in", "promotions_out", "corrupt_dropped"):
        d[f] = sum(t[f] for t in tiers)
    d["latency_ms"] = {op.op: {"count": op.count, "p50": op.p50_ms, "p99": op.p99_ms}
                       for op in s.latencies}
    d["tiers"] = tiers
    d["tenants"] = [{"tenant": t.tenant, **{f: getattr(t, f) for f in _TENANT_FIELDS}}
                    for t in s.tenants]
    d["namespaces"] = [{"namespace_id": n.namespace_id, "model_id": n.model_id,
                        "tenant": n.tenant, **{f: getattr(n, f) for f in _TENANT_FIELDS}}
                       for n in s.namespaces]
    return d


def _add_up(rows: Iterable[dict[str, Any]], key: str, fields: Sequence[str]
            ) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        acc = out.setdefault(r[key], {key: r[key], **dict.fromkeys(fields, 0)})
        for f in fields:
            acc[f] += r[f]
    return [out[k] for k in sorted(out)]


def stats_doc(nodes: list[dict[str, Any]], errors: list[dict[str, str]]) -> dict[str, Any]:
    """The `kvstore admin stats --json` document: cluster totals, per tier, per tenant, nodes."""
    cluster: dict[str, Any] = {"nodes": len(nodes) + len(errors), "reachable": len(nodes)}
    for f in (*_NODE_FIELDS, "chunks", "capacity_bytes", "used_bytes", "evictions",
              "demotions_in", "promotions_out", "corrupt_dropped"):
        cluster[f] = sum(n[f] for n in nodes)
    cluster["hit_rate"] = hit_rate(cluster["hits"], cluster["misses"])
    cluster["lookup_hit_rate"] = hit_rate(cluster["lookup_hits"], cluster["lookup_misses"])
    tiers = _add_up((t for n in nodes for t in n["tiers"]), "tier", _TIER_FIELDS)
    tenants = _add_up((t for n in nodes for t in n["tenants"]), "tenant", _TENANT_FIELDS)
    for t in tenants:
        t["hit_rate"] = hit_rate(t["hits"], t["misses"])
        t["lookup_hit_rate"] = hit_rate(t["lookup_hits"], t["lookup_misses"])
    return {"cluster": cluster, "tiers": tiers, "tenants": tenants, "nodes": nodes,
            "errors": errors}


# ---- rendering ---------------------------------------------------------------------------
def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; the first column left-aligned, the rest right."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)]
                     + [line(r) for r in cells[1:]])


def _lat(n: dict[str, Any], op: str) -> str:
    x = n["latency_ms"].get(op)
    return f"{x['p50']:.2f}/{x['p99']:.2f}" if x and x["count"] else "-"


def render_stats(doc: dict[str, Any]) -> str:
    c = doc["cluster"]
    out = [f"cluster: {c['reachable']}/{c['nodes']} nodes reachable, {c['chunks']} chunks, "
           f"{size(c['used_bytes'])} used of {size(c['capacity_bytes'])}; lookups: "
           f"{c['lookup_keys']} keys, {c['lookup_hits']} found (lookup hit rate "
           f"{pct(c['lookup_hit_rate'])}); gets: {c['hits']} hits, {c['misses']} misses "
           f"(get hit rate {pct(c['hit_rate'])}); {size(c['bytes_in'])} in, "
           f"{size(c['bytes_out'])} out, {c['evictions']} evictions, {c['demotions_in']} "
           f"demotions, {c['corrupt_dropped']} corrupt chunks dropped", ""]
    out.append(table(
        ("node", "chunks", "used", "capacity", "lookup keys", "lookup hit rate", "get hits",
         "get misses", "get hit rate", "in", "out", "puts", "rejected", "evictions",
         "get p50/p99 ms", "put p50/p99 ms"),
        [(n["node_id"], n["chunks"], size(n["used_bytes"]), size(n["capacity_bytes"]),
          n["lookup_keys"], pct(n["lookup_hit_rate"]), n["hits"], n["misses"],
          pct(n["hit_rate"]), size(n["bytes_in"]), size(n["bytes_out"]), n["puts"],
          n["rejected"], n["evictions"], _lat(n, "get"), _lat(n, "put"))
         for n in doc["nodes"]]))
    out += ["", table(
        ("node", "tier", "capacity", "used", "used %", "chunks", "hits", "evictions",
         "demotions in", "promotions out", "corrupt dropped"),
        [(n["node_id"], t["tier"], size(t["capacity_bytes"]), size(t["used_bytes"]),
          pct(t["used_bytes"] / t["capacity_bytes"] if t["capacity_bytes"] else None),
          t["chunks"], t["hits"], t["evictions"], t["demotions_in"], t["promotions_out"],
          t["corrupt_dropped"]) for n in doc["nodes"] for t in n["tiers"]])]
    if doc["tenants"]:
        out += ["", table(
            ("tenant", "chunks", "used", "lookup keys", "lookup hit rate", "get hits",
             "get misses", "get hit rate", "in", "out"),
            [(t["tenant"] or "(none)", t["chunks"], size(t["used_bytes"]), t["lookup_keys"],
              pct(t["lookup_hit_rate"]), t["hits"], t["misses"], pct(t["hit_rate"]),
              size(t["bytes_in"]), size(t["bytes_out"]))
             for t in doc["tenants"]])]
    return "\n".join(out)


def render_ring(doc: dict[str, Any]) -> str:
    head = (f"ring: epoch {doc['epoch']}, {len(doc['members'])} members "
            f"({sum(m['state'] == 'up' for m in doc['members'])} up), registry {doc['redis_url']}")
    rows = [(m["node_id"], m["address"], m["state"], f"{m['weight']:g}", pct(m["share"]),
             "-" if m["chunks"] is None else m["chunks"],
             "-" if m["used_bytes"] is None else size(m["used_bytes"]))
            for m in doc["members"]]
    return head + "\n\n" + table(("node", "address", "state", "weight", "share", "chunks",
                                  "used"), rows)


def chunk_dict(node: str, c: pb.ChunkReport) -> dict[str, Any]:
    return {"node_id": node, "key": c.key.hex(), "found": c.found, "tiers": list(c.tiers),
            "payload_bytes": c.payload_bytes, "codec": c.codec, "checksum": f"{c.checksum:016x}",
            "dtype": c.dtype, "shape": list(c.shape), "num_tokens": c.num_tokens,
            "namespace_id": c.namespace_id, "model_id": c.model_id, "tenant": c.tenant,
            "age_s": round(c.age_s, 3), "hits": c.hits}


def render_inspect(doc: dict[str, Any]) -> str:
    out = []
    for k in doc["keys"]:
        found = [c for c in k["copies"] if c["found"]]
        out.append(f"{k['key']}: " + (f"on {len(found)} of {k['asked']} nodes" if found
                                      else f"not found on any of {k['asked']} nodes"))
        if found:
            out.append(table(
                ("node", "tiers", "size", "codec", "checksum", "dtype", "shape", "tokens",
                 "model", "tenant", "namespace", "age", "hits"),
                [(c["node_id"], "+".join(c["tiers"]), size(c["payload_bytes"]), c["codec"],
                  c["checksum"], c["dtype"], "x".join(map(str, c["shape"])) or "-",
                  c["num_tokens"], c["model_id"] or "?", c["tenant"] or "(none)",
                  c["namespace_id"][:12], f"{c['age_s']:.0f} s", c["hits"]) for c in found]))
        out.append("")
    return "\n".join(out).rstrip()


def render_evict(doc: dict[str, Any]) -> str:
    rows = [(n["node_id"], n["chunks"], size(n["bytes"]), len(n["namespace_ids"]))
            for n in doc["nodes"]]
    return (f"evicted {doc['selector']}={doc['value']!r}: {doc['chunks']} chunks, "
            f"{size(doc['bytes'])}\n\n" + table(("node", "chunks", "bytes", "namespaces"), rows))
