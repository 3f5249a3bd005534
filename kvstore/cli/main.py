"""The `kvstore` command: serve a node, run a local cluster, run the demo, run benchmarks."""

from __future__ import annotations

import argparse
import importlib
import sys

from kvstore.errors import ConfigError, KVStoreError

# subcommand -> module with add_arguments(parser) and run(args) -> int; imported lazily so that
# `kvstore serve` never imports torch models or benchmark code.
_BENCHES = {
    "store": "kvstore.bench.store",
    "route": "kvstore.bench.route",
    "codecs": "kvstore.bench.codecs",
    "blend": "kvstore.bench.blend",
    "cluster": "kvstore.bench.cluster",
    "remote": "kvstore.bench.remote",
    "vllm": "kvstore.bench.vllm",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvstore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from kvstore.cli import serve

    serve.add_arguments(sub.add_parser("serve", help="run a store node (embedded default "
                                                     "with no arguments)"))
    from kvstore.cli import cluster

    cluster.add_arguments(sub.add_parser("cluster", help="a local cluster of nodes: up, down, "
                                                        "status"))
    from kvstore.cli import admin, warmup

    admin.add_arguments(sub.add_parser("admin", help="operate nodes: stats, ring, inspect, "
                                                     "evict, drain (tables or --json)"))
    warmup.add_arguments(sub.add_parser("warmup", help="preload the cache with the KV of a "
                                                       "directory of documents"))
    from kvstore.cli import token

    token.add_arguments(sub.add_parser("token", help="auth tokens: `token new --tenant T "
                                                     "[--role admin]` (docs/SECURITY.md)"))
    from kvstore.cli import model

    model.add_arguments(sub.add_parser("model", help="the SmolLM2 model file: `model fetch`, "
                                                     "`model path` (--model-dir)"))
    demo = sub.add_parser("demo", help="local store + real model: the time a cache hit saves")
    importlib.import_module("kvstore.demo").add_arguments(demo)
    bench = sub.add_parser("bench", help="benchmarks (print a table and a final JSON line)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    for name, module in _BENCHES.items():
        p = bench_sub.add_parser(name)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as exc:  # a benchmark whose optional deps are missing
            p.set_defaults(missing=str(exc))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            from kvstore.cli import serve

            return serve.run(args)
        if args.command == "cluster":
            from kvstore.cli import cluster

            return cluster.run(args)
        if args.command == "admin":
            from kvstore.cli import admin

            return admin.run(args)
        if args.command == "warmup":
            from kvstore.cli import warmup

            return warmup.run(args)
        if args.command == "token":
            from kvstore.cli import token

            return token.run(args)
        if args.command == "model":
            from kvstore.cli import model

            return model.run(args)
        if args.command == "demo":
            return importlib.import_module("kvstore.demo").run(args)
        if getattr(args, "missing", None):
            print(f"kvstore bench {args.bench}: {args.missing}", file=sys.stderr)
            return 2
        return importlib.import_module(_BENCHES[args.bench]).run(args)
    except (ConfigError, KVStoreError) as exc:
        print(f"kvstore: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
