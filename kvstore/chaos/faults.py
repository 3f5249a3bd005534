"""Faults: one small interface (inject, heal), a log of what was done, and one class per kind.

    fault = ProcessPause(log, node)
    fault.inject()   # -> FaultEvent(time, kind="pause", target=node id, action="inject", details)
    ...              # the system runs with the fault
    fault.heal()     # -> FaultEvent(..., action="heal", details)

``details`` records what was observed while injecting (the pid and its /proc state, the bytes
written until ENOSPC, the offsets flipped, the proxy's counters): tests check them against the
system's own state (Stats, the Redis registry, /proc). A fault that cannot be injected raises
``FaultError``; it never silently does nothing.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from kvstore.chaos.cluster import ChaosCluster, ChaosNode, wait_for
from kvstore.chaos.proxy import LinkProxy


def chunk_path(data_dir: str, key: bytes) -> Path:
    """Where the disk tier keeps a chunk (kvstore/tiers/disk.py: chunks/<2 hex>/<hex>.kvc)."""
    h = key.hex()
    return Path(data_dir, "chunks", h[:2], f"{h}.kvc")


class FaultError(RuntimeError):
    """A fault could not be injected or healed as asked."""


@dataclass(frozen=True)
class FaultEvent:
    seq: int
    time: float          # time.time()
    mono: float          # time.monotonic(), to line up with load-generator records
    action: str          # inject | heal
    kind: str
    target: str
    details: dict[str, Any]


@dataclass
class FaultLog:
    events: list[FaultEvent] = field(default_factory=list)

    def add(self, action: str, kind: str, target: str, details: dict[str, Any]) -> FaultEvent:
        ev = FaultEvent(len(self.events), time.time(), time.monotonic(), action, kind, target,
                        details)
        self.events.append(ev)
        return ev

    def of(self, kind: str, action: str | None = None) -> list[FaultEvent]:
        return [e for e in self.events if e.kind == kind and action in (None, e.action)]

    def as_json(self) -> list[dict[str, Any]]:
        return [asdict(e) for e in self.events]


class FaultInjector(ABC):
    kind: ClassVar[str]

    def __init__(self, log: FaultLog, target: str) -> None:
        self.log, self.target = log, target
        self.active = False

    def inject(self) -> FaultEvent:
        if self.active:
            raise FaultError(f"{self.kind} on {self.target} is already injected")
        details = self._inject()
        self.active = True
        return self.log.add("inject", self.kind, self.target, details)

    def heal(self) -> FaultEvent:
        if not self.active:
            raise FaultError(f"{self.kind} on {self.target} was not injected")
        details = self._heal()
        self.active = False
        return self.log.add("heal", self.kind, self.target, details)

    def __enter__(self) -> FaultInjector:
        self.inject()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self.heal()

    @abstractmethod
    def _inject(self) -> dict[str, Any]: ...

    @abstractmethod
    def _heal(self) -> dict[str, Any]: ...


class ProcessKill(FaultInjector):
    """kill -9 a node; heal restarts it on the same ports and data dir (warm restart)."""

    kind = "kill"

    def __init__(self, log: FaultLog, cluster: ChaosCluster, node: ChaosNode) -> None:
        super().__init__(log, node.node_id)
        self.cluster, self.node = cluster, node

    def _inject(self) -> dict[str, Any]:
        pid = self.node.pid
        files = len(list(Path(self.node.data_dir, "chunks").glob("*/*.kvc")))
        status = self.cluster.kill_node(self.node)
        if status != -signal.SIGKILL:
            raise FaultError(f"node {self.target} (pid {pid}) exited with {status}, not -9")
        return {"pid": pid, "exit_status": status, "chunk_files": files}

    def _heal(self) -> dict[str, Any]:
        t0 = time.monotonic()
        self.cluster.start_node(self.node)
        return {"pid": self.node.pid, "start_s": round(time.monotonic() - t0, 3),
                "chunk_files": len(list(Path(self.node.data_dir, "chunks").glob("*/*.kvc")))}


class ProcessPause(FaultInjector):
    """SIGSTOP a node (it holds its sockets but answers nothing); heal sends SIGCONT."""

    kind = "pause"

    def __init__(self, log: FaultLog, node: ChaosNode) -> None:
        super().__init__(log, node.node_id)
        self.node = node

    def _signal(self, sig: signal.Signals, want: set[str]) -> dict[str, Any]:
        os.kill(self.node.pid, sig)
        try:
            state = wait_for(lambda: (s := self.node.proc_state()) in want and s, 5.0,
                             f"state {want} of pid {self.node.pid}")
        except TimeoutError as exc:
            raise FaultError(str(exc)) from None
        return {"pid": self.node.pid, "signal": sig.name, "proc_state": state}

    def _inject(self) -> dict[str, Any]:
        return self._signal(signal.SIGSTOP, {"T"})

    def _heal(self) -> dict[str, Any]:
        return self._signal(signal.SIGCONT, {"R", "S", "D"})


class LinkFault(FaultInjector):
    """Latency and loss (connection resets) on every link into a node."""

    kind = "link"

    def __init__(self, log: FaultLog, node: ChaosNode, latency_s: float, reset_p: float) -> None:
        super().__init__(log, node.node_id)
        if node.grpc_proxy is None or node.data_proxy is None:
            raise FaultError(f"node {node.node_id} has no proxies on its links")
        self.proxies: tuple[LinkProxy, ...] = (node.grpc_proxy, node.data_proxy)
        self.latency_s, self.reset_p = latency_s, reset_p
        self._before: dict[str, dict[str, int]] = {}

    def _inject(self) -> dict[str, Any]:
        self._before = {p.name: p.counters.as_dict() for p in self.proxies}
        for p in self.proxies:
            p.set_link(self.latency_s, self.reset_p)
        return {"latency_s": self.latency_s, "reset_p": self.reset_p,
                "proxies": [p.name for p in self.proxies]}

    def _heal(self) -> dict[str, Any]:
        for p in self.proxies:
            p.set_link(0.0, 0.0)
        delta = {p.name: {k: v - self._before[p.name][k] for k, v in p.counters.as_dict().items()}
                 for p in self.proxies}
        return {"during": delta, "resets": sum(d["resets"] for d in delta.values()),
                "bytes": sum(d["bytes_up"] + d["bytes_down"] for d in delta.values())}


class Partition(FaultInjector):
    """Cut a node off the network: the veth link of its namespace goes down (netns.py), so every
    connection it has or opens is cut, in (gRPC, data plane) and out (its Redis link, its copies
    to peers). What others send it vanishes (they time out: nothing is refused); its own sends
    fail. Heal sets the link up; TCP connections that lived through it resume.

    ``details`` hold the link's state and the kernel's counters of both ends at the cut, and
    at the heal what the counters did meanwhile (``during``): ``ns_rx_packets`` is what reached
    the node's interface (must be 0), ``host_tx_dropped`` what the host sent that the link
    dropped (> 0 under load: the cut was really in the way)."""

    kind = "partition"
    SETTLE_S = 5.0

    def __init__(self, log: FaultLog, node: ChaosNode) -> None:
        super().__init__(log, node.node_id)
        if node.netns is None:
            raise FaultError(f"node {node.node_id} has no network namespace of its own")
        self.netns = node.netns
        self._at_cut: dict[str, int] = {}

    def _inject(self) -> dict[str, Any]:
        self.netns.cut()
        try:
            # read after the cut: nothing may reach the node's interface from here on
            self._at_cut = self.netns.counters()
            state = self.netns.link_state()
            if state["ns_up"] or state["host_carrier"] or state["ns_route"]:
                raise FaultError(f"{self.netns.ns_veth} is still up after the cut: {state}")
        except BaseException:  # not injected, so nobody would heal it: leave the link up
            self.netns.heal()
            raise
        return {"netns": self.netns.name, "link": state, "counters": self._at_cut}

    def _heal(self) -> dict[str, Any]:
        now = self.netns.counters()
        during = {k: v - self._at_cut[k] for k, v in now.items()}
        self.netns.heal()
        try:
            state = wait_for(lambda: (s := self.netns.link_state())["host_carrier"]
                             and s["ns_up"] and s["ns_route"] and s, self.SETTLE_S,
                             f"{self.netns.ns_veth} up with its route")
        except TimeoutError as exc:
            raise FaultError(str(exc)) from None
        return {"link": state, "during": during}


class RedisOutage(FaultInjector):
    """Stop redis-server (SIGTERM; it keeps nothing: --save ''); heal starts an empty one on the
    same port."""

    kind = "redis"

    def __init__(self, log: FaultLog, cluster: ChaosCluster) -> None:
        super().__init__(log, "redis")
        self.cluster = cluster

    def _inject(self) -> dict[str, Any]:
        redis = self.cluster.redis
        assert redis is not None
        pid = redis.proc.pid
        redis.stop()
        return {"pid": pid, "exit_status": redis.proc.returncode, "port": redis.port}

    def _heal(self) -> dict[str, Any]:
        redis = self.cluster.restart_redis()
        return {"pid": redis.proc.pid, "port": redis.port}


class DiskFull(FaultInjector):
    """Fill the file system under a node's data dir with a ballast file until ENOSPC; heal
    removes it. The data dir must be on a small file system of its own (a tmpfs)."""

    kind = "disk_full"
    BLOCK = 1 << 20

    def __init__(self, log: FaultLog, node: ChaosNode) -> None:
        super().__init__(log, node.node_id)
        if node.tmpfs is None:
            raise FaultError(f"node {node.node_id} has no data dir file system of its own")
        self.node = node
        self.ballast = Path(node.data_dir, "chaos-ballast")

    def _inject(self) -> dict[str, Any]:
        try:
            written, free = 0, -1
            for _ in range(50):  # the node frees pages as well (overwrites delete old files):
                written += self._fill()  # top up until the file system shows 0 free at once
                free = self.node.tmpfs.free_bytes() if self.node.tmpfs else -1
                if free == 0:
                    break
            if free != 0:
                raise FaultError(f"{self.node.data_dir} still has {free} bytes free")
        except BaseException:
            self.ballast.unlink(missing_ok=True)  # a failed injection leaves nothing behind
            raise
        return {"ballast_bytes": written, "errno": "ENOSPC", "free_bytes": free}

    def _fill(self) -> int:
        """Append to the ballast until ENOSPC; returns bytes written."""
        written = 0
        with open(self.ballast, "ab", buffering=0) as f:
            for block in (self.BLOCK, 4096):  # big blocks, then the last pages
                while True:
                    try:
                        written += f.write(b"\0" * block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise FaultError(f"ballast write failed: {exc}") from exc
                        break
        return written

    def _heal(self) -> dict[str, Any]:
        self.ballast.unlink()
        return {"free_bytes": self.node.tmpfs.free_bytes() if self.node.tmpfs else -1}


class ChunkCorruption(FaultInjector):
    """Flip bytes in the payload of chunk files on a node's disk (the last byte and one in the
    middle of the payload). Heal has nothing to undo: the node must drop what it cannot verify;
    it reports which of the files are still there."""

    kind = "corrupt"

    def __init__(self, log: FaultLog, node: ChaosNode, keys: list[bytes]) -> None:
        super().__init__(log, node.node_id)
        self.node, self.keys = node, keys

    def path(self, key: bytes) -> Path:
        return chunk_path(self.node.data_dir, key)

    def _inject(self) -> dict[str, Any]:
        flipped = {}
        for key in self.keys:
            path = self.path(key)
            try:
                size = path.stat().st_size
                with open(path, "r+b") as f:
                    for off in (size - 1, size - 1 - min(512, size // 4)):
                        f.seek(off)
                        b = f.read(1)
                        f.seek(off)
                        f.write(bytes([b[0] ^ 0xFF]))
            except OSError as exc:
                raise FaultError(f"cannot corrupt {path}: {exc}") from exc
            flipped[key.hex()] = size
        return {"files": len(flipped), "keys": sorted(flipped)}

    def _heal(self) -> dict[str, Any]:
        left = [k.hex() for k in self.keys if self.path(k).exists()]
        return {"files_left": left}
