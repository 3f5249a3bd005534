"""A cluster of local processes: `kvstore cluster up/down/status`.

``up`` starts a redis-server (unless given a URL) and N `kvstore serve --redis-url` nodes on free
ports, waits until all of them registered, and records them in ``<dir>/cluster.json``:

    {"redis_url": ..., "redis_pid": pid or null (null: not ours, never stopped),
     "nodes": [{"node_id", "address", "pid", "port", "data_port", "data_dir", "log"}, ...]}

Each node keeps its data and log under ``<dir>/node-<i>/``. ``down`` sends SIGINT (leave at once,
no hand-over: the whole cluster is going), waits, then SIGKILL; it stops redis only if ``up``
started it. Processes are signalled only after checking that the pid still runs the command we
started (pids are reused).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kvstore import procs
from kvstore.errors import FailedPrecondition, KVStoreError, NotFound, Unavailable
from kvstore_client.redis_membership import DEFAULT_PREFIX, REDIS_ERRORS, RedisRegistry

log = logging.getLogger(__name__)
STATE_FILE = "cluster.json"
DEFAULT_DIR = "./kvstore-cluster"


def state_path(directory: str | os.PathLike[str]) -> Path:
    return Path(directory) / STATE_FILE


def read_state(directory: str | os.PathLike[str]) -> dict[str, Any]:
    path = state_path(directory)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"no local cluster recorded in {path} (run `kvstore cluster up`)") \
            from None


def up(directory: str | os.PathLike[str], nodes: int, *, redis_url: str | None = None,
       host: str = "127.0.0.1", node_args: Sequence[str] = (),
       timeout_s: float = 60.0) -> dict[str, Any]:
    """Start the cluster and return its recorded state."""
    if nodes < 1:
        raise FailedPrecondition(f"--nodes must be >= 1, got {nodes}")
    root = Path(directory)
    if state_path(root).exists():
        alive = [n["pid"] for n in read_state(root)["nodes"] if _ours(n["pid"], "kvstore")]
        if alive:
            raise FailedPrecondition(f"a cluster is already up in {root} (pids {alive}); "
                                     "run `kvstore cluster down` first")
    root.mkdir(parents=True, exist_ok=True)
    redis = None
    if redis_url is None:
        redis = procs.start_redis(host=host)
        redis_url = f"redis://{redis.address}"
    started: list[procs.Proc] = []

    def start(i: int) -> procs.Proc:
        data_dir = root / f"node-{i}"
        data_dir.mkdir(exist_ok=True)
        return procs.start_node(str(data_dir), ["--redis-url", redis_url, *node_args], host=host,
                                timeout_s=timeout_s, log_path=str(data_dir / "node.log"))
    try:
        with ThreadPoolExecutor(nodes) as pool:  # nodes import torch: start them together
            futures = [pool.submit(start, i) for i in range(nodes)]
        started = [f.result() for f in futures if f.exception() is None]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]  # type: ignore[misc]
        wait_members(redis_url, {p.address for p in started}, timeout_s)
    except BaseException:
        for p in started:
            p.kill()
        if redis is not None:
            redis.kill()
        raise
    state = {
        "redis_url": redis_url, "redis_pid": redis.proc.pid if redis else None,
        "nodes": [{"node_id": p.address, "address": p.address, "pid": p.proc.pid, "port": p.port,
                   "data_port": p.data_port, "data_dir": str(root / f"node-{i}"),
                   "log": str(root / f"node-{i}" / "node.log")} for i, p in enumerate(started)],
    }
    state_path(root).write_text(json.dumps(state, indent=1))
    return state


def wait_members(redis_url: str, addresses: set[str], timeout_s: float,
                 prefix: str = DEFAULT_PREFIX) -> int:
    """Poll the registry until exactly ``addresses`` are members; returns the epoch."""
    async def poll() -> int:
        registry = RedisRegistry(redis_url, prefix)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                snap = await registry.snapshot()
                if {m.address for m in snap.view.members} == addresses:
                    return snap.view.epoch
                if time.monotonic() > deadline:
                    raise Unavailable(f"members {sorted(addresses)} did not all register in "
                                      f"{timeout_s} s; registered: {sorted(snap.view.ids)}")
                await asyncio.sleep(0.1)
        finally:
            await registry.close()
    return asyncio.run(poll())


def down(directory: str | os.PathLike[str], timeout_s: float = 30.0) -> dict[str, Any]:
    """Stop what ``up`` started (nodes first, then its redis-server); returns the old state."""
    state = read_state(directory)
    pids = [n["pid"] for n in state["nodes"] if _ours(n["pid"], "kvstore")]
    for pid in pids:
        os.kill(pid, signal.SIGINT)
    _reap(pids, timeout_s)
    redis_pid = state.get("redis_pid")
    if redis_pid and _ours(redis_pid, "redis-server"):
        os.kill(redis_pid, signal.SIGTERM)
        _reap([redis_pid], timeout_s)
    state_path(directory).unlink()
    return state


def status(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The recorded state plus what is true now: pid alive, registry entry, chunks and bytes."""
    state = read_state(directory)
    return asyncio.run(_status(state))


async def _status(state: dict[str, Any]) -> dict[str, Any]:
    from kvstore.keys import KeyScheme
    from kvstore_client.aio import AsyncKVStoreClient, ClientOptions

    registry = RedisRegistry(state["redis_url"])
    try:
        snap = await registry.snapshot()
        rebalance = await registry.counters()
        epoch, members, redis_ok = snap.view.epoch, {m.node_id: m for m in snap.view.members}, True
    except REDIS_ERRORS:
        epoch, members, rebalance, redis_ok = None, {}, {}, False
    finally:
        await registry.close()
    rows = []
    for n in state["nodes"]:
        m = members.get(n["node_id"])
        row = {**n, "alive": _ours(n["pid"], "kvstore"), "state": m.state if m else "absent",
               "chunks": None, "used_bytes": None,
               "keys_copied": rebalance.get(n["node_id"], {}).get("keys_copied")}
        client = AsyncKVStoreClient(n["address"], KeyScheme("kvstore-status", "uint8"),
                                    ClientOptions(deadline_s=2.0))
        try:
            s = await client.stats()
            row["chunks"] = sum(t.chunks for t in s.tiers if t.name != "disk")
            row["used_bytes"] = sum(t.used_bytes for t in s.tiers)
        except KVStoreError as exc:
            row["error"] = str(exc).splitlines()[0]
        finally:
            await client.close()
        rows.append(row)
    return {"redis_url": state["redis_url"], "redis_reachable": redis_ok, "epoch": epoch,
            "nodes": rows}


def _ours(pid: int, needle: str) -> bool:
    """True if ``pid`` is alive and still runs a command containing ``needle``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
            return False  # exited, not yet waited for
    except OSError:
        return False
    return needle.encode() in cmdline


def _reap(pids: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while _ours(pid, "") and time.monotonic() < deadline:
            time.sleep(0.05)
        if _ours(pid, ""):
            log.warning("pid %d did not exit within %.0f s; killing it", pid, timeout_s)
            os.kill(pid, signal.SIGKILL)
        try:  # our own child (tests start clusters in-process): collect it
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
