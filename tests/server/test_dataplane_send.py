"""The node's send path: one sendmsg of header + page views per hit, and the send budget."""

from __future__ import annotations

import socket
import threading
import time

import torch

from kvstore.keys import prefix_keys
from kvstore.server.dataplane import DataPlaneServer, SendBudget, sendmsg_all
from kvstore_client.dataplane import ConnectionPool


def test_sendmsg_all_survives_partial_sends_and_many_views():
    """A small send buffer forces partial sendmsg calls that end inside a view; more views than
    one sendmsg takes (IOV_BATCH) go in several calls; empty views are skipped."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    views = [memoryview(bytes([i % 251]) * (1 + i * 37 % 3000)) for i in range(1500)]
    views.insert(7, memoryview(b""))
    want = b"".join(views)
    got = bytearray()

    def drain() -> None:
        while len(got) < len(want):
            got.extend(b.recv(65536))
            time.sleep(0.0005)  # a slow reader keeps the sender's buffer full

    t = threading.Thread(target=drain)
    t.start()
    sendmsg_all(a, [b"head", *views])
    t.join(10)
    a.close()
    b.close()
    assert bytes(got) == b"head" + want


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_send_budget_paces_one_session_to_the_budget():
    clock = FakeClock()
    budget = SendBudget(1000, burst_s=0.0, clock=lambda: clock.now, sleep=clock.sleep)
    for _ in range(5):
        budget.take("a", 100)
    assert abs(clock.now - 0.4) < 1e-9  # 500 bytes at 1000 B/s: the 5th leaves at 0.4 s


def test_send_budget_shares_equally_among_active_sessions():
    """Two sessions sending at once each get half; once one stops (past the window) the other
    gets the whole budget again."""
    clock = FakeClock()
    budget = SendBudget(1000, window_s=0.5, burst_s=0.0, clock=lambda: clock.now,
                        sleep=lambda s: None)
    budget.take("a", 100)
    budget.take("b", 100)
    # both active: each session's clock advances at 500 B/s
    assert abs(budget._next["a"] - 0.1) < 1e-9  # a alone when it sent
    assert abs(budget._next["b"] - 0.2) < 1e-9  # b: 100 bytes at 500 B/s
    clock.now = 2.0  # a went quiet
    budget.take("b", 100)
    assert set(budget._seen) == {"b"} and abs(budget._next["b"] - 2.1) < 1e-9


def test_a_node_with_a_send_budget_serves_at_most_its_budget(start_node, connect, scheme):
    node = start_node()
    c = connect(node.address)
    keys = prefix_keys(scheme, list(range(4 * 256)))
    chunks = [torch.randint(0, 255, (1 << 20,), dtype=torch.uint8) for _ in keys]
    c.put_many(keys, chunks)
    paced = DataPlaneServer(node.core, "127.0.0.1", 0, send_budget_bytes_per_s=8 << 20)
    paced.start()
    try:
        aio = c._client
        aio._pool = ConnectionPool("127.0.0.1", paced.port, lambda: aio.session_id, 2)
        t0 = time.perf_counter()
        got = c.get_many(keys)
        elapsed = time.perf_counter() - t0
    finally:
        paced.stop()
    assert all(torch.equal(g, t) for g, t in zip(got, chunks, strict=True))
    # 4 MiB at 8 MiB/s: the last chunk may leave only after 3 MiB were paced (0.375 s)
    assert elapsed >= 0.35
