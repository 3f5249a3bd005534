"""Client side of the bulk data plane (kvstore/dataplane.py has the framing), on asyncio sockets.

GETs over plain TCP use the threaded receiver instead (receiver.py: a blocking socket and a
thread per connection, which scales with cores); this module serves puts, GET_SHM/RELEASE and
every op over TLS. Payloads are received with ``loop.sock_recv_into`` straight into the
destination tensor's storage and sent with ``loop.sock_sendall`` from the source tensor's memory.

With TLS (ClientSecurity.tls_ca, a node with tls_cert) a connection is an asyncio TLS stream
instead (``TLSDataConnection``): asyncio's sock_* calls refuse SSL sockets, and decryption copies
the bytes anyway, so payloads then pass through the stream's buffer (one copy more).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Sequence

import grpc

from kvstore import dataplane as dp
from kvstore.errors import FailedPrecondition, SessionRequired, Unavailable, error_for_status
from kvstore.v1 import kvstore_pb2 as pb
from kvstore_client.receiver import BlockingPool, ThreadedGets


class DataConnection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def open(cls, host: str, port: int, session_id: str,
                   ssl_context: ssl.SSLContext | None = None,
                   server_hostname: str = "") -> DataConnection:
        conn: DataConnection
        if ssl_context is not None:
            conn = await TLSDataConnection.connect(host, port, ssl_context,
                                                   server_hostname or host)
        else:
            conn = cls(await _plain_socket(host, port))
        sid = session_id.encode()
        try:
            await conn.send(dp.HELLO.pack(dp.MAGIC, dp.VERSION, len(sid)) + sid)
            await conn.read_status()
        except FailedPrecondition as exc:
            # STATUS frames carry only the code; a refused HELLO means the node does not know
            # our session (it restarted), which the caller answers with a new Handshake.
            conn.close()
            raise SessionRequired(str(exc)) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        self.sock.close()

    async def send(self, data: bytes | memoryview) -> None:
        try:
            await self.loop.sock_sendall(self.sock, data)
        except OSError as exc:
            raise Unavailable(f"data plane connection lost while sending: {exc}") from exc

    async def recv_into(self, view: memoryview) -> None:
        got, n = 0, len(view)
        try:
            while got < n:
                r = await self.loop.sock_recv_into(self.sock, view[got:])
                if r == 0:
                    raise Unavailable(f"data plane closed after {got} of {n} bytes")
                got += r
        except OSError as exc:
            raise Unavailable(f"data plane connection lost while receiving: {exc}") from exc

    async def recv(self, n: int) -> bytes:
        buf = bytearray(n)
        await self.recv_into(memoryview(buf))
        return bytes(buf)

    async def read_status(self) -> str:
        code, n = dp.STATUS.unpack(await self.recv(dp.STATUS.size))
        msg = (await self.recv(n)).decode() if n else ""
        if code != 0:
            status = next((s for s in grpc.StatusCode if s.value[0] == code),
                          grpc.StatusCode.UNKNOWN)
            raise error_for_status(status, msg)
        return msg

    async def get(self, keys: Sequence[bytes],
                  alloc: Callable[[pb.ChunkMeta], memoryview]) -> list[pb.ChunkMeta | None]:
        """Fetch ``keys``; for each hit, ``alloc(meta)`` gives the view to receive the payload."""
        await self.send(dp.OP.pack(dp.OP_GET) + dp.U32.pack(len(keys)) + b"".join(keys))
        metas: list[pb.ChunkMeta | None] = []
        for _ in keys:
            if (await self.recv(1)) == b"\x00":
                metas.append(None)
                continue
            (m,) = dp.U32.unpack(await self.recv(dp.U32.size))
            meta = pb.ChunkMeta.FromString(await self.recv(m))
            await self.recv_into(alloc(meta))
            metas.append(meta)
        return metas

    async def get_shm(self, keys: Sequence[bytes]
                      ) -> list[tuple[pb.ChunkMeta, int, list[tuple[int, int]]] | None]:
        """GET_SHM: per key None (miss) or (meta, lease id, spans in the node's shm file);
        empty spans = not in shared memory (no lease held: fetch it with get())."""
        await self.send(dp.OP.pack(dp.OP_GET_SHM) + dp.U32.pack(len(keys)) + b"".join(keys))
        out: list[tuple[pb.ChunkMeta, int, list[tuple[int, int]]] | None] = []
        for _ in keys:
            if (await self.recv(1)) == b"\x00":
                out.append(None)
                continue
            (m,) = dp.U32.unpack(await self.recv(dp.U32.size))
            meta = pb.ChunkMeta.FromString(await self.recv(m))
            lease_id, k = dp.SPAN_HEAD.unpack(await self.recv(dp.SPAN_HEAD.size))
            raw = await self.recv(dp.SPAN.size * k) if k else b""
            out.append((meta, lease_id, list(dp.SPAN.iter_unpack(raw))))
        return out

    async def release(self, lease_ids: Sequence[int]) -> None:
        """RELEASE: the node may evict or reuse those chunks' pages again."""
        await self.send(dp.OP.pack(dp.OP_RELEASE) + dp.U32.pack(len(lease_ids))
                        + b"".join(dp.U64.pack(i) for i in lease_ids))
        await self.read_status()

    async def put(self, meta: pb.ChunkMeta, payload: memoryview) -> str:
        raw = meta.SerializeToString()
        await self.send(dp.OP.pack(dp.OP_PUT) + dp.U32.pack(len(raw)) + raw)
        await self.read_status()  # room reserved (or the node's reason why not)
        await self.send(payload)
        return await self.read_status()


async def _plain_socket(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, (host, port))
    except OSError as exc:
        sock.close()
        raise Unavailable(f"data plane {host}:{port} unreachable: {exc}") from exc
    return sock


class TLSDataConnection(DataConnection):
    """The same protocol over an asyncio TLS stream (certificate and host name verified)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(writer.get_extra_info("socket"))
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, host: str, port: int, ctx: ssl.SSLContext,
                      server_hostname: str) -> TLSDataConnection:
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=server_hostname, limit=1 << 20,
                ssl_handshake_timeout=10.0)
        except ssl.SSLError as exc:  # an OSError too: catch it first for the clearer message
            raise Unavailable(f"data plane {host}:{port}: TLS handshake failed: {exc}") from exc
        except OSError as exc:
            raise Unavailable(f"data plane {host}:{port} unreachable: {exc}") from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.close()

    async def send(self, data: bytes | memoryview) -> None:
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (OSError, ConnectionError) as exc:
            raise Unavailable(f"data plane (TLS) connection lost while sending: {exc}") from exc

    async def recv_into(self, view: memoryview) -> None:
        got, n = 0, len(view)
        try:
            while got < n:
                data = await self.reader.read(min(n - got, 1 << 20))
                if not data:
                    raise Unavailable(f"data plane (TLS) closed after {got} of {n} bytes")
                view[got:got + len(data)] = data
                got += len(data)
        except (OSError, ConnectionError) as exc:
            raise Unavailable(f"data plane (TLS) connection lost while receiving: {exc}") \
                from exc


class ConnectionPool:
    """Idle data-plane connections to one node, at most ``size`` open at once."""

    def __init__(self, host: str, port: int, session: Callable[[], str], size: int,
                 ssl_context: ssl.SSLContext | None = None, server_hostname: str = "") -> None:
        self.host, self.port, self._session = host, port, session
        self._ssl, self._server_hostname = ssl_context, server_hostname
        self._idle: list[DataConnection] = []
        self._slots = asyncio.Semaphore(size)
        # GETs over plain TCP run on blocking sockets, one thread per connection (receiver.py);
        # TLS stays on the asyncio streams below.
        self.threaded: ThreadedGets | None = (
            ThreadedGets(BlockingPool(host, port, session, size)) if ssl_context is None else None)

    async def acquire(self) -> DataConnection:
        await self._slots.acquire()
        if self._idle:
            return self._idle.pop()
        try:
            return await DataConnection.open(self.host, self.port, self._session(), self._ssl,
                                             self._server_hostname)
        except BaseException:
            self._slots.release()
            raise

    def release(self, conn: DataConnection, healthy: bool) -> None:
        if healthy:
            self._idle.append(conn)
        else:
            conn.close()
        self._slots.release()

    def close(self) -> None:
        for c in self._idle:
            c.close()
        self._idle.clear()
        if self.threaded is not None:
            self.threaded.close()
