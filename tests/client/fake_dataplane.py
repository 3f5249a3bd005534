"""A scripted data-plane server for the receive tests: real sockets, faults on demand.

It speaks HELLO and GET (kvstore/dataplane.py) over chunks it holds in memory, and can send its
replies in tiny pieces (partial frames), close a connection after a number of reply bytes (a
node dying mid-chunk), or flip a byte of a payload in transit (its checksum then fails). It logs
the keys of every GET it answers, so tests can check what a client asked again.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

from kvstore import dataplane as dp
from kvstore.chunk import checksum
from kvstore.v1 import kvstore_pb2 as pb


class FakeDataPlane:
    def __init__(self, piece_bytes: int = 0, piece_delay_s: float = 0.0) -> None:
        self.chunks: dict[bytes, tuple[bytes, bytes]] = {}  # key -> (meta, payload)
        self.piece_bytes, self.piece_delay_s = piece_bytes, piece_delay_s
        self.die_after: list[int] = []   # per new connection (popped): close after N reply bytes
        self.corrupt: set[bytes] = set()  # keys whose payload is damaged in transit
        self.requests: list[list[bytes]] = []
        self.open_now = 0
        self.max_open = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def add(self, key: bytes, payload: bytes, dtype: str = "uint8",
            shape: tuple[int, ...] | None = None) -> None:
        meta = pb.ChunkMeta(key=key, dtype=dtype, shape=shape or (len(payload),),
                            payload_bytes=len(payload), checksum=checksum([payload]))
        self.chunks[key] = (meta.SerializeToString(), payload)

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                budget = self.die_after.pop(0) if self.die_after else -1
            threading.Thread(target=self._serve, args=(conn, budget), daemon=True).start()

    def _serve(self, conn: socket.socket, budget: int) -> None:
        with self._lock:
            self.open_now += 1
            self.max_open = max(self.max_open, self.open_now)
        try:
            head = _recv(conn, dp.HELLO.size)
            _recv(conn, dp.HELLO.unpack(head)[2])
            conn.sendall(dp.pack_status(0))
            while True:
                op = conn.recv(1)
                if not op:
                    return
                (n,) = dp.U32.unpack(_recv(conn, 4))
                raw = _recv(conn, 16 * n)
                keys = [raw[16 * i:16 * i + 16] for i in range(n)]
                with self._lock:
                    self.requests.append(keys)
                reply = bytearray()
                for k in keys:
                    if k not in self.chunks:
                        reply += b"\x00"
                        continue
                    meta, payload = self.chunks[k]
                    if k in self.corrupt:
                        payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
                    reply += b"\x01" + struct.pack("<I", len(meta)) + meta + payload
                if budget >= 0:
                    self._send(conn, bytes(reply[:budget]))
                    return  # the "node" dies mid-reply
                self._send(conn, bytes(reply))
        except OSError:
            return
        finally:
            with self._lock:
                self.open_now -= 1
            conn.close()

    def _send(self, conn: socket.socket, data: bytes) -> None:
        if not self.piece_bytes:
            conn.sendall(data)
            return
        for off in range(0, len(data), self.piece_bytes):
            conn.sendall(data[off:off + self.piece_bytes])
            if self.piece_delay_s:
                time.sleep(self.piece_delay_s)


def _recv(conn: socket.socket, n: int) -> bytes:
    data = conn.recv(n, socket.MSG_WAITALL)
    if len(data) < n:
        raise OSError("peer closed")
    return data


class CuttingProxy:
    """A TCP proxy in front of a real node's data port that closes its first connection after
    ``cut_after`` bytes towards the client and then stops listening (the node "died")."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self.target_port, self.cut_after = target_port, cut_after
        self.forwarded = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept_one, daemon=True).start()

    def _accept_one(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        self._listener.close()  # later connections are refused
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        threading.Thread(target=self._pump_up, args=(client, upstream), daemon=True).start()
        try:
            while self.forwarded < self.cut_after:
                data = upstream.recv(min(65536, self.cut_after - self.forwarded))
                if not data:
                    break
                client.sendall(data)
                self.forwarded += len(data)
        finally:  # shutdown first: a thread blocked in recv keeps a merely closed socket open
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    @staticmethod
    def _pump_up(client: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                upstream.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._listener.close()
