"""The fault injector's own parts, against a plain echo server: the proxy's latency, loss and
partition really happen (and are counted), and the fault interface refuses misuse."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from kvstore.chaos.faults import FaultError, FaultInjector, FaultLog
from kvstore.chaos.proxy import LinkProxy, ProxyHub

pytestmark = pytest.mark.chaos


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except ConnectionResetError:  # the proxy's loss: expected here
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[:2]
    stop.set()
    srv.close()


@pytest.fixture
def proxy(echo) -> Iterator[LinkProxy]:
    with ProxyHub(seed=3) as hub:
        yield hub.add("echo", echo)


def round_trip(proxy: LinkProxy, data: bytes = b"ping", timeout_s: float = 2.0) -> float:
    t0 = time.monotonic()
    with socket.create_connection(proxy.listen, timeout=timeout_s) as s:
        s.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionResetError("closed")
            got += chunk
    assert got == data
    return time.monotonic() - t0


def test_latency_is_added_each_way_and_bytes_are_counted(proxy):
    assert round_trip(proxy) < 0.05
    proxy.set_link(latency_s=0.1)
    assert 0.2 <= round_trip(proxy) < 1.0
    # the proxy's thread counts a segment right after handing it to the socket, so the echo can
    # reach this thread first: wait briefly for the count
    deadline = time.monotonic() + 2.0
    while not (proxy.counters.bytes_up >= 8 and proxy.counters.bytes_down >= 8):
        assert time.monotonic() < deadline, proxy.counters
        time.sleep(0.005)


def test_loss_resets_connections_and_counts_them(proxy):
    proxy.set_link(reset_p=1.0)
    with pytest.raises(OSError):  # ConnectionResetError, or a close before the echo
        round_trip(proxy)
    assert proxy.counters.resets == 1


def test_a_partition_is_silence_and_healing_lets_held_bytes_through(proxy):
    proxy.set_blackhole(True)
    with pytest.raises(TimeoutError):
        round_trip(proxy, timeout_s=0.5)
    s = socket.create_connection(proxy.listen, timeout=3.0)
    s.sendall(b"held")
    time.sleep(0.3)  # nothing may pass during this window
    assert proxy.counters.held == 2 and proxy.counters.bytes_up == 0
    proxy.set_blackhole(False)
    assert s.recv(16) == b"held"
    s.close()


def test_a_dead_upstream_is_a_reset_connection(proxy):
    proxy.upstream = ("127.0.0.1", 1)  # nothing listens there
    with pytest.raises(OSError):
        round_trip(proxy)
    assert proxy.counters.upstream_refused == 1


class _Noop(FaultInjector):
    kind = "noop"

    def _inject(self) -> dict:
        return {"n": 1}

    def _heal(self) -> dict:
        return {}


def test_the_fault_interface_logs_each_step_and_refuses_misuse():
    log = FaultLog()
    f = _Noop(log, "x")
    with pytest.raises(FaultError):
        f.heal()
    ev = f.inject()
    assert (ev.action, ev.kind, ev.target, ev.details) == ("inject", "noop", "x", {"n": 1})
    with pytest.raises(FaultError):
        f.inject()
    f.heal()
    with f:  # inject on entry, heal on exit
        assert f.active
    assert [e.action for e in log.events] == ["inject", "heal", "inject", "heal"]
    assert not f.active and [e.seq for e in log.of("noop", "heal")] == [1, 3]
