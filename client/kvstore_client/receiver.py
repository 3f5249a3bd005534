"""Threaded receive of the bulk data plane: one blocking socket per connection, one thread each.

Why threads: one asyncio loop drives every connection of a client from one core, which capped a
worker near 3 GB/s however many connections it opened. A blocking ``recv_into`` releases the GIL
while the kernel copies, so N connections drained by N threads use N cores (plain sockets on the
H100 host: 2.9 GB/s on one connection, 20 GB/s on eight).

Per chunk (GET, kvstore/dataplane.py has the framing) the connection's thread:

* receives the payload in pieces of ``PIECE_BYTES`` straight into its destination, a CPU tensor
  (the caller's ``out=`` buffer or a fresh one), or, for a GPU destination, into the next slot of
  the connection's pinned staging ring, from which a non-blocking host-to-device copy on the
  connection's own CUDA stream moves it while the next slot is being received;
* updates the chunk's xxh3-64 with each piece as it lands (the GIL is released for pieces over
  64 KiB), so every byte that crossed the socket is checked, in parallel on every connection;
  a mismatch makes the chunk a miss (counted), never an error;
* hands the finished chunk to ``Sink.done`` at once, so a connection that dies later loses only
  the chunks still in flight (the caller retries or fails over those alone).

The ring (``RING_SLOTS`` x ``PIECE_BYTES``) belongs to the connection and lives as long as it:
no allocation per get. It is pinned only where CUDA is available (and a GPU destination asked
for it); a CPU-only process never allocates one.

TLS connections keep the asyncio path (kvstore_client/dataplane.py): decryption copies the bytes
through Python anyway.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import torch
import xxhash

from kvstore import dataplane as dp
from kvstore.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    SessionRequired,
    Unavailable,
    error_for_status,
)
from kvstore.v1 import kvstore_pb2 as pb

PIECE_BYTES = 4 << 20  # receive/hash/copy granularity: large enough to amortize the Python call
RING_SLOTS = 4         # staging slots per connection: receive one while up to 3 copy to the GPU


@dataclass
class Target:
    """Where one chunk's payload goes: ``host`` (flat uint8 CPU tensor) and/or ``gpu`` (flat
    uint8 CUDA tensor). Both: received into ``host``, then copied from it to ``gpu``."""

    host: torch.Tensor | None = None
    gpu: torch.Tensor | None = None
    ready: torch.cuda.Event | None = None  # set once the copies into ``gpu`` are queued


class Sink:
    """What a GET needs from its caller: ``target(index, meta)`` (where chunk ``index`` of the
    request goes) and ``done(index, meta, target, ok)`` (called as each chunk completes; ``ok``
    False = checksum mismatch). ``miss(index)`` for keys the node does not hold."""

    def target(self, index: int, meta: pb.ChunkMeta) -> Target:
        raise NotImplementedError

    def done(self, index: int, meta: pb.ChunkMeta, target: Target, ok: bool) -> None:
        raise NotImplementedError

    def miss(self, index: int) -> None:
        raise NotImplementedError


class StagingRing:
    """``RING_SLOTS`` reusable host buffers, each with the event of the copy that last read it."""

    def __init__(self, device: torch.device, slot_bytes: int = PIECE_BYTES,
                 slots: int = RING_SLOTS) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self._slots = [torch.empty(slot_bytes, dtype=torch.uint8, pin_memory=True)
                       for _ in range(slots)]
        self._views = [s.numpy().data for s in self._slots]
        self._events = [torch.cuda.Event() for _ in range(slots)]
        self._used = [False] * slots
        self._next = 0

    def next_slot(self) -> tuple[int, memoryview]:
        """A free slot (waits for the copy that last read it)."""
        i = self._next
        self._next = (i + 1) % len(self._slots)
        if self._used[i]:
            self._events[i].synchronize()
        return i, self._views[i]

    def copy_out(self, i: int, n: int, dst: torch.Tensor) -> None:
        with torch.cuda.stream(self.stream):
            dst.copy_(self._slots[i][:n], non_blocking=True)
            self._events[i].record(self.stream)
        self._used[i] = True

    def synchronize(self) -> None:
        self.stream.synchronize()


class BlockingConnection:
    """One data-plane connection used from one thread at a time (blocking socket I/O)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._ring: StagingRing | None = None
        self._copy_stream: torch.cuda.Stream | None = None
        self._end = float("inf")
        self.broken = False

    @classmethod
    def open(cls, host: str, port: int, session_id: str, timeout_s: float) -> BlockingConnection:
        try:
            sock = socket.create_connection((host, port), timeout=timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(f"data plane {host}:{port}: no connection within "
                                   f"{timeout_s:.3g} s") from None
        except OSError as exc:
            raise Unavailable(f"data plane {host}:{port} unreachable: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = cls(sock)
        conn._end = time.monotonic() + timeout_s
        sid = session_id.encode()
        try:
            conn._timeout()
            conn._send(dp.HELLO.pack(dp.MAGIC, dp.VERSION, len(sid)) + sid)
            conn._read_status()
        except FailedPrecondition as exc:  # the node forgot our session: re-handshake
            conn.close()
            raise SessionRequired(str(exc)) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        self.broken = True
        self.sock.close()

    def abort(self) -> None:
        """Unblock a thread inside recv/send on this connection (from another thread)."""
        self.broken = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ---- GET ---------------------------------------------------------------------------------
    def get(self, keys: Sequence[bytes], indices: Sequence[int], sink: Sink, verify: bool,
            timeout_s: float) -> None:
        """GET ``keys``; chunk j is request index ``indices[j]`` for the sink. Raises
        Unavailable / DeadlineExceeded (connection unusable) after the chunks done so far."""
        self._end = time.monotonic() + timeout_s
        try:
            self._timeout()
            self._get(keys, indices, sink, verify)
        except BaseException:
            self.broken = True
            raise
        finally:  # every chunk handed to the sink is in place once the call returns or raises
            if self._ring is not None:
                self._ring.synchronize()
            if self._copy_stream is not None:
                self._copy_stream.synchronize()

    def _get(self, keys: Sequence[bytes], indices: Sequence[int], sink: Sink,
             verify: bool) -> None:
        self._send(dp.OP.pack(dp.OP_GET) + dp.U32.pack(len(keys)) + b"".join(keys))
        for index in indices:
            if self._recv(1) == b"\x00":
                sink.miss(index)
                continue
            (m,) = dp.U32.unpack(self._recv(dp.U32.size))
            meta = pb.ChunkMeta.FromString(self._recv(m))
            target = sink.target(index, meta)
            ok = self._payload(meta, target, verify)
            sink.done(index, meta, target, ok)

    def _payload(self, meta: pb.ChunkMeta, t: Target, verify: bool) -> bool:
        n = meta.payload_bytes
        h = xxhash.xxh3_64() if verify else None
        if t.host is not None:
            view = t.host.numpy().data
            copy = t.gpu is not None
            if copy:
                stream = self._stream(t.gpu.device)  # type: ignore[union-attr]
            for off in range(0, n, PIECE_BYTES):
                piece = view[off:min(n, off + PIECE_BYTES)]
                self._recv_into(piece)
                if h is not None:
                    h.update(piece)
                if copy:  # pinned out= buffer: DMA this piece while the next one arrives
                    with torch.cuda.stream(stream):
                        t.gpu[off:off + len(piece)].copy_(  # type: ignore[index]
                            t.host[off:off + len(piece)], non_blocking=True)
            if copy:
                t.ready = torch.cuda.Event()
                t.ready.record(stream)
        else:
            assert t.gpu is not None
            ring = self._staging(t.gpu.device)
            for off in range(0, n, PIECE_BYTES):
                m = min(PIECE_BYTES, n - off)
                i, slot = ring.next_slot()
                piece = slot[:m]
                self._recv_into(piece)
                if h is not None:
                    h.update(piece)
                ring.copy_out(i, m, t.gpu[off:off + m])
            t.ready = torch.cuda.Event()
            t.ready.record(ring.stream)
        return h is None or h.intdigest() == meta.checksum

    def _staging(self, device: torch.device) -> StagingRing:
        if self._ring is None or self._ring.device != device:
            self._ring = StagingRing(device)
        return self._ring

    def _stream(self, device: torch.device) -> torch.cuda.Stream:
        if self._copy_stream is None or self._copy_stream.device != device:
            self._copy_stream = torch.cuda.Stream(device)
        return self._copy_stream

    # ---- socket I/O --------------------------------------------------------------------------
    # The deadline is enforced by the kernel (SO_RCVTIMEO/SO_SNDTIMEO, set once per call) on a
    # socket in plain blocking mode, plus a clock check per piece against a trickling peer.
    # Python's own socket timeouts would poll() before every recv: twice the system calls and
    # more GIL-held work per call, which cost a third of the throughput at 8 connections.
    def _timeout(self) -> None:
        left = self._end - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("data-plane call passed its deadline")
        if self.sock.gettimeout() is not None:
            self.sock.settimeout(None)
        sec = int(left)
        usec = max(int((left - sec) * 1e6), 0 if sec else 1)  # 0 s 0 us would mean "never"
        tv = struct.pack("ll", sec, usec)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)

    def _send(self, data: bytes) -> None:
        self._timeout()
        try:
            self.sock.sendall(data)
        except (TimeoutError, BlockingIOError):
            raise DeadlineExceeded("data-plane send passed its deadline") from None
        except OSError as exc:
            raise Unavailable(f"data plane connection lost while sending: {exc}") from exc

    def _recv_into(self, view: memoryview) -> None:
        got, n = 0, len(view)
        if time.monotonic() > self._end:  # a trickling peer
            raise DeadlineExceeded("data-plane receive passed its deadline")
        try:
            while got < n:
                r = self.sock.recv_into(view[got:], n - got)
                if r == 0:
                    raise Unavailable(f"data plane closed after {got} of {n} bytes")
                got += r
        except (TimeoutError, BlockingIOError):
            raise DeadlineExceeded("data-plane receive passed its deadline") from None
        except OSError as exc:
            raise Unavailable(f"data plane connection lost while receiving: {exc}") from exc

    def _recv(self, n: int) -> bytes:
        buf = bytearray(n)
        self._recv_into(memoryview(buf))
        return bytes(buf)

    def _read_status(self) -> str:
        code, n = dp.STATUS.unpack(self._recv(dp.STATUS.size))
        msg = self._recv(n).decode() if n else ""
        if code != 0:
            status = next((s for s in grpc.StatusCode if s.value[0] == code),
                          grpc.StatusCode.UNKNOWN)
            raise error_for_status(status, msg)
        return msg


class BlockingPool:
    """Idle blocking connections to one node; each call runs on a thread of its own."""

    def __init__(self, host: str, port: int, session: Callable[[], str], size: int) -> None:
        self.host, self.port, self._session, self.size = host, port, session, size
        self._idle: list[BlockingConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def acquire(self, timeout_s: float) -> BlockingConnection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return BlockingConnection.open(self.host, self.port, self._session(), timeout_s)

    def release(self, conn: BlockingConnection) -> None:
        with self._lock:
            if not conn.broken and not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()


class ThreadedGets:
    """GETs on a ``BlockingPool``, each connection's share on an executor thread of its own."""

    def __init__(self, pool: BlockingPool) -> None:
        self.pool = pool
        self._executor = ThreadPoolExecutor(max_workers=pool.size,
                                            thread_name_prefix="kvstore-recv")

    async def run(self, keys: Sequence[bytes], indices: Sequence[int], sink: Sink, verify: bool,
                  timeout_s: float) -> None:
        """One GET of ``keys`` on one pooled connection, on its thread. Cancelling this aborts
        the connection and waits for the thread to let go of the sink's buffers."""
        held: list[BlockingConnection] = []

        def work() -> None:
            started = time.monotonic()
            conn = self.pool.acquire(timeout_s)
            held.append(conn)
            try:
                conn.get(keys, indices, sink, verify, timeout_s - (time.monotonic() - started))
            finally:
                self.pool.release(conn)

        fut = asyncio.get_running_loop().run_in_executor(self._executor, work)
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            for c in held:
                c.abort()
            await asyncio.wait([fut])  # no thread writes into the caller's buffers after this
            raise

    def close(self) -> None:
        self.pool.close()
        self._executor.shutdown(wait=False)
