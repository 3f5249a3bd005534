"""`kvstore serve`: run one store node until SIGINT/SIGTERM (then drain gracefully)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from kvstore.config import ModelSpec, NodeConfig, load_config
from kvstore.errors import ConfigError

# flag -> config field; flags override the environment, which overrides the config file.
_FLAGS = {
    "node_id": str, "host": str, "port": int, "data_port": int, "data_dir": str,
    "gpu_device": str, "gpu_capacity_bytes": str, "cpu_capacity_bytes": str,
    "disk_capacity_bytes": str, "page_bytes": str, "max_chunk_bytes": str,
    "eviction_policy": str, "disk_admission": str,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML/JSON config file (see docs/CONFIG.md)")
    for name, typ in _FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None)
    p.add_argument("--no-data-plane", dest="data_plane", action="store_const", const=False,
                   default=None, help="serve chunk bytes over gRPC streams only")
    p.add_argument("--fsync", dest="fsync", action="store_const", const=True, default=None)
    p.add_argument("--model", action="append", default=None, metavar="ID:DTYPE[:CHUNK[:LAYOUT]]",
                   help="a model whose KV this node accepts (repeatable; default: any)")


def parse_model(text: str) -> dict[str, object]:
    parts = text.split(":")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"--model {text!r}: expected ID:DTYPE[:CHUNK_TOKENS[:LAYOUT]]")
    spec: dict[str, object] = {"model_id": parts[0], "kv_dtype": parts[1]}
    if len(parts) > 2:
        if not parts[2].isdigit():
            raise ConfigError(f"--model {text!r}: chunk tokens must be an integer")
        spec["chunk_tokens"] = int(parts[2])
    if len(parts) > 3:
        spec["kv_layout"] = parts[3]
    return spec


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    overrides = {name: getattr(args, name) for name in list(_FLAGS) + ["data_plane", "fsync"]}
    if args.model:
        overrides["models"] = [parse_model(m) for m in args.model]
    return load_config(args.config, overrides=overrides)


async def serve(config: NodeConfig) -> None:
    from kvstore.server.node import StoreNode

    node = StoreNode(config)
    await node.start()
    print(f"kvstore node {node.core.node_id}: gRPC {node.address}, data plane port "
          f"{node.core.data_port or 'off'}, data dir {config.data_dir}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("kvstore node: shutting down", flush=True)
    await node.stop(grace_s=5.0)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(config))
    return 0


__all__ = ["ModelSpec", "add_arguments", "config_from_args", "run"]
