"""A small fault-injecting TCP proxy: the "link" between clients and one node's port.

This machine's kernel has no ``tc netem``, so latency, loss and partitions are made here, above
TCP. Each ``LinkProxy`` listens on one port and forwards every connection to its upstream; its
knobs apply to all of its connections at once:

    latency_s   each forwarded segment is delivered that much later, in each direction (order
                kept; throughput is not throttled)
    reset_p     loss: a TCP stream hides a lost packet as delay, so a lossy link shows as
                connections that die. Each forwarded segment resets its connection (RST both
                ways) with this probability
    blackhole   nothing is forwarded in either direction and new connections are accepted but
                never connected upstream, so peers see silence (timeouts), not refusals;
                healing lets the held bytes through. (The partition fault cuts a veth link
                instead, netns.py: a proxy cuts only the connections that cross it.)

``upstream_netns`` makes a proxy dial its upstream inside a network namespace: the chaos cluster's
console into a partitioned node (cluster.py).

All proxies run on one asyncio loop in a daemon thread (``ProxyHub``); knobs may be set from any
thread. Counters (connections, resets, upstream refusals, bytes) are what the fault log is checked
against.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from kvstore.chaos.netns import NetnsError, socket_in

log = logging.getLogger(__name__)
T = TypeVar("T")
_READ_BYTES = 64 << 10
_CONNECT_TIMEOUT_S = 2.0


@dataclass
class ProxyCounters:
    connections: int = 0        # accepted from clients
    resets: int = 0             # connections reset by reset_p
    upstream_refused: int = 0   # upstream did not accept (node down): client connection reset
    held: int = 0               # connections accepted while blackholed
    bytes_up: int = 0           # delivered client -> upstream
    bytes_down: int = 0         # delivered upstream -> client

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class LinkProxy:
    """One listening port forwarding to ``upstream``; create it with ``ProxyHub.add``."""

    def __init__(self, hub: ProxyHub, name: str, upstream: tuple[str, int], seed: int) -> None:
        self.hub, self.name, self.upstream = hub, name, upstream
        self.upstream_netns = ""  # a network namespace's name: upstream is dialled inside it
        self.latency_s = 0.0
        self.reset_p = 0.0
        self.counters = ProxyCounters()
        self.listen: tuple[str, int] = ("", 0)
        self._rng = random.Random(seed)
        self._open = asyncio.Event()  # set = forwarding; cleared = blackholed
        self._open.set()
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.listen[0]}:{self.listen[1]}"

    @property
    def blackholed(self) -> bool:
        return not self._open.is_set()

    async def _start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._accept, host, port, backlog=128)
        self.listen = self._server.sockets[0].getsockname()[:2]

    # ---- knobs (any thread) ------------------------------------------------------------------
    def set_link(self, latency_s: float = 0.0, reset_p: float = 0.0) -> None:
        if latency_s < 0 or not 0 <= reset_p <= 1:
            raise ValueError(f"bad link settings: latency_s={latency_s}, reset_p={reset_p}")
        self.latency_s, self.reset_p = latency_s, reset_p

    def set_blackhole(self, on: bool) -> None:
        self.hub.run(self._set_open(not on))

    async def _set_open(self, is_open: bool) -> None:
        if is_open:
            self._open.set()
        else:
            self._open.clear()

    def reset_all(self) -> int:
        """Reset every open connection (RST); returns how many."""
        return self.hub.run(self._reset_all())

    async def _reset_all(self) -> int:
        conns = list(self._conns)
        for c in conns:
            c.abort()
        return len(conns)

    # ---- forwarding --------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counters.connections += 1
        if self.blackholed:
            self.counters.held += 1
        client = _Conn(writer)
        self._conns.add(client)
        up: _Conn | None = None
        try:
            await self._open.wait()
            try:
                ureader, uwriter = await asyncio.wait_for(self._connect_upstream(),
                                                          _CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError, NetnsError):
                self.counters.upstream_refused += 1
                client.abort()
                return
            up = _Conn(uwriter)
            self._conns.add(up)
            pair = (client, up)
            await asyncio.gather(self._pump(reader, up, pair, "bytes_up"),
                                 self._pump(ureader, client, pair, "bytes_down"))
        finally:
            for c in (client, up):
                if c is not None:
                    c.close()
                    self._conns.discard(c)

    async def _connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if not self.upstream_netns:
            return await asyncio.open_connection(*self.upstream)
        sock = socket_in(self.upstream_netns)  # the upstream lives in a network namespace
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, self.upstream)
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    async def _pump(self, reader: asyncio.StreamReader, dst: _Conn, pair: tuple[_Conn, _Conn],
                    counter: str) -> None:
        """Forward one direction; a delivery task keeps order while segments wait out latency."""
        # Unbounded: what it holds is at most throughput x latency (small in tests), and a
        # bounded queue could block the reset path behind a delivery stuck on a dead socket.
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        deliver = asyncio.get_running_loop().create_task(self._deliver(queue, dst, counter))
        try:
            while True:
                await self._open.wait()
                try:
                    data = await reader.read(_READ_BYTES)
                except OSError:
                    data = b""
                if not data:
                    break
                if self.reset_p and self._rng.random() < self.reset_p:
                    self.counters.resets += 1
                    for c in pair:
                        c.abort()
                    break
                due = asyncio.get_running_loop().time() + self.latency_s
                queue.put_nowait((due, data))
            queue.put_nowait(None)
            if not dst.dead:
                await deliver
        finally:
            deliver.cancel()
            dst.half_close()

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes] | None], dst: _Conn,
                       counter: str) -> None:
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            due, data = item
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            await self._open.wait()
            # counted when handed to the socket, with no await since the check above: a segment
            # read just before a cut waits for the heal and is counted then
            if not dst.send(data):
                return
            setattr(self.counters, counter, getattr(self.counters, counter) + len(data))
            if not await dst.drain():
                return

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._open.set()
        await self._reset_all()


class _Conn:
    """One side of a proxied connection."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.dead = False

    def send(self, data: bytes) -> bool:
        if self.dead:
            return False
        try:
            self.writer.write(data)
            return True
        except (OSError, RuntimeError):
            self.dead = True
            return False

    async def drain(self) -> bool:
        try:
            await self.writer.drain()
            return True
        except (OSError, RuntimeError):
            self.dead = True
            return False

    def half_close(self) -> None:
        if not self.dead and self.writer.can_write_eof():
            try:
                self.writer.write_eof()
            except (OSError, RuntimeError):
                self.dead = True

    def abort(self) -> None:
        """RST: SO_LINGER 0, then close without flushing."""
        if self.dead:
            return
        self.dead = True
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.writer.transport.abort()

    def close(self) -> None:
        self.dead = True
        self.writer.transport.close()


class ProxyHub:
    """The event loop thread all proxies run on; ``with ProxyHub() as hub: hub.add(...)``."""

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed
        self.proxies: list[LinkProxy] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="kvstore-chaos-proxy")
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def add(self, name: str, upstream: tuple[str, int], host: str = "127.0.0.1",
            port: int = 0) -> LinkProxy:
        """A proxy listening on ``host:port`` (0: a free port) and forwarding to ``upstream``."""
        async def make() -> LinkProxy:  # asyncio.Event binds to the loop it is used on
            p = LinkProxy(self, name, upstream, self._seed + len(self.proxies))
            await p._start(host, port)
            return p
        proxy = self.run(make())
        self.proxies.append(proxy)
        return proxy

    def close(self) -> None:
        if not self._loop.is_running():
            return
        for p in self.proxies:
            try:
                self.run(p._close())
            except (OSError, RuntimeError, TimeoutError) as exc:
                log.warning("closing proxy %s: %s", p.name, exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> ProxyHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
