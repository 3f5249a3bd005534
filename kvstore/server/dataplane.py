"""The node side of the bulk data plane: a thread per connection, blocking socket I/O.

Threads rather than asyncio because each connection mostly sits in recv_into/sendmsg, which
release the GIL, and a blocking loop has no per-recv event-loop overhead. Payloads go from the
page pool to the socket and from the socket into reserved pages (recv_into), never through an
intermediate buffer. A GET hit leaves in one ``sendmsg`` of its header and every page view
(zero-copy gather; ``sendall`` per view over TLS, whose sockets have no sendmsg), so the hot loop
does no Python work per page.

``send_budget_bytes_per_s`` (0 = unlimited) caps what the node sends per second, all sessions
together, shared equally among the sessions sending at the time (SendBudget): one worker pulling
a long prefix cannot starve the others.
"""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
import threading
import time

import grpc

from kvstore import dataplane as dp
from kvstore.errors import InvalidArgument, KVStoreError
from kvstore.server.core import StoreCore
from kvstore.server.sessions import Session
from kvstore.tiers.manager import Lease
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.wire import info_from_pb, info_to_pb

log = logging.getLogger(__name__)
TLS_HANDSHAKE_TIMEOUT_S = 10.0
# Open connections at once, all clients together; one more is answered RESOURCE_EXHAUSTED and
# closed. Each connection is a thread (8 MiB of stack address space, ~100 KiB resident) that may
# hold a reserved chunk, so without a cap a flood of connections grows the node without bound.
# Clients keep a small pool per node, so this serves a few hundred workers.
MAX_CONNECTIONS = 1024


IOV_BATCH = 512  # iovecs per sendmsg (Linux IOV_MAX is 1024)


class ConnectionClosed(Exception):
    pass


def sendmsg_all(sock: socket.socket, buffers: list[bytes | memoryview]) -> None:
    """Send every buffer, in order, with as few sendmsg calls as the kernel allows."""
    bufs = [memoryview(b).cast("B") if not isinstance(b, bytes) else memoryview(b)
            for b in buffers]
    i = 0
    while i < len(bufs):
        sent = sock.sendmsg(bufs[i:i + IOV_BATCH])
        while sent and i < len(bufs):
            n = len(bufs[i])
            if sent >= n:
                sent -= n
                i += 1
            else:
                bufs[i] = bufs[i][sent:]
                sent = 0
        while i < len(bufs) and not len(bufs[i]):
            i += 1


def sendall_each(sock: socket.socket, buffers: list[bytes | memoryview]) -> None:
    for b in buffers:
        sock.sendall(b)


class SendBudget:
    """Paces sends to ``bytes_per_s`` in total, split equally among the sessions that sent
    within the last ``window_s`` (each session's bytes are spaced on its own clock at
    bytes_per_s / active sessions). Thread-safe; ``take`` sleeps the calling connection."""

    def __init__(self, bytes_per_s: int, window_s: float = 0.2, burst_s: float = 0.005,
                 clock=time.monotonic, sleep=time.sleep) -> None:  # noqa: ANN001
        if bytes_per_s <= 0:
            raise ValueError(f"send budget must be > 0 bytes/s, got {bytes_per_s}")
        self.bytes_per_s, self.window_s, self.burst_s = bytes_per_s, window_s, burst_s
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}   # session -> when its next byte may leave
        self._seen: dict[str, float] = {}   # session -> last time it sent

    def take(self, session: str, nbytes: int) -> float:
        """Account ``nbytes`` for ``session``; returns the seconds slept."""
        with self._lock:
            now = self._clock()
            self._seen[session] = now
            for s, t in list(self._seen.items()):
                if now - t > self.window_s:
                    del self._seen[s]
                    self._next.pop(s, None)
            rate = self.bytes_per_s / len(self._seen)
            start = max(self._next.get(session, now), now - self.burst_s)
            self._next[session] = start + nbytes / rate
            wait = start - now
        if wait > 0:
            self._sleep(wait)
            return wait
        return 0.0


def recv_exact_into(sock: socket.socket, view: memoryview) -> None:
    got, n = 0, len(view)
    while got < n:
        r = sock.recv_into(view[got:], n - got)
        if r == 0:
            raise ConnectionClosed(f"peer closed after {got} of {n} bytes")
        got += r


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    recv_exact_into(sock, memoryview(buf))
    return bytes(buf)


class DataPlaneServer:
    def __init__(self, core: StoreCore, host: str, port: int,
                 ssl_context: ssl.SSLContext | None = None,
                 send_budget_bytes_per_s: int = 0) -> None:
        self.core = core
        self.budget = SendBudget(send_budget_bytes_per_s) if send_budget_bytes_per_s else None
        self._ssl = ssl_context  # TLS (kvstore/server/tls.py): the same certs as gRPC
        self._listener = socket.create_server((host, port), backlog=128, reuse_port=False)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._lease_ids = itertools.count(1)  # GET_SHM lease ids (next() is thread-safe)
        self._thread = threading.Thread(target=self._accept_loop, name="kvstore-dataplane",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            for c in list(self._conns):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                full = len(self._conns) >= MAX_CONNECTIONS
                if not full:
                    self._conns.add(conn)
            if full:
                _refuse(conn, f"node has {MAX_CONNECTIONS} data-plane connections open; retry")
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name="kvstore-dataplane-conn").start()

    def _serve(self, conn: socket.socket) -> None:
        leases: dict[int, Lease] = {}  # GET_SHM leases this connection holds, by id
        try:
            if self._ssl is not None:
                conn = self._tls(conn)
            session = self._hello(conn)
            if session is None:
                return
            while True:
                try:
                    (op,) = dp.OP.unpack(recv_exact(conn, dp.OP.size))
                except ConnectionClosed:
                    return
                if op == dp.OP_GET:
                    self._get(conn, session)
                elif op == dp.OP_PUT:
                    self._put(conn, session)
                elif op == dp.OP_GET_SHM and self.core.shm is not None:
                    self._get_shm(conn, session, leases)
                elif op == dp.OP_RELEASE:
                    self._release(conn, leases)
                else:
                    conn.sendall(dp.pack_status(grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                                f"unknown data-plane op {op}"))
                    return
        except (ConnectionClosed, ConnectionError, OSError) as exc:
            log.debug("data-plane connection ended: %s", exc)
        finally:
            _release_all(leases)  # a client that died never pins memory forever
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _tls(self, raw: socket.socket) -> socket.socket:
        """TLS handshake on this connection's thread (a slow client never blocks accept); a
        failed one (plaintext client, unknown CA, no client cert under mTLS) raises SSLError,
        an OSError, and the connection is closed."""
        raw.settimeout(TLS_HANDSHAKE_TIMEOUT_S)
        conn = self._ssl.wrap_socket(raw, server_side=True) if self._ssl else raw
        conn.settimeout(None)
        with self._lock:  # stop() shuts down what is in the set: the TLS socket from now on
            self._conns.discard(raw)
            self._conns.add(conn)
        return conn

    def _hello(self, conn: socket.socket) -> Session | None:
        magic, version, n = dp.HELLO.unpack(recv_exact(conn, dp.HELLO.size))
        if magic != dp.MAGIC or version != dp.VERSION:
            conn.sendall(dp.pack_status(grpc.StatusCode.FAILED_PRECONDITION.value[0],
                                        f"not a kvstore data-plane v{dp.VERSION} client"))
            return None
        try:
            # errors="replace": a garbled id is an unknown session, not a dead connection thread
            session = self.core.sessions.get(recv_exact(conn, n).decode(errors="replace"))
        except KVStoreError as exc:
            conn.sendall(dp.pack_status(exc.code.value[0], str(exc)))
            return None
        conn.sendall(dp.pack_status(0))
        return session

    def _get(self, conn: socket.socket, session: Session) -> None:
        (n,) = dp.U32.unpack(recv_exact(conn, dp.U32.size))
        if n > dp.MAX_KEYS:
            raise ConnectionClosed(f"GET of {n} keys exceeds {dp.MAX_KEYS}")
        keys = recv_exact(conn, 16 * n)
        send = sendall_each if isinstance(conn, ssl.SSLSocket) else sendmsg_all
        misses = bytearray()  # runs of misses go out with the next hit (or at the end)
        for i in range(n):
            lease = self.core.get(session, keys[16 * i:16 * i + 16])
            if lease is None:
                misses += b"\x00"
                continue
            with lease:
                meta = info_to_pb(lease.info).SerializeToString()
                if self.budget is not None:
                    self.budget.take(session.session_id, lease.info.payload_bytes)
                send(conn, [bytes(misses) + b"\x01" + dp.U32.pack(len(meta)) + meta,
                            *lease.views])
                misses.clear()
        if misses:
            conn.sendall(misses)

    def _get_shm(self, conn: socket.socket, session: Session, leases: dict[int, Lease]) -> None:
        """Per key: meta, a lease id and the payload's spans in the shared-memory file."""
        (n,) = dp.U32.unpack(recv_exact(conn, dp.U32.size))
        if n > dp.MAX_KEYS:
            raise ConnectionClosed(f"GET_SHM of {n} keys exceeds {dp.MAX_KEYS}")
        keys = recv_exact(conn, 16 * n)
        out = bytearray()
        for i in range(n):
            key = keys[16 * i:16 * i + 16]
            lease = self.core.get(session, key)
            if lease is None:
                out += b"\x00"
                continue
            spans = self._shm_spans(lease)
            if spans is None and lease.tier == "disk":
                # the get promoted it from disk (unless the top tier was all pinned): lease the
                # copy in memory instead of the disk read
                retry = self.core.manager.get(key, session.namespace_id)
                if retry is not None:
                    lease.release()
                    lease, spans = retry, self._shm_spans(retry)
            meta = info_to_pb(lease.info).SerializeToString()
            out += b"\x01" + dp.U32.pack(len(meta)) + meta
            if spans is None:  # served by another tier: the client falls back to GET
                lease.release()
                out += dp.SPAN_HEAD.pack(0, 0)
                continue
            if len(leases) >= dp.MAX_LEASES:
                lease.release()
                raise ConnectionClosed(f"client holds {len(leases)} unreleased leases")
            lease_id = next(self._lease_ids)
            leases[lease_id] = lease
            out += dp.SPAN_HEAD.pack(lease_id, len(spans))
            out += b"".join(dp.SPAN.pack(o, ln) for o, ln in spans)
        conn.sendall(out)

    def _shm_spans(self, lease: Lease) -> list[tuple[int, int]] | None:
        assert self.core.shm is not None
        return self.core.shm.spans_of(lease.views) if lease.tier == "cpu" else None

    def _release(self, conn: socket.socket, leases: dict[int, Lease]) -> None:
        (n,) = dp.U32.unpack(recv_exact(conn, dp.U32.size))
        if n > dp.MAX_LEASES:
            raise ConnectionClosed(f"RELEASE of {n} leases exceeds {dp.MAX_LEASES}")
        raw = recv_exact(conn, dp.U64.size * n)
        for (lease_id,) in dp.U64.iter_unpack(raw):
            lease = leases.pop(lease_id, None)
            if lease is not None:  # unknown ids (released twice) are ignored
                lease.release()
        conn.sendall(dp.pack_status(0))

    def _put(self, conn: socket.socket, session: Session) -> None:
        (m,) = dp.U32.unpack(recv_exact(conn, dp.U32.size))
        if m > dp.MAX_META_BYTES:
            raise ConnectionClosed(f"chunk meta of {m} bytes exceeds {dp.MAX_META_BYTES}")
        started = time.perf_counter()
        # read before the try: a peer gone mid-meta ends the connection (regression: it was
        # answered "not a valid ChunkMeta", and a reset socket kept being read)
        raw = recv_exact(conn, m)
        try:
            try:
                meta = pb.ChunkMeta.FromString(raw)
            except Exception as exc:  # protobuf's DecodeError has no stable import path
                raise InvalidArgument(f"chunk meta is not a valid ChunkMeta: {exc}") from exc
            res = self.core.begin_put(session, info_from_pb(meta))
        except KVStoreError as exc:
            conn.sendall(dp.pack_status(exc.code.value[0], str(exc)))
            return
        try:
            conn.sendall(dp.pack_status(0))
            for view in res.views:
                recv_exact_into(conn, view)
            tier = self.core.finish_put(session, res, started)
        except KVStoreError as exc:
            conn.sendall(dp.pack_status(exc.code.value[0], str(exc)))
            return
        except BaseException:
            res.abort()
            raise
        conn.sendall(dp.pack_status(0, tier))


def _refuse(conn: socket.socket, why: str) -> None:
    """RESOURCE_EXHAUSTED in place of the HELLO status, then close (a fresh socket's send
    buffer takes the few bytes without blocking the accept loop)."""
    try:
        conn.sendall(dp.pack_status(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], why))
    except OSError:
        pass  # the client is gone already
    finally:
        conn.close()


def _release_all(leases: dict[int, Lease]) -> None:
    for lease in leases.values():
        lease.release()
    leases.clear()
