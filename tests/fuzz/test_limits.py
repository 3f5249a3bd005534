"""Floods and huge declarations: more concurrent RPCs or data-plane connections than the node
allows get RESOURCE_EXHAUSTED while the ones in flight finish normally, and a put that declares
a huge payload is refused at its meta, before the client has sent a payload byte.

The limits are module constants (kvstore/server/node.py MAX_CONCURRENT_RPCS, kvstore/server/
dataplane.py MAX_CONNECTIONS); the node here runs with small values so a handful of streams
reaches them.
"""

from __future__ import annotations

import socket
import threading
import time

import grpc
import pytest

from kvstore import dataplane as dp
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

from . import oracle
from . import strategies as fs
from .harness import MAX_CHUNK, PAGE, NodeProcess, read_status, recv_exact

RPC_LIMIT = 8
CONN_LIMIT = 4
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def small_node(tmp_path_factory):
    node = NodeProcess(tmp_path_factory.mktemp("limits-node"), limits={
        "kvstore.server.node.MAX_CONCURRENT_RPCS": RPC_LIMIT,
        "kvstore.server.dataplane.MAX_CONNECTIONS": CONN_LIMIT})
    yield node
    node.stop()


@pytest.fixture
def client(small_node):
    ch = grpc.insecure_channel(small_node.address)
    stub = pb_grpc.KVStoreStub(ch)
    sid = stub.Handshake(pb.HandshakeRequest(scheme=pb.KeyScheme(**oracle.SERVED)),
                         timeout=10).session_id
    yield stub, (("kvstore-session", sid),), sid
    ch.close()


class HeldPut:
    """A Put stream that sends its meta and then waits (like a slow or malicious client)."""

    def __init__(self, stub, md, key: bytes, data: bytes, declared: int | None = None) -> None:
        self.release = threading.Event()
        self.sent_data = False
        self.data = data
        meta = pb.ChunkMeta(key=key, payload_bytes=declared or len(data),
                            checksum=oracle.xxh(data))

        def requests():
            yield pb.PutRequest(meta=meta)
            if not self.release.wait(30):
                return
            self.sent_data = True
            yield pb.PutRequest(data=self.data)

        self.future = stub.Put.future(requests(), metadata=md, timeout=60)

    def finish(self):
        self.release.set()
        return self.future.result(30)


def _refused(call) -> grpc.RpcError | None:
    """The RESOURCE_EXHAUSTED error of a few tries of ``call``, or None if all were served."""
    for _ in range(3):
        try:
            call()
        except grpc.RpcError as exc:
            if exc.code() == EXHAUSTED:
                return exc
            raise
        time.sleep(0.02)
    return None


def test_rpc_flood_is_refused_with_resource_exhausted(client, small_node):
    """Regression (no limit on concurrent RPCs): every stream a client opened was accepted and
    kept its buffers, so a flood of open streams grew the node without bound."""
    stub, md, _ = client
    big_key, big = fs.key_for("limits-big"), fs.blob(1, MAX_CHUNK)
    stub.Put(iter([pb.PutRequest(meta=pb.ChunkMeta(key=big_key, payload_bytes=len(big),
                                                   checksum=oracle.xxh(big))),
                   pb.PutRequest(data=big)]), metadata=md, timeout=10)
    # Put streams that send their meta and then wait hold their slot until released. How
    # grpc.aio counts a stream against the limit depends on when it reaches the server (its
    # limiter decides for the next call as the previous one arrives), so open them one by one
    # until calls are refused, up to 4x the limit: a node without a limit never refuses.
    puts: list[HeldPut] = []
    exc = None
    while exc is None and len(puts) < 4 * RPC_LIMIT:
        puts.append(HeldPut(stub, md, fs.key_for(f"limits-{len(puts)}"),
                            fs.blob(len(puts), 1000)))
        if len(puts) >= RPC_LIMIT:
            exc = _refused(lambda: stub.Lookup(pb.LookupRequest(keys=[big_key]), metadata=md,
                                               timeout=10))
    assert exc is not None, f"the node never refused an RPC with {len(puts)} streams open"
    assert "limit" in exc.details().lower()
    for call in (lambda: stub.Stats(pb.StatsRequest(), timeout=10),
                 lambda: list(stub.Get(pb.GetRequest(keys=[big_key]), metadata=md, timeout=10))):
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == EXHAUSTED
    # the streams in flight are served to the end; the ones over the limit were refused
    stored = []
    for i, p in enumerate(puts):
        try:
            assert [r.stored for r in p.finish().results] == [True]
            stored.append(fs.key_for(f"limits-{i}"))
        except grpc.RpcError as refused_put:
            assert refused_put.code() == EXHAUSTED, refused_put
    assert len(stored) >= RPC_LIMIT - 1  # all but the calls over the limit
    got = b"".join(item.data for item in stub.Get(pb.GetRequest(keys=[big_key]), metadata=md,
                                                  timeout=10) if item.HasField("data"))
    assert got == big  # and the node serves again once they are done
    found = stub.Lookup(pb.LookupRequest(keys=stored), metadata=md, timeout=10)
    assert all(loc.found for loc in found.locations)
    stub.Delete(pb.DeleteRequest(keys=[big_key] + [loc.key for loc in found.locations]),
                metadata=md, timeout=10)


def _hello(port: int, sid: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw = sid.encode()
    s.sendall(dp.HELLO.pack(dp.MAGIC, dp.VERSION, len(raw)) + raw)
    return s


def test_data_plane_connection_flood_is_refused(client, small_node):
    """Regression (no limit on data-plane connections): each connection got a thread, however
    many a client opened."""
    stub, md, sid = client
    key, data = fs.key_for("limits-dp"), fs.blob(2, 3 * PAGE)
    stub.Put(iter([pb.PutRequest(meta=pb.ChunkMeta(key=key, payload_bytes=len(data),
                                                   checksum=oracle.xxh(data))),
                   pb.PutRequest(data=data)]), metadata=md, timeout=10)
    conns = [_hello(small_node.data_port, sid) for _ in range(CONN_LIMIT)]
    for c in conns:
        assert read_status(c) == (0, "")
    extra = _hello(small_node.data_port, sid)
    code, msg = read_status(extra)
    assert code == EXHAUSTED.value[0] and "connections" in msg
    try:
        assert extra.recv(1) == b""
    except ConnectionResetError:
        pass  # closed with our HELLO unread
    extra.close()
    for c in conns:  # the connections within the limit keep working
        c.sendall(dp.OP.pack(dp.OP_GET) + dp.U32.pack(1) + key)
        assert recv_exact(c, 1) == b"\x01"
        (m,) = dp.U32.unpack(recv_exact(c, 4))
        meta = pb.ChunkMeta.FromString(recv_exact(c, m))
        assert recv_exact(c, meta.payload_bytes) == data
    conns.pop().close()
    deadline = time.monotonic() + 10
    while True:  # the node notices the close on the connection's thread
        again = _hello(small_node.data_port, sid)
        code, _ = read_status(again)
        if code == 0:
            break
        again.close()
        assert time.monotonic() < deadline, "a freed connection slot was never reused"
        time.sleep(0.02)
    for c in [*conns, again]:
        c.close()
    stub.Delete(pb.DeleteRequest(keys=[key]), metadata=md, timeout=10)


@pytest.mark.parametrize("declared", [MAX_CHUNK + 1, 2**40, 2**64 - 1])
def test_huge_put_is_refused_at_the_meta_grpc(client, declared):
    """The refusal arrives while the client has sent only the meta: nothing is buffered."""
    stub, md, _ = client
    held = HeldPut(stub, md, fs.key_for(f"huge-{declared}"), b"x" * 100, declared=declared)
    exc = held.future.exception(timeout=20)
    assert not held.sent_data, "the node waited for payload before refusing the meta"
    held.release.set()
    assert exc is not None and exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_chunk_bytes" in exc.details()


@pytest.mark.parametrize("declared", [MAX_CHUNK + 1, 2**40, 2**64 - 1])
def test_huge_put_is_refused_at_the_meta_data_plane(client, small_node, declared):
    stub, md, sid = client
    s = _hello(small_node.data_port, sid)
    assert read_status(s) == (0, "")
    meta = pb.ChunkMeta(key=fs.key_for("huge-dp"), payload_bytes=declared,
                        checksum=0).SerializeToString()
    s.sendall(dp.OP.pack(dp.OP_PUT) + dp.U32.pack(len(meta)) + meta)
    code, msg = read_status(s)  # answered with no payload byte sent
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "max_chunk_bytes" in msg
    s.sendall(dp.OP.pack(dp.OP_RELEASE) + dp.U32.pack(0))  # the connection is still in sync
    assert read_status(s) == (0, "")
    s.close()
