"""`kvstore admin stats|ring|inspect|evict|drain`: operate store nodes over gRPC.

Targets: ``--nodes host:port,...``, or ``--redis-url URL`` (the members of the cluster's
registry), else the embedded default node 127.0.0.1:50051. Every node is asked concurrently; a
node that cannot be reached gets one error line on stderr, the others are still reported, and the
exit code is 1. Exit code 2: nothing could be asked (bad arguments, registry unreachable).

Calls go through ``open_channel`` and carry ``auth_metadata`` (kvstore_client/security.py):
--token/--tls-ca/--tls-cert/--tls-key, defaulting to KVSTORE_TOKEN, KVSTORE_TLS_CA, ... Stats is
``KVStore/Stats``; inspect, evict and drain are the ``kvstore.v1.Admin`` service (admin role).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from kvstore.cli import admin_format as fmt
from kvstore.cli.client_security import add_security_arguments, security_from_args
from kvstore.errors import InvalidArgument
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

DEFAULT_NODE = "127.0.0.1:50051"
RING_SAMPLE_KEYS = 1 << 17  # sampled ring positions for each member's share (error ~0.3%)


def add_arguments(p: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nodes", help="comma-separated host:port of the nodes to ask")
    common.add_argument("--redis-url", help="ask the members of this cluster registry")
    common.add_argument("--timeout-s", type=float, default=5.0, help="per call (default 5)")
    common.add_argument("--json", action="store_true", help="print JSON instead of tables")
    add_security_arguments(common)
    sub = p.add_subparsers(dest="admin_command", required=True)
    sub.add_parser("stats", parents=[common], help="cluster, node, tier and tenant figures")
    sub.add_parser("ring", parents=[common], help="members, states, epoch, each node's share "
                   "(needs --redis-url)")
    q = sub.add_parser("inspect", parents=[common], help="where chunks live, size, codec, "
                       "checksum, age")
    q.add_argument("keys", nargs="+", metavar="KEY", help="chunk key, 32 hex digits")
    q = sub.add_parser("evict", parents=[common], help="remove every chunk of a model, tenant "
                       "or namespace from every node")
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="model id")
    which.add_argument("--tenant")
    which.add_argument("--namespace", help="namespace id (from stats --json or inspect)")
    q = sub.add_parser("drain", parents=[common], help="hand a member's chunks to their new "
                       "owners, then it leaves and stops")
    q.add_argument("node", metavar="NODE", help="node id or host:port")


# ---- talking to nodes --------------------------------------------------------------------
@dataclass
class Target:
    address: str
    node_id: str = ""
    state: str = ""
    weight: float = 1.0


class Nodes:
    """One channel per node; ``ask`` turns every failure into an error string for its node."""

    def __init__(self, args: argparse.Namespace) -> None:
        from kvstore_client.security import auth_metadata

        self.security = security_from_args(args, "kvstore admin")
        self.metadata = auth_metadata(self.security)
        self.timeout_s = args.timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, address: str) -> grpc.aio.Channel:
        from kvstore_client.security import open_channel

        if address not in self._channels:
            self._channels[address] = open_channel(address, self.security)
        return self._channels[address]

    async def ask(self, address: str, method: str, request: Any) -> Any:
        """Admin methods by name ("Inspect"), or "Stats" of the KVStore service."""
        ch = self._channel(address)
        stub = pb_grpc.KVStoreStub(ch) if method == "Stats" else pb_grpc.AdminStub(ch)
        try:
            return await getattr(stub, method)(request, metadata=self.metadata,
                                               timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            return _describe(exc)
        except ValueError as exc:  # TLS files that cannot be read
            return str(exc)

    async def ask_all(self, addresses: list[str], method: str, request: Any) -> list[Any]:
        return await asyncio.gather(*(self.ask(a, method, request) for a in addresses))

    async def close(self) -> None:
        await asyncio.gather(*(ch.close() for ch in self._channels.values()))


def _describe(exc: grpc.aio.AioRpcError) -> str:
    details = (exc.details() or "").splitlines()[0] if exc.details() else ""
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return f"unreachable ({exc.code().name}: {details})"
    return f"{exc.code().name}: {details}"


async def _registry_view(redis_url: str) -> Any:
    from kvstore.errors import Unavailable
    from kvstore_client.redis_membership import REDIS_ERRORS, RedisRegistry

    registry = RedisRegistry(redis_url)
    try:
        return (await registry.snapshot()).view
    except REDIS_ERRORS as exc:
        raise Unavailable(f"cannot read the cluster registry at {redis_url}: {exc}") from exc
    finally:
        await registry.close()


async def _targets(args: argparse.Namespace) -> tuple[list[Target], Any]:
    if args.nodes and args.redis_url:
        raise InvalidArgument("give --nodes or --redis-url, not both")
    if args.redis_url:
        view = await _registry_view(args.redis_url)
        return [Target(m.address, m.node_id, m.state, m.weight) for m in view.members], view
    addresses = [a.strip() for a in (args.nodes or DEFAULT_NODE).split(",") if a.strip()]
    if not addresses or any(":" not in a for a in addresses):
        raise InvalidArgument(f"--nodes {args.nodes!r}: expected host:port[,host:port...]")
    return [Target(a) for a in addresses], None


def _split(targets: list[Target], results: list[Any]
           ) -> tuple[list[tuple[Target, Any]], list[dict[str, str]]]:
    ok, errors = [], []
    for t, r in zip(targets, results, strict=True):
        if isinstance(r, str):
            errors.append({"address": t.address, "node_id": t.node_id, "error": r})
        else:
            ok.append((t, r))
    return ok, errors


def _report_errors(errors: list[dict[str, str]]) -> None:
    for e in errors:
        name = e["node_id"] if e["node_id"] and e["node_id"] != e["address"] else ""
        print(f"kvstore admin: error: node {e['address']}" + (f" ({name})" if name else "")
              + f": {e['error']}", file=sys.stderr)


# ---- commands ----------------------------------------------------------------------------
async def _stats(nodes: Nodes, targets: list[Target], view: Any, args: argparse.Namespace
                 ) -> tuple[dict[str, Any], list[dict[str, str]]]:
    ok, errors = _split(targets, await nodes.ask_all([t.address for t in targets], "Stats",
                                                      pb.StatsRequest()))
    doc = fmt.stats_doc([fmt.node_dict(t.address, s) for t, s in ok], errors)
    return doc, errors


async def _ring(nodes: Nodes, targets: list[Target], view: Any, args: argparse.Namespace
                ) -> tuple[dict[str, Any], list[dict[str, str]]]:
    import numpy as np

    from kvstore_client.membership import build_ring

    if view is None:
        raise InvalidArgument("kvstore admin ring reads the cluster registry: pass --redis-url")
    ring = build_ring(view.up())
    sample = np.random.default_rng(0).integers(0, 2**64 - 1, RING_SAMPLE_KEYS, dtype=np.uint64,
                                               endpoint=True)
    shares = ring.shares(sample) if ring is not None else {}
    ok, errors = _split(targets, await nodes.ask_all([t.address for t in targets], "Stats",
                                                      pb.StatsRequest()))
    stats = {t.node_id: fmt.node_dict(t.address, s) for t, s in ok}
    members = [{"node_id": t.node_id, "address": t.address, "state": t.state,
                "weight": t.weight, "share": shares.get(t.node_id, 0.0),
                "chunks": stats[t.node_id]["chunks"] if t.node_id in stats else None,
                "used_bytes": stats[t.node_id]["used_bytes"] if t.node_id in stats else None}
               for t in targets]
    return {"redis_url": args.redis_url, "epoch": view.epoch, "members": members,
            "errors": errors}, errors


async def _inspect(nodes: Nodes, targets: list[Target], view: Any, args: argparse.Namespace
                   ) -> tuple[dict[str, Any], list[dict[str, str]]]:
    try:
        keys = [bytes.fromhex(k) for k in args.keys]
    except ValueError as exc:
        raise InvalidArgument(f"chunk keys are 32 hex digits: {exc}") from exc
    if any(len(k) != 16 for k in keys):
        raise InvalidArgument("chunk keys are 16 bytes = 32 hex digits")
    ok, errors = _split(targets, await nodes.ask_all([t.address for t in targets], "Inspect",
                                                      pb.InspectRequest(keys=keys)))
    out: list[dict[str, Any]] = [{"key": k.hex(), "asked": len(targets),
            "copies": [fmt.chunk_dict(r.node_id, r.chunks[i]) for _, r in ok]}
                                 for i, k in enumerate(keys)]
    missing = [k["key"] for k in out if not any(c["found"] for c in k["copies"])]
    return {"keys": out, "not_found": missing, "errors": errors}, errors


async def _evict(nodes: Nodes, targets: list[Target], view: Any, args: argparse.Namespace
                 ) -> tuple[dict[str, Any], list[dict[str, str]]]:
    selector, value = next((s, v) for s, v in (("model_id", args.model), ("tenant", args.tenant),
                                               ("namespace_id", args.namespace)) if v is not None)
    ok, errors = _split(targets, await nodes.ask_all(
        [t.address for t in targets], "Evict", pb.EvictRequest(**{selector: value})))
    rows = [{"node_id": r.node_id, "address": t.address, "chunks": r.chunks, "bytes": r.bytes,
             "namespace_ids": list(r.namespace_ids)} for t, r in ok]
    return {"selector": selector, "value": value, "chunks": sum(r["chunks"] for r in rows),
            "bytes": sum(r["bytes"] for r in rows), "nodes": rows, "errors": errors}, errors


async def _drain(nodes: Nodes, targets: list[Target], view: Any, args: argparse.Namespace
                 ) -> tuple[dict[str, Any], list[dict[str, str]]]:
    match = [t for t in targets if args.node in (t.node_id, t.address)]
    if not match and view is not None:
        raise InvalidArgument(f"{args.node!r} is not a member of the cluster at "
                              f"{args.redis_url} (members: {[t.node_id for t in targets]})")
    target = match[0] if match else Target(args.node)
    if ":" not in target.address:
        raise InvalidArgument(f"drain {args.node!r}: give the node's host:port (or its id with "
                              "--redis-url)")
    ok, errors = _split([target], [await nodes.ask(target.address, "Drain", pb.DrainRequest())])
    doc = {"node_id": ok[0][1].node_id, "address": target.address,
           "message": ok[0][1].message} if ok else {"address": target.address}
    return {**doc, "errors": errors}, errors


_COMMANDS: dict[str, tuple[Callable[..., Awaitable[tuple[dict[str, Any], list]]],
                           Callable[[dict[str, Any]], str]]] = {
    "stats": (_stats, fmt.render_stats),
    "ring": (_ring, fmt.render_ring),
    "inspect": (_inspect, fmt.render_inspect),
    "evict": (_evict, fmt.render_evict),
    "drain": (_drain, lambda d: f"{d['node_id']} ({d['address']}): {d['message']}"
              if "message" in d else ""),
}


async def _run(args: argparse.Namespace) -> int:
    gather, render = _COMMANDS[args.admin_command]
    nodes = Nodes(args)
    try:
        targets, view = await _targets(args)
        doc, errors = await gather(nodes, targets, view, args)
    finally:
        await nodes.close()
    _report_errors(errors)
    text = json.dumps(doc, indent=1) if args.json else render(doc)
    if text:
        print(text, flush=True)
    return 1 if errors or doc.get("not_found") else 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
