"""Regression tests for the bugs the fuzzer found, one per bug, named after it."""

from __future__ import annotations

import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2

from kvstore import dataplane as dp
from kvstore.v1 import kvstore_pb2 as pb

from . import oracle
from . import strategies as fs
from .harness import read_status, rpc_status

UNARY = {"Handshake": "kvstore.v1.KVStore", "Lookup": "kvstore.v1.KVStore",
         "Delete": "kvstore.v1.KVStore", "Stats": "kvstore.v1.KVStore",
         "Inspect": "kvstore.v1.Admin", "Check": "grpc.health.v1.Health"}
NOT_A_MESSAGE = b"\xff\xff\xff"  # field 31, wire type 7: no protobuf message parses this


@pytest.mark.parametrize("method", sorted(UNARY))
def test_undecodable_request_is_invalid_argument_not_unknown(target, method):
    """gRPC answered request bytes that do not parse with UNKNOWN ("Unexpected DecodeError"),
    indistinguishable from a node bug; now INVALID_ARGUMENT naming the kvstore class."""
    call = target.raw("unary_unary", method, UNARY[method])
    code, exc, trailing = rpc_status(lambda: call(NOT_A_MESSAGE, metadata=target.md, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, exc
    assert trailing.get("kvstore-error") == "InvalidArgument"
    target.after_case(())


def test_undecodable_stream_messages_are_invalid_argument(target):
    get = target.raw("unary_stream", "Get")
    code, exc, _ = rpc_status(lambda: list(get(NOT_A_MESSAGE, metadata=target.md, timeout=10)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, exc
    key, data = fs.key_for("regress-put"), b"abc"
    meta = pb.PutRequest(meta=pb.ChunkMeta(key=key, payload_bytes=3, checksum=oracle.xxh(data)))
    put = target.raw("stream_unary", "Put")
    code, exc, _ = rpc_status(lambda: put(iter([meta.SerializeToString(), NOT_A_MESSAGE]),
                                          metadata=target.md, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, exc
    assert target.get_all([key]) == {key: None}  # the reservation was dropped, nothing stored
    health = target.health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    target.after_case([key])


@pytest.mark.parametrize("keys", [
    pytest.param(lambda c: [*c, b"short"], id="bad-key-last"),
    pytest.param(lambda c: fs.many_keys(65537, 1), id="65537-keys"),
])
def test_get_refuses_the_whole_batch_before_streaming(target, keys):
    """Get streamed every chunk before a malformed key, and accepted any number of keys (Lookup
    and Delete refuse more than 65536)."""
    batch = keys(sorted(target.canaries))
    items = []
    code, exc, _ = rpc_status(lambda: items.extend(target.stub.Get(
        pb.GetRequest(keys=batch), metadata=target.md, timeout=30)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, exc
    assert items == []
    target.after_case(())


def test_identity_chunk_with_codec_params_is_refused(target):
    """The node stored identity chunks with codec params, which every client then failed to
    decode on get; now INVALID_ARGUMENT at the meta, over both planes."""
    key, data = fs.key_for("regress-params"), b"x" * 64
    meta = pb.ChunkMeta(key=key, payload_bytes=len(data), checksum=oracle.xxh(data),
                        codec_params={"group_size": "32"})
    code, exc, _ = rpc_status(lambda: target.stub.Put(
        iter([pb.PutRequest(meta=meta), pb.PutRequest(data=data)]), metadata=target.md,
        timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "codec_params" in exc.details()
    with socket.create_connection(("127.0.0.1", target.node.data_port), timeout=10) as s:
        sid = target.session_id.encode()
        s.sendall(dp.HELLO.pack(dp.MAGIC, dp.VERSION, len(sid)) + sid)
        assert read_status(s) == (0, "")
        raw = meta.SerializeToString()
        s.sendall(dp.OP.pack(dp.OP_PUT) + dp.U32.pack(len(raw)) + raw)
        code_dp, msg = read_status(s)
    assert code_dp == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "codec_params" in msg
    assert target.get_all([key]) == {key: None}
    target.after_case([key])


def test_data_plane_put_meta_cut_short_ends_without_a_status(target):
    """A client gone in the middle of a PUT's meta was answered INVALID_ARGUMENT "not a valid
    ChunkMeta" (the recv error was caught as a parse error); now the node just hangs up."""
    meta = pb.ChunkMeta(key=fs.key_for("regress-cut"), payload_bytes=10,
                        checksum=1).SerializeToString()
    with socket.create_connection(("127.0.0.1", target.node.data_port), timeout=10) as s:
        sid = target.session_id.encode()
        s.sendall(dp.HELLO.pack(dp.MAGIC, dp.VERSION, len(sid)) + sid)
        assert read_status(s) == (0, "")
        s.sendall(dp.OP.pack(dp.OP_PUT) + dp.U32.pack(len(meta)) + meta[:5])
        s.shutdown(socket.SHUT_WR)
        assert s.recv(16) == b""
    target.after_case(())
