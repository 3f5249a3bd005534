"""`kvstore cluster up|down|status`: a local cluster of store nodes and a redis-server."""

from __future__ import annotations

import argparse
import json
import sys

# Same value as kvstore.cluster.local.DEFAULT_DIR (checked by a test); not imported here so that
# building the CLI parser does not import redis (the GPU image and plain `serve` do without it).
DEFAULT_DIR = "./kvstore-cluster"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="cluster_command", required=True)
    up = sub.add_parser("up", help="start N nodes (and a redis-server unless --redis-url)")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--cpu-capacity-bytes", default="256MiB", help="per node")
    up.add_argument("--max-chunk-bytes", default="16MiB", help="per node")
    up.add_argument("--disk-capacity-bytes", default="0", help="per node (0 = no disk tier)")
    up.add_argument("--replication", type=int, choices=(1, 2), default=2)
    up.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                    help="extra `kvstore serve` argument for every node (repeatable), "
                         "e.g. --node-arg=--heartbeat-ttl-s=2")
    up.add_argument("--timeout-s", type=float, default=60.0)
    down = sub.add_parser("down", help="stop the nodes (and the redis-server `up` started)")
    down.add_argument("--timeout-s", type=float, default=30.0)
    status = sub.add_parser("status", help="members, their state, chunks and bytes")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    for q in (up, down, status):
        q.add_argument("--dir", default=DEFAULT_DIR, help="where the state file and "
                       f"node data live (default {DEFAULT_DIR})")


def run(args: argparse.Namespace) -> int:
    from kvstore.cluster import local

    if args.cluster_command == "up":
        node_args = ["--cpu-capacity-bytes", args.cpu_capacity_bytes, "--max-chunk-bytes",
                     args.max_chunk_bytes, "--disk-capacity-bytes", args.disk_capacity_bytes,
                     "--replication", str(args.replication), *args.node_arg]
        state = local.up(args.dir, args.nodes, redis_url=args.redis_url, host=args.host,
                         node_args=node_args, timeout_s=args.timeout_s)
        print(f"cluster up: {len(state['nodes'])} nodes, registry {state['redis_url']}")
        for n in state["nodes"]:
            print(f"  {n['node_id']:22s} pid {n['pid']:<8d} log {n['log']}")
        print(f"connect with ClusterSpec(scheme, redis_url={state['redis_url']!r}).connect()")
        return 0
    if args.cluster_command == "down":
        state = local.down(args.dir, timeout_s=args.timeout_s)
        print(f"cluster down: stopped {len(state['nodes'])} nodes"
              + (" and redis-server" if state.get("redis_pid") else ""))
        return 0
    st = local.status(args.dir)
    if args.json:
        print(json.dumps(st))
    else:
        _print_status(st)
    healthy = st["redis_reachable"] and all(n["alive"] and n["state"] == "up"
                                            for n in st["nodes"])
    return 0 if healthy else 1


def _print_status(st: dict) -> None:
    print(f"registry {st['redis_url']}: "
          + (f"epoch {st['epoch']}" if st["redis_reachable"] else "UNREACHABLE"))
    head = (f"{'node':22s} {'pid':>8s} {'alive':>5s} {'state':>8s} {'chunks':>7s} "
            f"{'used MiB':>9s} {'copied':>7s}")
    print(head)
    print("-" * len(head))
    for n in st["nodes"]:
        def cell(v: object, fmt: str) -> str:
            return format(v, fmt) if v is not None else "-"
        used = n["used_bytes"] / 2**20 if n["used_bytes"] is not None else None
        print(f"{n['node_id']:22s} {n['pid']:8d} {'yes' if n['alive'] else 'NO':>5s} "
              f"{n['state']:>8s} {cell(n['chunks'], '7d'):>7s} {cell(used, '9.1f'):>9s} "
              f"{cell(n['keys_copied'], '7d'):>7s}")
    sys.stdout.flush()
