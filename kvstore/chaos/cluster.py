"""A local cluster built for fault injection: redis-server, N `kvstore serve` processes, a proxy
on the links that latency and loss act on, and one node in a network namespace of its own, whose
veth link the partition fault cuts.

    host netns (H = 10.213.x.y+1, the host end of the veth pair; N = its namespace end, +2)
    client ──▶ H:P   (LinkProxy "grpc")  ──▶ 127.0.0.<10+i>:P  node i >= 1 (gRPC)
    client ──▶ H:D   (LinkProxy "data")  ──▶ 127.0.0.<10+i>:D  node i >= 1 (data plane)
    node i ──▶ 127.0.0.1:Ri (LinkProxy "redis") ──▶ 127.0.0.1:R  redis-server
    netns kvchaos-<token>: node 0 on 0.0.0.0:P0 / :D0, advertised as N:P0
    client, peers ──▶ N:P0, N:D0 ──(veth)──▶ node 0
    node 0 ──(veth)──▶ H:R0 (LinkProxy "redis") ──▶ 127.0.0.1:R;  node 0 ──(veth)──▶ H:Pj peers

Nodes advertise those addresses, so their member ids in Redis, the data port a Handshake returns
and the peers' rebalancing traffic all take the same links; every connection node 0 has, in and
out, crosses its veth pair. ``ChaosNode.direct_address`` bypasses the links: the test reads a
node's own metrics there even while its link is cut (nodes >= 1: their private loopback
address; node 0: a console proxy on 127.0.0.1 that dials the namespace's own loopback, which no
cut touches, and which only the test's Probe uses).

Nodes keep chunks in a small CPU tier (so many live only on disk) and write every chunk through
to disk, so a kill -9 loses at most the few writes still queued. A node given ``tmpfs_bytes``
keeps its data dir on a tmpfs of that size (root; mount failure is an error, never a skip), and
a namespace that cannot be created (no root, no iproute2) is an error too.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvstore import procs
from kvstore.chaos.netns import NetNamespace
from kvstore.chaos.proxy import LinkProxy, ProxyHub
from kvstore.procs import wait_for
from kvstore_client.redis_membership import DEFAULT_PREFIX

log = logging.getLogger(__name__)
HEARTBEAT_TTL_S = 1.5
NODE_ARGS = ("--gpu-device", "none", "--cpu-capacity-bytes", "4MiB", "--page-bytes", "4KiB",
             "--max-chunk-bytes", "1MiB", "--disk-capacity-bytes", "48MiB",
             "--disk-admission", "write-through", "--metrics-port", "-1")



class Tmpfs:
    """A tmpfs mounted at ``path`` (needs root); ``unmount`` is safe to call twice."""

    def __init__(self, path: str | os.PathLike[str], size_bytes: int) -> None:
        self.path, self.size_bytes = Path(path), size_bytes
        self.mounted = False

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_bytes}",
                            "kvstore-chaos", str(self.path)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"cannot mount a tmpfs at {self.path} (root needed): "
                               f"{r.stderr.strip() or r.returncode}")
        self.mounted = True

    def unmount(self) -> None:
        if self.mounted:
            r = subprocess.run(["umount", str(self.path)], capture_output=True, text=True)
            if r.returncode != 0:  # still busy (a process we could not stop): detach it
                subprocess.run(["umount", "-l", str(self.path)], check=True)
            self.mounted = False

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize


@dataclass
class ChaosNode:
    index: int
    public_host: str     # advertised: what clients and peers dial
    private_host: str    # past its links (ChaosCluster's doc)
    port: int
    data_port: int
    data_dir: str
    log_path: str
    redis_proxy: LinkProxy
    grpc_proxy: LinkProxy | None = None   # None: a node in a namespace (its link is the veth)
    data_proxy: LinkProxy | None = None
    netns: NetNamespace | None = None
    bind_host: str = ""
    args: tuple[str, ...] = ()
    proc: procs.Proc | None = None
    starts: int = 0
    tmpfs: Tmpfs | None = None

    @property
    def node_id(self) -> str:
        """Its member id and public address."""
        return f"{self.public_host}:{self.port}"

    @property
    def direct_address(self) -> str:
        return f"{self.private_host}:{self.port}"

    @property
    def proxies(self) -> tuple[LinkProxy, ...]:
        return tuple(p for p in (self.grpc_proxy, self.data_proxy, self.redis_proxy)
                     if p is not None)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.proc.poll() is None

    def proc_state(self) -> str:
        """The process state letter from /proc (R, S, T = stopped, Z, ...); "" if gone."""
        try:
            return Path(f"/proc/{self.pid}/stat").read_text().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            return ""

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class ChaosCluster:
    root: Path
    n_nodes: int = 3
    tmpfs_bytes: dict[int, int] = field(default_factory=dict)  # node index -> tmpfs size
    node_args: Sequence[str] = NODE_ARGS
    ttl_s: float = HEARTBEAT_TTL_S
    netns_node: int | None = 0  # the node alone in a network namespace (the partition target)
    nodes: list[ChaosNode] = field(default_factory=list)
    redis: procs.Proc | None = None
    redis_port: int = 0
    hub: ProxyHub | None = None
    netns: NetNamespace | None = None

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}"

    def start(self, timeout_s: float = 90.0) -> None:
        try:
            self._start(timeout_s)
        except BaseException:
            self.close()
            raise

    def _start(self, timeout_s: float) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.redis = procs.start_redis()
        self.redis_port = self.redis.port
        self.hub = ProxyHub(seed=7)
        public = "127.0.0.1"
        if self.netns_node is not None:
            self.netns = NetNamespace().create()
            public = self.netns.host_ip  # reachable from the host and from the namespace
        for i in range(self.n_nodes):
            node = (self._netns_node(i) if i == self.netns_node else self._proxied_node(i, public))
            if i in self.tmpfs_bytes:
                node.tmpfs = Tmpfs(node.data_dir, self.tmpfs_bytes[i])
                node.tmpfs.mount()
            self.nodes.append(node)
        with ThreadPoolExecutor(self.n_nodes) as pool:  # each imports torch: start together
            list(pool.map(lambda n: self.start_node(n, timeout_s), self.nodes))
        wait_for(lambda: self.members() == {n.node_id for n in self.nodes}, timeout_s,
                 "every node to register")

    def _proxied_node(self, i: int, public: str) -> ChaosNode:
        assert self.hub is not None
        host = f"127.0.0.{10 + i}"
        grpc_p = self.hub.add(f"node{i}-grpc", (host, 0), host=public)
        data_p = self.hub.add(f"node{i}-data", (host, 0), host=public)
        grpc_p.upstream, data_p.upstream = (host, grpc_p.listen[1]), (host, data_p.listen[1])
        redis_p = self.hub.add(f"node{i}-redis", ("127.0.0.1", self.redis_port))
        node = ChaosNode(i, public, host, grpc_p.listen[1], data_p.listen[1],
                         str(self.root / f"node-{i}"), str(self.root / f"node-{i}.log"),
                         redis_p, grpc_p, data_p, bind_host=host)
        node.args = ("--redis-url", f"redis://{redis_p.address}", "--advertise-host", public,
                     "--heartbeat-ttl-s", str(self.ttl_s), *self.node_args)
        return node

    def _netns_node(self, i: int) -> ChaosNode:
        assert self.hub is not None and self.netns is not None
        ns = self.netns
        # the console: 127.0.0.1:P here -> the namespace's loopback, same port numbers
        console = [self.hub.add(f"node{i}-console-{w}", ("127.0.0.1", 0)) for w in ("grpc", "data")]
        for c in console:
            c.upstream, c.upstream_netns = ("127.0.0.1", c.listen[1]), ns.name
        redis_p = self.hub.add(f"node{i}-redis", ("127.0.0.1", self.redis_port), host=ns.host_ip)
        node = ChaosNode(i, ns.ns_ip, "127.0.0.1", console[0].listen[1], console[1].listen[1],
                         str(self.root / f"node-{i}"), str(self.root / f"node-{i}.log"),
                         redis_p, netns=ns, bind_host="0.0.0.0")
        # 0.0.0.0 inside the namespace is its veth address and its own loopback; off loopback
        # a node wants TLS and tokens, or insecure: true, which a local test cluster may say
        node.args = ("--redis-url", f"redis://{redis_p.address}", "--advertise-host", ns.ns_ip,
                     "--insecure", "--heartbeat-ttl-s", str(self.ttl_s), *self.node_args)
        return node

    def start_node(self, node: ChaosNode, timeout_s: float = 90.0) -> None:
        """Start (or restart, same ports and data dir) the node's `kvstore serve` process."""
        if node.netns is None:
            node.proc = procs.start_node(node.data_dir, node.args, host=node.bind_host,
                                         port=node.port, data_port=node.data_port,
                                         timeout_s=timeout_s, log_path=node.log_path)
        else:
            node.proc = _start_in_netns(node, timeout_s)
        node.starts += 1

    def kill_node(self, node: ChaosNode) -> int:
        """kill -9; returns the exit status (-9)."""
        assert node.proc is not None
        node.proc.proc.send_signal(signal.SIGKILL)
        return node.proc.proc.wait(10)

    def restart_redis(self) -> procs.Proc:
        self.redis = procs.start_redis(port=self.redis_port)
        return self.redis

    # ---- the system's own state --------------------------------------------------------------
    def _redis(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.redis_port, socket_timeout=1.0,
                           socket_connect_timeout=1.0)

    def registry(self) -> dict[str, Any]:
        """What Redis holds now: epoch, members (id -> doc), published rebalance counters."""
        r = self._redis()
        try:
            epoch = int(r.get(DEFAULT_PREFIX + "epoch") or 0)
            members = {k.decode(): json.loads(v)
                       for k, v in r.hgetall(DEFAULT_PREFIX + "nodes").items()}
            counters = {k.decode(): json.loads(v)
                        for k, v in r.hgetall(DEFAULT_PREFIX + "rebalance").items()}
            info = r.info("server")
        finally:
            r.close()
        return {"epoch": epoch, "members": members, "counters": counters,
                "redis_uptime_s": int(info["uptime_in_seconds"]), "redis_pid": info["process_id"]}

    def members(self) -> set[str]:
        import redis

        try:
            return set(self.registry()["members"])
        except redis.RedisError:
            return set()

    def converged(self, client_epoch: Callable[[], int] | None = None) -> bool:
        """Every node registered and up, every node's watcher (and the client's, if given) at
        the registry's epoch."""
        import redis

        try:
            reg = self.registry()
        except redis.RedisError:
            return False
        want = {n.node_id for n in self.nodes}
        if set(reg["members"]) != want or any(d["state"] != "up"
                                               for d in reg["members"].values()):
            return False
        if any(reg["counters"].get(n, {}).get("epoch") != reg["epoch"] for n in want):
            return False
        return client_epoch is None or client_epoch() == reg["epoch"]

    def dead_nodes(self, except_: Sequence[ChaosNode] = ()) -> list[int]:
        return [n.index for n in self.nodes if n not in except_ and not n.alive()]

    def close(self) -> None:
        try:
            for n in self.nodes:
                if n.proc is not None:
                    if n.proc_state() == "T":
                        os.kill(n.pid, signal.SIGCONT)
                    n.proc.kill()
            if self.redis is not None:
                self.redis.kill()
            if self.hub is not None:
                self.hub.close()
            for n in self.nodes:
                if n.tmpfs is not None:
                    n.tmpfs.unmount()
        finally:  # the namespace goes even if the rest failed (after its node process, if it could)
            if self.netns is not None:
                self.netns.close()


def _start_in_netns(node: ChaosNode, timeout_s: float) -> procs.Proc:
    """procs.start_node, run inside the node's namespace (``ip netns exec`` execs: the pid is
    the node's), waited for at its public address: across the veth, as its clients dial it."""
    assert node.netns is not None
    cmd = [*node.netns.exec_prefix(), sys.executable, "-m", "kvstore.cli.main", "serve",
           "--host", node.bind_host, "--port", str(node.port), "--data-port",
           str(node.data_port), "--data-dir", node.data_dir, *node.args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    with open(node.log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    p = procs.Proc(proc, node.public_host, node.port, node.data_port)
    try:
        procs.wait_port(node.public_host, node.port, timeout_s, proc)
        procs.wait_port(node.public_host, node.data_port, timeout_s, proc)
    except BaseException:
        p.kill()
        raise
    return p
