"""Bad input over every entry point: the client library, a raw gRPC stub and a raw data-plane
socket. Each bad request must get the right status, store nothing, leak no pages, and leave the
node serving: every test calls ``healthy()`` after each bad request, which re-reads the chunks
stored before (byte-exact, over both planes), stores and reads a new chunk, and checks that
every used page belongs to a stored chunk.
"""

from __future__ import annotations

import itertools
import socket
import struct

import grpc
import pytest
import torch

from kvstore import dataplane as dp
from kvstore.chunk import checksum
from kvstore.errors import InvalidArgument, ResourceExhausted
from kvstore.keys import prefix_keys
from kvstore.v1 import kvstore_pb2 as pb

PAGE = 64 << 10
MAX_CHUNK = 1 << 20
PLANES = [pytest.param(True, id="dataplane"), pytest.param(False, id="grpc")]
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]


class RawDataPlane:
    """A blocking data-plane socket speaking kvstore/dataplane.py framing by hand."""

    def __init__(self, port: int, session_id: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if session_id is not None:
            sid = session_id.encode()
            self.sock.sendall(dp.HELLO.pack(dp.MAGIC, dp.VERSION, len(sid)) + sid)
            assert self.status() == (0, "")

    def recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            part = self.sock.recv(n - len(buf))
            if not part:
                raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
            buf += part
        return buf

    def status(self) -> tuple[int, str]:
        code, n = dp.STATUS.unpack(self.recv(dp.STATUS.size))
        return code, self.recv(n).decode()

    def put_meta(self, meta: pb.ChunkMeta | bytes) -> tuple[int, str]:
        raw = meta if isinstance(meta, bytes) else meta.SerializeToString()
        self.sock.sendall(dp.OP.pack(dp.OP_PUT) + dp.U32.pack(len(raw)) + raw)
        return self.status()

    def put(self, meta: pb.ChunkMeta, data: bytes) -> tuple[int, str]:
        code, msg = self.put_meta(meta)
        if code:
            return code, msg
        self.sock.sendall(data)
        return self.status()

    def get(self, key: bytes) -> bytes | None:
        self.sock.sendall(dp.OP.pack(dp.OP_GET) + dp.U32.pack(1) + key)
        if self.recv(1) == b"\x00":
            return None
        (m,) = dp.U32.unpack(self.recv(4))
        meta = pb.ChunkMeta.FromString(self.recv(m))
        return self.recv(meta.payload_bytes)

    def assert_closed(self) -> None:
        try:
            assert self.sock.recv(1) == b"", "the node should have closed the connection"
        except ConnectionResetError:
            pass  # closed with our unread bytes still queued: TCP resets instead of FIN

    def close(self) -> None:
        self.sock.close()


def meta_for(key: bytes, data: bytes, **kw) -> pb.ChunkMeta:
    fields = dict(key=key, dtype="uint8", shape=[len(data)], payload_bytes=len(data),
                  checksum=checksum([data]))
    fields.update(kw)
    return pb.ChunkMeta(**fields)


def put_stream(stub, md, *msgs: pb.PutRequest):
    return stub.Put(iter(msgs), metadata=md, timeout=10)


def rpc_code(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as exc:
        fn()
    return exc.value.code(), exc.value.details()


@pytest.fixture
def node(start_node):
    return start_node(page_bytes=PAGE, cpu_capacity_bytes=8 << 20, max_chunk_bytes=MAX_CHUNK)


@pytest.fixture
def env(node, connect, raw_stub, scheme, payload, wait_until):
    """Chunks stored before the bad requests, clients on both planes, and ``healthy()``."""

    class Env:
        pass

    e = Env()
    e.node = node
    e.dp_client = connect(node.address)
    e.grpc_client = connect(node.address, use_data_plane=False)
    e.stub, e.md = raw_stub(node.address)
    e.session_id = e.md[0][1]
    e.keys = prefix_keys(scheme, list(range(5 * 256)))
    e.tensors = [torch.randn(2, 2, 4, 16, 8).half(), torch.randn(64, 64).half()]
    e.blob = payload(PAGE - 3, "blob")
    e.dp_client.put_many(e.keys[:2], e.tensors)
    e.grpc_client.put(e.keys[2], e.blob)
    e.fresh = (prefix_keys(scheme, [7_000_000 + i] * 256)[0] for i in itertools.count())
    e.new_key = lambda: next(e.fresh)

    def healthy() -> None:
        for c in (e.dp_client, e.grpc_client):
            a, b = c.get_many(e.keys[:2])
            assert torch.equal(a, e.tensors[0]) and torch.equal(b, e.tensors[1])
            assert bytes(c.get_bytes_many([e.keys[2]])[0]) == e.blob
        key, t = e.new_key(), torch.randn(8, 8).half()
        assert e.dp_client.put(key, t) and torch.equal(e.grpc_client.get(key), t)
        assert e.grpc_client.delete_many([key]) == 1
        # no page is held by an aborted reservation (aborts on the data plane happen on the
        # node's connection thread, hence the polling)
        cpu = node.core.manager.mem_tiers[0]
        wait_until(lambda: cpu.used_bytes == 3 * PAGE, 5, "pages of aborted puts to be freed")

    e.healthy = healthy
    healthy()
    return e


def assert_not_stored(e, key: bytes) -> None:
    assert e.grpc_client.lookup([key]).found == [False]


# ---- oversized chunks -----------------------------------------------------------------------
def test_oversized_chunk_raw_grpc(env):
    key = env.new_key()
    code, details = rpc_code(lambda: put_stream(env.stub, env.md, pb.PutRequest(
        meta=pb.ChunkMeta(key=key, payload_bytes=MAX_CHUNK + 1, checksum=0)),
        pb.PutRequest(data=b"x" * 100)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_chunk_bytes" in details
    assert_not_stored(env, key)
    env.healthy()


def test_oversized_chunk_raw_data_plane(env):
    conn = RawDataPlane(env.node.core.data_port, env.session_id)
    key = env.new_key()
    code, msg = conn.put_meta(pb.ChunkMeta(key=key, payload_bytes=MAX_CHUNK + 1, checksum=0))
    assert code == INVALID and "max_chunk_bytes" in msg
    data = b"fine" * 100          # nothing was sent after the refusal: the connection is in sync
    assert conn.put(meta_for(key, data), data) == (0, "cpu")
    assert conn.get(key) == data
    conn.close()
    env.grpc_client.delete_many([key])
    env.healthy()


@pytest.mark.parametrize("plane", PLANES)
def test_oversized_chunk_client(env, plane):
    c = env.dp_client if plane else env.grpc_client
    key = env.new_key()
    with pytest.raises(InvalidArgument, match="max_chunk_bytes"):
        c.put(key, torch.zeros(MAX_CHUNK // 2 + 1, dtype=torch.float16))
    assert_not_stored(env, key)
    env.healthy()


# ---- truncated and overlong payloads --------------------------------------------------------
def test_truncated_chunk_stream_raw_grpc(env, payload):
    key, data = env.new_key(), payload(10_000, 1)
    code, details = rpc_code(lambda: put_stream(
        env.stub, env.md, pb.PutRequest(meta=meta_for(key, data)),
        pb.PutRequest(data=data[:4000]), pb.PutRequest(data=data[4000:6000])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in details
    assert "6000 of 10000" in details
    assert_not_stored(env, key)
    env.healthy()


def test_truncated_chunk_followed_by_next_meta_raw_grpc(env, payload):
    """Chunks completed before the failure stay stored; the partial one never is."""
    k1, k2, k3 = env.new_key(), env.new_key(), env.new_key()
    d = payload(5000, 2)
    code, details = rpc_code(lambda: put_stream(
        env.stub, env.md,
        pb.PutRequest(meta=meta_for(k1, d)), pb.PutRequest(data=d),
        pb.PutRequest(meta=meta_for(k2, d)), pb.PutRequest(data=d[:10]),
        pb.PutRequest(meta=meta_for(k3, d)), pb.PutRequest(data=d)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in details
    assert env.grpc_client.lookup([k1, k2, k3]).found == [True, False, False]
    assert bytes(env.grpc_client.get_bytes_many([k1])[0]) == d
    env.grpc_client.delete_many([k1])
    env.healthy()


def test_truncated_chunk_raw_data_plane(env, payload):
    key, data = env.new_key(), payload(3 * PAGE, 3)
    conn = RawDataPlane(env.node.core.data_port, env.session_id)
    assert conn.put_meta(meta_for(key, data)) == (0, "")      # room reserved: 3 pages
    conn.sock.sendall(data[:PAGE + 5])
    conn.close()                                               # ... and the peer goes away
    env.healthy()                                              # waits for the pages to be freed
    assert_not_stored(env, key)


@pytest.mark.parametrize("frames", [[10_010], [6000, 4010], [10_000, 10]],
                         ids=["one-frame", "split", "extra-frame"])
def test_more_data_than_declared_raw_grpc(env, payload, frames):
    key, data = env.new_key(), payload(10_000, 4)
    wire = data + b"!" * 10
    msgs, pos = [pb.PutRequest(meta=meta_for(key, data))], 0
    for n in frames:
        msgs.append(pb.PutRequest(data=wire[pos:pos + n]))
        pos += n
    code, details = rpc_code(lambda: put_stream(env.stub, env.md, *msgs))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    expect = "before any chunk meta" if frames == [10_000, 10] else "more data than the declared"
    assert expect in details
    if frames == [10_000, 10]:
        # the declared bytes were complete and valid before the stray frame: stored as declared
        assert bytes(env.grpc_client.get_bytes_many([key])[0]) == data
        env.grpc_client.delete_many([key])
    else:
        assert_not_stored(env, key)
    env.healthy()


def test_more_data_than_declared_raw_data_plane(env, payload):
    """Extra bytes after a payload are read as the next request: an unknown op, refused."""
    key, data = env.new_key(), payload(1000, 5)
    conn = RawDataPlane(env.node.core.data_port, env.session_id)
    assert conn.put_meta(meta_for(key, data)) == (0, "")
    conn.sock.sendall(data + b"\xee" * 10)
    assert conn.status() == (0, "cpu")
    code, msg = conn.status()
    assert code == INVALID and "unknown data-plane op 238" in msg
    conn.assert_closed()
    conn.close()
    assert bytes(env.grpc_client.get_bytes_many([key])[0]) == data
    env.grpc_client.delete_many([key])
    env.healthy()


def test_put_stream_framing_errors_raw_grpc(env):
    code, details = rpc_code(lambda: put_stream(env.stub, env.md, pb.PutRequest(data=b"x")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "before any chunk meta" in details
    code, details = rpc_code(lambda: put_stream(env.stub, env.md, pb.PutRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "empty PutRequest" in details
    env.healthy()


# ---- malformed keys -------------------------------------------------------------------------
def test_malformed_key_raw_grpc(env):
    bad = b"k" * 15
    calls = {
        "Put": lambda: put_stream(env.stub, env.md, pb.PutRequest(meta=meta_for(bad, b"abc")),
                                  pb.PutRequest(data=b"abc")),
        "Get": lambda: list(env.stub.Get(pb.GetRequest(keys=[env.keys[0], bad]),
                                         metadata=env.md, timeout=10)),
        "Lookup": lambda: env.stub.Lookup(pb.LookupRequest(keys=[env.keys[0], bad]),
                                          metadata=env.md, timeout=10),
        "Delete": lambda: env.stub.Delete(pb.DeleteRequest(keys=[bad, env.keys[0]]),
                                          metadata=env.md, timeout=10),
        "Put parent": lambda: put_stream(
            env.stub, env.md, pb.PutRequest(meta=meta_for(env.new_key(), b"abc",
                                                          parent_key=bad)),
            pb.PutRequest(data=b"abc")),
    }
    for name, call in calls.items():
        code, details = rpc_code(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "16 bytes, got 15" in details, name
        env.healthy()  # the Delete with a bad key in the batch deleted nothing


def test_malformed_key_raw_data_plane(env):
    conn = RawDataPlane(env.node.core.data_port, env.session_id)
    code, msg = conn.put_meta(meta_for(b"k" * 15, b"abc"))
    assert code == INVALID and "16 bytes, got 15" in msg
    assert conn.get(env.keys[2]) == env.blob                  # same connection, still in sync
    conn.close()
    env.healthy()


@pytest.mark.parametrize("plane", PLANES)
@pytest.mark.parametrize("length", [15, 17, 0])
def test_malformed_key_client(env, plane, length):
    """Regression (data plane, get): the client sent a 15-byte key unframed, so the node waited
    for the missing byte and the call hung until its deadline (or, with keys of 15 + 17 bytes,
    silently asked for two wrong keys)."""
    c = env.dp_client if plane else env.grpc_client
    bad = b"k" * length
    with pytest.raises(InvalidArgument, match="16 bytes"):
        c.put(bad, b"abc")
    with pytest.raises(InvalidArgument, match="16 bytes"):
        c.get_many([env.keys[0], bad], deadline_s=5)
    with pytest.raises(InvalidArgument, match="16 bytes"):
        c.lookup([bad])
    with pytest.raises(InvalidArgument, match="16 bytes"):
        c.delete_many([bad])
    env.healthy()


# ---- dtype, shape and checksum --------------------------------------------------------------
@pytest.mark.parametrize("plane", PLANES)
def test_wrong_dtype_for_session_client(env, plane):
    c = env.dp_client if plane else env.grpc_client
    key = env.new_key()
    with pytest.raises(InvalidArgument, match="kv_dtype 'float16'"):
        c.put(key, torch.randn(4, 4))                           # float32 in a float16 session
    assert_not_stored(env, key)
    assert c.put(key, b"raw bytes are uint8 and always allowed")
    c.delete_many([key])
    env.healthy()


def test_wrong_dtype_raw_grpc_and_data_plane(env):
    data = bytes(32)
    meta = meta_for(env.new_key(), data, dtype="bfloat16", shape=[16])
    code, details = rpc_code(lambda: put_stream(env.stub, env.md, pb.PutRequest(meta=meta),
                                                pb.PutRequest(data=data)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "kv_dtype" in details
    conn = RawDataPlane(env.node.core.data_port, env.session_id)
    code, msg = conn.put_meta(meta)
    assert code == INVALID and "kv_dtype" in msg
    code, msg = conn.put_meta(meta_for(env.new_key(), data, dtype="float128", shape=[2]))
    assert code == INVALID and "unknown dtype" in msg
    conn.close()
    assert_not_stored(env, meta.key)
    env.healthy()


@pytest.mark.parametrize("shape", [[4, 4], [31], [2, -15]])
def test_shape_does_not_match_payload(env, shape):
    data = bytes(30)
    meta = meta_for(env.new_key(), data, dtype="float16", shape=shape)
    code, details = rpc_code(lambda: put_stream(env.stub, env.md, pb.PutRequest(meta=meta),
                                                pb.PutRequest(data=data)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "shape" in details
    conn = RawDataPlane(env.node.core.data_port, env.session_id)
    code, msg = conn.put_meta(meta)
    assert code == INVALID and "shape" in msg
    conn.close()
    assert_not_stored(env, meta.key)
    env.healthy()


def test_bad_checksum_raw_grpc(env, payload):
    key, data = env.new_key(), payload(3000, 6)
    meta = meta_for(key, data, checksum=checksum([data]) ^ 1)
    code, details = rpc_code(lambda: put_stream(env.stub, env.md, pb.PutRequest(meta=meta),
                                                pb.PutRequest(data=data)))
    assert code == grpc.StatusCode.DATA_LOSS and "checksum" in details
    assert_not_stored(env, key)
    env.healthy()


def test_bad_checksum_raw_data_plane(env, payload):
    key, data = env.new_key(), payload(3000, 7)
    conn = RawDataPlane(env.node.core.data_port, env.session_id)
    code, msg = conn.put(meta_for(key, data, checksum=checksum([data]) ^ 1), data)
    assert code == grpc.StatusCode.DATA_LOSS.value[0] and "checksum" in msg
    assert conn.put(meta_for(key, data), data) == (0, "cpu")  # connection still usable
    conn.close()
    assert bytes(env.grpc_client.get_bytes_many([key])[0]) == data
    env.grpc_client.delete_many([key])
    env.healthy()


def test_rejected_puts_are_counted(env):
    before = env.grpc_client.stats().rejected
    with pytest.raises(InvalidArgument):
        env.grpc_client.put(env.new_key(), torch.randn(2))
    assert env.grpc_client.stats().rejected == before + 1


# ---- resource exhaustion --------------------------------------------------------------------
@pytest.mark.parametrize("plane", PLANES)
def test_full_memory_all_pinned_no_disk_is_resource_exhausted(start_node, connect, raw_stub,
                                                               scheme, plane):
    node = start_node(page_bytes=PAGE, cpu_capacity_bytes=4 * PAGE, max_chunk_bytes=2 * PAGE,
                      disk_capacity_bytes=0)
    c = connect(node.address, use_data_plane=plane)
    keys = prefix_keys(scheme, list(range(6 * 256)))
    tensors = [torch.randn(PAGE // 2).half() for _ in range(4)]
    c.put_many(keys[:4], tensors)
    leases = [node.core.manager.get(k) for k in keys[:4]]      # readers hold every chunk
    with pytest.raises(ResourceExhausted, match="being read"):
        c.put(keys[4], torch.randn(PAGE // 2).half())
    stub, md = raw_stub(node.address)
    data = bytes(100)
    code, _ = rpc_code(lambda: put_stream(stub, md, pb.PutRequest(meta=meta_for(keys[5], data)),
                                          pb.PutRequest(data=data)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    for lease in leases:
        lease.release()
    assert c.lookup(keys[4:]).found == [False, False]
    got = c.get_many(keys[:4])
    assert all(torch.equal(g, t) for g, t in zip(got, tensors, strict=True))
    assert c.put(keys[4], tensors[0])                          # room again once released


@pytest.mark.parametrize("plane", PLANES)
def test_chunk_larger_than_top_tier_is_resource_exhausted(start_node, connect, scheme, plane):
    node = start_node(page_bytes=PAGE, gpu_device="sim", gpu_capacity_bytes=PAGE,
                      cpu_capacity_bytes=8 * PAGE, max_chunk_bytes=4 * PAGE)
    c = connect(node.address, use_data_plane=plane)
    key = prefix_keys(scheme, list(range(256)))[0]
    with pytest.raises(ResourceExhausted, match="larger than the gpu tier"):
        c.put(key, torch.zeros(PAGE, dtype=torch.float16))      # 2 pages > the 1-page gpu tier
    small = torch.randn(100).half()
    assert c.put(key, small) and torch.equal(c.get(key), small)
    assert c.lookup([key]).tiers == ["gpu"]


# ---- data-plane connection garbage ----------------------------------------------------------
@pytest.mark.parametrize("hello,expect", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a kvstore data-plane"),
    (dp.HELLO.pack(dp.MAGIC, dp.VERSION + 1, 0), "not a kvstore data-plane"),
    (dp.HELLO.pack(dp.MAGIC, dp.VERSION, 32) + b"0" * 32, "unknown session"),
    (dp.HELLO.pack(dp.MAGIC, dp.VERSION, 0), "no session"),
    (dp.HELLO.pack(dp.MAGIC, dp.VERSION, 4) + b"\xff\xfe\x80\x81", "unknown session"),
])
def test_garbage_hello_is_refused_politely(env, hello, expect):
    """Regression (non-UTF-8 session id): the connection thread died on UnicodeDecodeError
    without answering."""
    conn = RawDataPlane(env.node.core.data_port)
    conn.sock.sendall(hello)
    code, msg = conn.status()
    assert code == PRECONDITION and expect in msg
    conn.assert_closed()
    conn.close()
    env.healthy()


@pytest.mark.parametrize("junk", [b"", b"KV", b"KVDP\x01\x10\x00abc"], ids=["nothing", "2-bytes",
                                                                            "short-session"])
def test_partial_hello_then_hang_up(env, junk):
    conn = RawDataPlane(env.node.core.data_port)
    conn.sock.sendall(junk)
    conn.sock.shutdown(socket.SHUT_WR)
    conn.assert_closed()
    conn.close()
    env.healthy()


def test_unknown_op_is_refused_and_connection_closed(env):
    conn = RawDataPlane(env.node.core.data_port, env.session_id)
    conn.sock.sendall(b"\x7f")
    code, msg = conn.status()
    assert code == INVALID and "unknown data-plane op 127" in msg
    conn.assert_closed()
    conn.close()
    env.healthy()


def test_oversized_frames_on_data_plane_close_the_connection(env):
    conn = RawDataPlane(env.node.core.data_port, env.session_id)
    conn.sock.sendall(dp.OP.pack(dp.OP_GET) + dp.U32.pack(dp.MAX_KEYS + 1))
    conn.assert_closed()
    conn.close()
    conn = RawDataPlane(env.node.core.data_port, env.session_id)
    conn.sock.sendall(dp.OP.pack(dp.OP_PUT) + dp.U32.pack(dp.MAX_META_BYTES + 1))
    conn.assert_closed()
    conn.close()
    env.healthy()


def test_garbage_chunk_meta_on_data_plane(env):
    conn = RawDataPlane(env.node.core.data_port, env.session_id)
    code, msg = conn.put_meta(b"\xff" * 40)
    assert code == INVALID and "not a valid ChunkMeta" in msg
    assert conn.get(env.keys[2]) == env.blob
    conn.close()
    env.healthy()


# ---- other malformed requests ---------------------------------------------------------------
def test_too_many_keys_in_one_call(env):
    keys = [struct.pack("<QQ", i, 0) for i in range(65537)]
    for call in (lambda: env.stub.Lookup(pb.LookupRequest(keys=keys), metadata=env.md,
                                         timeout=10),
                 lambda: env.stub.Delete(pb.DeleteRequest(keys=keys), metadata=env.md,
                                         timeout=10)):
        code, details = rpc_code(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "65537 keys" in details
    env.healthy()


@pytest.mark.parametrize("change,code", [
    (dict(chunk_tokens=0), grpc.StatusCode.INVALID_ARGUMENT),
    (dict(model_id=""), grpc.StatusCode.INVALID_ARGUMENT),
    (dict(kv_dtype="float\0"), grpc.StatusCode.INVALID_ARGUMENT),
])
def test_handshake_with_unusable_scheme(env, change, code):
    fields = dict(hash_algorithm="xxh3-128", version=1, model_id="m", kv_dtype="float16",
                  kv_layout="LKHTD", chunk_tokens=256)
    fields.update(change)
    got, _ = rpc_code(lambda: env.stub.Handshake(
        pb.HandshakeRequest(scheme=pb.KeyScheme(**fields)), timeout=10))
    assert got == code
    env.healthy()



# ---- cancelled streams ----------------------------------------------------------------------
def test_regression_put_cancelled_mid_stream_frees_its_reserved_pages(env, wait_until):
    """A client that cancels a Put (or whose deadline passes) after the meta and part of the
    payload: the node used to leave the reservation's pages held forever (CancelledError is not
    an Exception, so the abort never ran)."""
    import threading

    key, data = env.new_key(), bytes(range(256)) * (3 * PAGE // 256)
    sent, release = threading.Event(), threading.Event()

    def requests():
        yield pb.PutRequest(meta=meta_for(key, data))
        yield pb.PutRequest(data=data[:PAGE])
        sent.set()
        release.wait(10)  # the stream stays open, payload incomplete, until the test cancels

    call = env.stub.Put.future(requests(), metadata=env.md)
    assert sent.wait(10)
    cpu = env.node.core.manager.mem_tiers[0]
    # the fault is set up only once the node has reserved the chunk's pages
    wait_until(lambda: cpu.used_bytes > 3 * PAGE, 5, "the node to reserve the chunk's pages")
    call.cancel()
    release.set()
    assert_not_stored(env, key)
    env.healthy()  # waits until used pages are those of the stored chunks only
