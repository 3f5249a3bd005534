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
    # cluster membership (kvstore/cluster): joining needs only --redis-url
    "redis_url": str, "advertise_host": str, "capacity_weight": str, "replication": str,
    "heartbeat_ttl_s": str, "rebalance_bytes_per_s": str, "drain_timeout_s": str,
    "metrics_port": str, "tls_cert": str, "tls_key": str, "tls_client_ca": str, "tls_ca": str,
    "auth_tokens_file": str, "peer_token_file": str,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML/JSON config file (see docs/CONFIG.md)")
    for name, typ in _FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None)
    p.add_argument("--no-data-plane", dest="data_plane", action="store_const", const=False,
                   default=None, help="serve chunk bytes over gRPC streams only")
    p.add_argument("--fsync", dest="fsync", action="store_const", const=True, default=None)
    p.add_argument("--insecure", dest="insecure", action="store_const", const=True,
                   default=None, help="serve plaintext without tokens on a non-loopback host "
                   "(a trusted network only; docs/SECURITY.md)")
    p.add_argument("--shared-memory", dest="shared_memory", action="store_const", const=True,
                   default=None, help="keep the CPU tier in a /dev/shm file that co-located "
                   "clients (same user) copy chunks out of")
    p.add_argument("--model", action="append", default=None, metavar="ID:DTYPE[:CHUNK[:LAYOUT]]",
                   help="a model whose KV this node accepts (repeatable; default: any)")
    p.add_argument("--tier-codec", action="append", default=None, metavar="TIER=CODEC",
                   help="re-encode chunks demoted into TIER with CODEC, e.g. disk=kivi-int4 "
                        "(repeatable; sets tier_codecs)")


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


def parse_tier_codecs(items: list[str]) -> dict[str, str]:
    """--tier-codec TIER=CODEC (repeatable) -> the tier_codecs setting."""
    out: dict[str, str] = {}
    for text in items:
        tier, sep, codec = text.partition("=")
        if not sep or not tier or not codec or tier in out:
            raise ConfigError(f"--tier-codec {text!r}: expected TIER=CODEC, once per tier")
        out[tier] = codec
    return out


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    overrides = {name: getattr(args, name)
                 for name in [*_FLAGS, "data_plane", "fsync", "shared_memory", "insecure"]}
    if args.model:
        overrides["models"] = [parse_model(m) for m in args.model]
    if getattr(args, "tier_codec", None):
        overrides["tier_codecs"] = parse_tier_codecs(args.tier_codec)
    return load_config(args.config, overrides=overrides)


async def serve(config: NodeConfig) -> None:
    from kvstore.server.node import StoreNode

    node = StoreNode(config)
    await node.start()
    member = None
    if config.redis_url:  # cluster member: register, watch the ring, rebalance
        from kvstore.cluster.node import ClusterNode

        member = ClusterNode(node, config)
        try:
            await member.start()
        except BaseException:
            await node.stop(grace_s=0)
            raise
    print(f"kvstore node {node.core.node_id}: gRPC {node.address}, data plane port "
          f"{node.core.data_port or 'off'}, metrics port {node.metrics_port or 'off'}, "
          f"data dir {config.data_dir}"
          + (f", cluster member {member.node_id} via {config.redis_url}" if member else ""),
          flush=True)
    stop = asyncio.Event()
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        stop.set()

    if member is not None:  # `kvstore admin drain`: the same path as SIGTERM
        node.drain_hook = lambda: on_signal(signal.SIGTERM)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    await stop.wait()
    print("kvstore node: shutting down", flush=True)
    try:
        if member is not None:
            # SIGTERM hands this node's chunks to their new owners first; SIGINT just leaves.
            if received[0] == signal.SIGTERM:
                await member.drain()
            else:
                await member.leave()
    finally:
        await node.stop(grace_s=5.0)
    print("kvstore node: stopped", flush=True)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(config))
    return 0


__all__ = ["ModelSpec", "add_arguments", "config_from_args", "run"]
