"""The partition's network namespace (kvstore/chaos/netns.py) against a plain echo server in it:
the link really cuts both directions, the console path stays, what the kernel counts matches, and
nothing is left behind. Needs root and iproute2, as the chaos suite does: without them these
fail (NetnsError says what is missing), they are not skipped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from kvstore.chaos import netns as netns_mod
from kvstore.chaos.netns import NetNamespace, NetnsError
from kvstore.chaos.proxy import ProxyHub
from kvstore.procs import wait_port

pytestmark = pytest.mark.chaos
PORT = 5555  # inside the namespace: every port there is free
ECHO = """
import socket, threading
srv = socket.create_server(("0.0.0.0", {port}))
def serve(c):
    with c:
        while data := c.recv(65536):
            c.sendall(data)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def host_state() -> str:
    """Every namespace, link and route on the host (what a leak would show up in)."""
    return "".join(subprocess.run(["ip", *a], capture_output=True, text=True).stdout
                   for a in (("netns", "list"), ("-o", "link", "show"),
                             ("-4", "route", "show", "table", "all")))


@pytest.fixture
def ns() -> Iterator[NetNamespace]:
    n = NetNamespace().create()
    try:
        yield n
    finally:
        n.close()


@pytest.fixture
def echo(ns: NetNamespace) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([*ns.exec_prefix(), sys.executable, "-c", ECHO.format(port=PORT)])
    try:
        wait_port(ns.ns_ip, PORT, 10.0, proc)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def echo_once(sock_or_addr, timeout_s: float = 2.0) -> bytes:
    s = (socket.create_connection(sock_or_addr, timeout=timeout_s)
         if isinstance(sock_or_addr, tuple) else sock_or_addr)
    with s:
        s.settimeout(timeout_s)
        s.sendall(b"ping")
        return s.recv(16)


def test_the_cut_is_silence_inward_and_an_error_outward_and_heals(ns, echo):
    home = os.readlink("/proc/thread-self/ns/net")
    assert echo_once((ns.ns_ip, PORT)) == b"ping"
    c0 = ns.counters()
    ns.cut()
    state = ns.link_state()
    assert not state["ns_up"] and not state["host_carrier"] and not state["ns_route"], state
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):  # dropped at the link: no refusal, no unreachable
        echo_once((ns.ns_ip, PORT), timeout_s=1.0)
    assert time.monotonic() - t0 >= 0.9
    # from inside, the host cannot be reached either
    out = subprocess.run([*ns.exec_prefix(), sys.executable, "-c",
                          f"import socket; socket.create_connection(('{ns.host_ip}', 9), 2)"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "unreachable" in out.stderr, out.stderr
    # the namespace's own loopback is not on the link: the console path still answers
    s = ns.socket()
    s.settimeout(2.0)
    s.connect(("127.0.0.1", PORT))
    assert echo_once(s) == b"ping"
    during = {k: v - c0[k] for k, v in ns.counters().items()}
    assert during["host_tx_dropped"] > 0 and during["ns_rx_packets"] == 0, during
    ns.heal()
    assert echo_once((ns.ns_ip, PORT)) == b"ping"
    assert all(ns.link_state().values())
    # the thread that made the console socket went back to the test's own namespace
    assert os.readlink("/proc/thread-self/ns/net") == home


def test_a_console_proxy_dials_inside_the_namespace(ns, echo):
    with ProxyHub() as hub:
        console = hub.add("console", ("127.0.0.1", PORT))
        console.upstream_netns = ns.name
        ns.cut()
        assert echo_once(tuple(console.listen)) == b"ping"
        assert console.counters.bytes_up == 4


def test_names_and_subnets_are_unique_and_close_leaves_nothing():
    before = host_state()
    a, b = NetNamespace().create(), NetNamespace().create()
    try:
        assert a.name != b.name and a.subnet != b.subnet and a.host_veth != b.host_veth
        assert a.name in host_state() and b.subnet in host_state()
    finally:
        a.close()
        b.close()
        a.close()  # twice is fine
    assert host_state() == before


def test_a_taken_name_fails_and_cleans_up():
    a = NetNamespace().create()
    try:
        with pytest.raises(NetnsError, match="exists already"):
            NetNamespace(token=a.token).create()
        assert a.name in host_state()  # the failed one did not delete the other's namespace
    finally:
        a.close()


def test_missing_iproute2_or_root_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(netns_mod.shutil, "which", lambda name: None)
    with pytest.raises(NetnsError, match="apt-get install -y iproute2"):
        NetNamespace().create()
    monkeypatch.undo()
    monkeypatch.setattr(netns_mod.os, "geteuid", lambda: 1000)
    with pytest.raises(NetnsError, match="needs root"):
        NetNamespace().create()
