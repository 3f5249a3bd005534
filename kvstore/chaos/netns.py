"""A network namespace joined to this host by one veth pair: a node's own network, with a cable
the partition fault pulls.

    host netns                                      netns kvchaos-<token>
    veth kvh<token>  10.213.X.Y+1/30  <───────────> veth kvn<token>  10.213.X.Y+2/30, lo up

Everything the node in the namespace sends or receives, except on its own loopback, crosses the
pair: gRPC, data plane, its Redis link and its rebalancing copies to peers. ``cut()`` sets the
namespace's end down. Its routes go with it, so the node's own sends fail at once (ENETUNREACH,
as on a host whose interface went down); the host end loses carrier but keeps its route and a
permanent neighbour entry, so what the host sends is dropped at the link: peers see silence
until their deadlines, not refusals. ``heal()`` sets it up again (the kernel restores the
connected route); TCP connections that lived through the cut resume at their next retransmit.

Safety: only addresses of the /30 that this object assigns to its own pair are ever used, and a
``blackhole`` route for the /30 in the host's table (metric 4000) keeps its packets off the
default route even if the connected route went away: nothing leaves the machine. Names and the
/30 are unique per object (random token, checked against what exists), so two runs on one host
cannot collide. ``close()`` removes the namespace, the pair and the route; it is safe to call
twice and after a failed ``create()``.

Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2's ``ip``; neither missing is a skip:
``create()`` raises ``NetnsError`` saying what is missing.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)
_CLONE_NEWNET = 0x40000000
SUBNET_PREFIX = "10.213"       # /30s are drawn from 10.213.0.0/16
_GUARD_METRIC = 4000
_IP_TIMEOUT_S = 10.0


class NetnsError(RuntimeError):
    """A namespace or its link could not be created, changed or read."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("ip")
    if exe is None:
        raise NetnsError("iproute2's `ip` is not installed: `apt-get install -y iproute2` "
                         "(the chaos partition needs network namespaces)")
    r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=_IP_TIMEOUT_S)
    if check and r.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed ({r.returncode}): {r.stderr.strip()}")
    return r


class NetNamespace:
    def __init__(self, token: str | None = None) -> None:
        self.token = token or secrets.token_hex(3)
        self.name = f"kvchaos-{self.token}"
        self.host_veth, self.ns_veth = f"kvh{self.token}", f"kvn{self.token}"
        self.host_ip = self.ns_ip = self.subnet = ""
        self.created = False
        self._veth = self._route = False

    # ---- life cycle --------------------------------------------------------------------------
    def create(self) -> NetNamespace:
        """Make the namespace and its link; raises NetnsError (after cleaning up) on failure."""
        if os.geteuid() != 0:
            raise NetnsError(f"creating network namespace {self.name} needs root (uid "
                             f"{os.geteuid()}): the chaos suite runs as root, as CI does")
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def _create(self) -> None:
        if self.name in _ip("netns", "list").stdout.split():
            raise NetnsError(f"network namespace {self.name} exists already")
        self.subnet, self.host_ip, self.ns_ip = _free_subnet()
        _ip("netns", "add", self.name)
        self.created = True
        _ip("link", "add", self.host_veth, "type", "veth", "peer", "name", self.ns_veth)
        self._veth = True
        _ip("link", "set", self.ns_veth, "netns", self.name)
        _ip("route", "add", "blackhole", self.subnet, "metric", str(_GUARD_METRIC))
        self._route = True
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_veth)
        _ip("-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_veth)
        _ip("-n", self.name, "link", "set", "lo", "up")
        _ip("-n", self.name, "link", "set", self.ns_veth, "up")
        _ip("link", "set", self.host_veth, "up")
        # no ARP on the host end: while cut, what the host sends is dropped in silence
        # (an unanswered ARP would turn it into EHOSTUNREACH after ~3 s)
        mac = self._link(self.ns_veth, inside=True)["address"]
        _ip("neigh", "replace", self.ns_ip, "lladdr", mac, "dev", self.host_veth,
            "nud", "permanent")

    def close(self) -> None:
        if self._route:
            _ip("route", "del", "blackhole", self.subnet, "metric", str(_GUARD_METRIC),
                check=False)
            self._route = False
        if self.created:
            # deleting the namespace deletes the veth end in it, and so the pair
            _ip("netns", "delete", self.name, check=False)
            self.created = False
        if self._veth:  # gone with the namespace, unless a create() failed before the move
            if _ip("link", "show", "dev", self.host_veth, check=False).returncode == 0:
                _ip("link", "delete", self.host_veth, check=False)
            self._veth = False

    def __enter__(self) -> NetNamespace:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the cable ---------------------------------------------------------------------------
    def cut(self) -> None:
        _ip("-n", self.name, "link", "set", self.ns_veth, "down")

    def heal(self) -> None:
        _ip("-n", self.name, "link", "set", self.ns_veth, "up")

    def link_state(self) -> dict[str, Any]:
        """Both ends: admin state (up), carrier (lower_up), and the ns end's route."""
        host, ns = self._link(self.host_veth), self._link(self.ns_veth, inside=True)
        routes = _ip("-n", self.name, "-4", "route", "show", "dev", self.ns_veth).stdout
        return {"host_up": "UP" in host["flags"], "host_carrier": "LOWER_UP" in host["flags"],
                "ns_up": "UP" in ns["flags"], "ns_carrier": "LOWER_UP" in ns["flags"],
                "ns_route": self.subnet in routes}

    def counters(self) -> dict[str, int]:
        """Kernel counters of both ends: host_tx_* is what the host sent toward the node,
        ns_rx_* what the node's interface received."""
        out: dict[str, int] = {}
        for side, link in (("host", self._link(self.host_veth, stats=True)),
                           ("ns", self._link(self.ns_veth, inside=True, stats=True))):
            st = link["stats64"]
            for d in ("rx", "tx"):
                for k in ("bytes", "packets", "dropped"):
                    out[f"{side}_{d}_{k}"] = int(st[d][k])
        return out

    def _link(self, dev: str, inside: bool = False, stats: bool = False) -> dict[str, Any]:
        args: Sequence[str] = (("-n", self.name) if inside else ()) + (
            ("-s",) if stats else ()) + ("-j", "link", "show", "dev", dev)
        data = json.loads(_ip(*args).stdout)
        if not data:
            raise NetnsError(f"no link {dev} ({'in ' + self.name if inside else 'on the host'})")
        return data[0]

    # ---- processes and sockets inside ----------------------------------------------------------
    def exec_prefix(self) -> list[str]:
        """Prefix of a command that runs inside (``ip netns exec`` execs it: same pid)."""
        exe = shutil.which("ip")
        if exe is None:
            raise NetnsError("iproute2's `ip` is not installed: `apt-get install -y iproute2`")
        return [exe, "netns", "exec", self.name]

    def socket(self, family: int = socket.AF_INET) -> socket.socket:
        """A TCP socket that lives in the namespace (created there by this thread, which then
        returns home): connecting it to 127.0.0.1 reaches the namespace's own loopback."""
        return socket_in(self.name, family)


def socket_in(netns: str, family: int = socket.AF_INET) -> socket.socket:
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{netns}") as target, open("/proc/thread-self/ns/net") as home:
        if libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
            raise NetnsError(f"setns into {netns}: {os.strerror(ctypes.get_errno())}")
        try:
            return socket.socket(family, socket.SOCK_STREAM)
        finally:
            if libc.setns(home.fileno(), _CLONE_NEWNET) != 0:
                # this thread would open every later socket in the namespace: stop here
                raise SystemExit(f"cannot return from netns {netns}: "
                                 f"{os.strerror(ctypes.get_errno())}")


def _free_subnet() -> tuple[str, str, str]:
    """(subnet/30, host address, namespace address): a /30 of 10.213/16 no address or route on
    this host uses (other runs' pairs included)."""
    used = _tokens(_ip("-o", "-4", "addr", "show").stdout
                   + _ip("-4", "route", "show", "table", "all").stdout)
    for _ in range(64):
        x, y = secrets.randbelow(256), 4 * secrets.randbelow(64)
        net = f"{SUBNET_PREFIX}.{x}.{y}"
        if not any(f"{SUBNET_PREFIX}.{x}.{y + i}" in used for i in range(4)):
            return f"{net}/30", f"{SUBNET_PREFIX}.{x}.{y + 1}", f"{SUBNET_PREFIX}.{x}.{y + 2}"
    raise NetnsError(f"no free /30 in {SUBNET_PREFIX}.0.0/16")


def _tokens(text: str) -> set[str]:
    """Addresses named in ``ip`` output, without their /prefix."""
    return {w.split("/")[0] for w in text.split()}
