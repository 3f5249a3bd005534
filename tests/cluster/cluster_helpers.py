"""Helpers of the cluster tests: polling with deadlines, node subprocesses, registry reads.

Node subprocesses are started with kvstore.procs.start_node (really separate processes: kill -9
kills them), in parallel because each imports torch. Heartbeat TTLs are short (1.5 s) so member
loss shows within seconds; every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kvstore import procs

TTL_S = 1.5


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str,
             interval_s: float = 0.05) -> Any:
    return procs.wait_for(predicate, timeout_s, what, interval_s, error=AssertionError)


async def await_for(predicate: Callable[[], Any], timeout_s: float, what: str,
                    interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


def random_chunks(n: int, seed: int, min_bytes: int = 1024,
                  max_bytes: int = 32 << 10) -> tuple[list[bytes], list[bytes]]:
    import random

    rng = random.Random(seed)
    keys = [rng.randbytes(16) for _ in range(n)]
    return keys, [rng.randbytes(rng.randint(min_bytes, max_bytes)) for _ in range(n)]


def same_bytes(got: Sequence[Any], want: Sequence[bytes]) -> list[int]:
    """Indices where the fetched tensor is missing or differs from the bytes put."""
    return [i for i, (g, w) in enumerate(zip(got, want, strict=True))
            if g is None or bytes(g.numpy()) != w]


class NodeProcs:
    """`kvstore serve --redis-url` subprocesses with short heartbeats, stopped at teardown."""

    def __init__(self, root: str, redis_url: str) -> None:
        self.root, self.redis_url = root, redis_url
        self.procs: list[procs.Proc] = []
        self._n = 0

    def start(self, count: int = 1, extra: Sequence[str] = ()) -> list[procs.Proc]:
        def one(i: int) -> procs.Proc:
            data_dir = os.path.join(self.root, f"node-{i}")
            return procs.start_node(
                data_dir, ["--redis-url", self.redis_url, "--heartbeat-ttl-s", str(TTL_S),
                           "--gpu-device", "none", "--cpu-capacity-bytes", "32MiB",
                           "--page-bytes", "16KiB", "--max-chunk-bytes", "1MiB",
                           "--disk-capacity-bytes", "0", *extra],
                log_path=os.path.join(self.root, f"node-{i}.log"))
        first, self._n = self._n, self._n + count
        with ThreadPoolExecutor(count) as pool:
            started = list(pool.map(one, range(first, first + count)))
        self.procs += started
        return started

    def stop_all(self) -> None:
        for p in self.procs:
            p.kill()


async def registry_members(redis_url: str) -> dict[str, Any]:
    """node id -> Member, as Redis has them right now."""
    from kvstore_client.redis_membership import RedisRegistry

    reg = RedisRegistry(redis_url)
    try:
        return {m.node_id: m for m in (await reg.snapshot()).view.members}
    finally:
        await reg.close()


def rebalance_stats(redis_url: str) -> dict[str, dict[str, Any]]:
    """node id -> the rebalance counters each node publishes to Redis."""
    import json

    import redis

    r = redis.Redis.from_url(redis_url)
    try:
        return {k.decode(): json.loads(v) for k, v in
                r.hgetall("kvstore:cluster:rebalance").items()}
    finally:
        r.close()


async def await_async(predicate: Callable[[], Any], timeout_s: float, what: str,
                      interval_s: float = 0.1) -> Any:
    """Like await_for, for a predicate that is a coroutine function."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


def settled(redis_url: str, node_ids: set[str], epoch: int) -> bool:
    """Every node published that its rebalancer processed ``epoch`` (or later) and is idle."""
    stats = rebalance_stats(redis_url)
    return all(n in stats and stats[n]["epoch"] >= epoch and stats[n]["idle"] for n in node_ids)


def holders(nodes, keys) -> list[set[str]]:
    """Which nodes hold each key, asked of every node directly (not through the cluster)."""
    out: list[set[str]] = [set() for _ in keys]
    for n in nodes:
        for i, e in enumerate(n.core.manager.lookup(keys)):
            if e is not None:
                out[i].add(n.address)
    return out
