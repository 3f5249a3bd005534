"""Tenant isolation on a real node, over gRPC and over the data plane: another tenant's chunks
are misses (get, lookup, prefetch, delete), their bytes never come back, a put never replaces
them; sharing works only by the owner's opt-in, and then read-only."""

from __future__ import annotations

import socket

import grpc
import pytest

from kvstore import dataplane as dp
from kvstore import wire
from kvstore.errors import PermissionDenied
from kvstore.keys import prefix_keys
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

from .conftest import TOKENS, scheme_of

PLANES = [pytest.param(True, id="dataplane"), pytest.param(False, id="grpc")]


def alice_chunks(payload, n: int = 3) -> tuple[list[bytes], list[bytes]]:
    keys = prefix_keys(scheme_of("alice"), list(range(n * 256)))
    return keys, [payload(70_000 + i, f"alice-{i}") for i in range(n)]


@pytest.mark.parametrize("plane", PLANES)
def test_another_tenant_never_sees_reads_or_deletes_the_chunks(plane, secure_node, client_as,
                                                               payload):
    node = secure_node()
    alice = client_as(node, "alice", use_data_plane=plane)
    bob = client_as(node, "bob", use_data_plane=plane)
    assert (bob._client._pool is not None) == plane  # the plane under test is in use
    keys, blobs = alice_chunks(payload)
    assert alice.put_many(keys, blobs) == [True] * 3

    assert bob.get_bytes_many(keys) == [None, None, None]
    assert bob.get_many(keys) == [None, None, None]
    res = bob.lookup(keys, prefetch=True, prefetch_next=4)
    assert res.found == [False] * 3 and res.prefix_hits == 0 and res.payload_bytes == [0] * 3
    assert bob.delete_many(keys) == 0
    with pytest.raises(PermissionDenied, match="another namespace"):
        bob.put(keys[0], payload(70_000, "bob"))   # a key alice holds is never replaced
    assert bob.put(prefix_keys(scheme_of("bob"), [1] * 256)[0], payload(10, "b"))  # own: fine

    assert [bytes(g) for g in alice.get_bytes_many(keys)] == blobs  # untouched, byte-exact
    assert alice.lookup(keys).prefix_hits == 3


def test_the_bytes_never_come_back_on_the_wire(secure_node, client_as, grpc_channel, payload):
    """Below the client library: raw gRPC Get and raw data-plane GET as bob carry no payload."""
    node = secure_node()
    keys, blobs = alice_chunks(payload)
    client_as(node, "alice").put_many(keys, blobs)
    stub = pb_grpc.KVStoreStub(grpc_channel(node.address))
    bob_md = (("authorization", f"Bearer {TOKENS['bob']}"),)
    sid = stub.Handshake(pb.HandshakeRequest(scheme=wire.scheme_to_pb(scheme_of("bob"))),
                         metadata=bob_md, timeout=10).session_id
    md = (("kvstore-session", sid), *bob_md)
    replies = list(stub.Get(pb.GetRequest(keys=keys), metadata=md, timeout=10))
    assert [r.header.found for r in replies] == [False] * 3  # headers only, no data frames
    wire_bytes = b"".join(r.SerializeToString() for r in replies)
    assert not any(b[:64] in wire_bytes for b in blobs)

    with socket.create_connection(("127.0.0.1", node.core.data_port), timeout=10) as s:
        s.sendall(dp.HELLO.pack(dp.MAGIC, dp.VERSION, len(sid)) + sid.encode())
        assert s.recv(dp.STATUS.size) == dp.pack_status(0)
        s.sendall(dp.OP.pack(dp.OP_GET) + dp.U32.pack(len(keys)) + b"".join(keys))
        got = b""
        while len(got) < len(keys):
            got += s.recv(4096)
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):  # nothing follows the three "not found" bytes
            got += s.recv(4096)
        assert got == b"\x00" * 3


def test_sharing_is_opt_in_and_read_only(secure_node, client_as, payload):
    node = secure_node(tenants={"alice": {"share_with": ["carol"]}})
    keys, blobs = alice_chunks(payload)
    client_as(node, "alice").put_many(keys, blobs)

    carol = client_as(node, "carol", tenant="alice")  # alice opted in to share with carol
    assert [bytes(g) for g in carol.get_bytes_many(keys)] == blobs
    assert carol.lookup(keys).prefix_hits == 3
    with pytest.raises(PermissionDenied, match="reading only"):
        carol.put(keys[0], payload(10, "c"))
    with pytest.raises(PermissionDenied, match="reading only"):
        carol.delete_many(keys)
    with pytest.raises(PermissionDenied):
        client_as(node, "bob", tenant="alice")       # not listed: no session at all
    assert client_as(node, "carol").get_bytes_many(keys) == [None] * 3  # own namespace: misses
    assert [bytes(g) for g in client_as(node, "alice").get_bytes_many(keys)] == blobs


def test_namespaces_are_isolated_in_the_embedded_default_too(start_node, connect, payload):
    """No auth: tenants are only salts there, but one namespace still never reads or replaces
    another's chunk (keys are namespace-salted, so only a forged key could collide)."""
    node = start_node()
    a = connect(node.address, scheme_of("alice"))
    b = connect(node.address, scheme_of("bob"))
    keys, blobs = alice_chunks(payload, 1)
    a.put_many(keys, blobs)
    assert b.get_bytes_many(keys) == [None] and b.delete_many(keys) == 0
    with pytest.raises(PermissionDenied):
        b.put(keys[0], payload(10, "b"))
    assert bytes(a.get_bytes_many(keys)[0]) == blobs[0]


def test_prefetch_promotes_only_the_callers_namespace(tier_manager, make_chunk, wait_until):
    m = tier_manager(disk_capacity_bytes=1 << 20)
    info, data = make_chunk("a", 3 * 4096)
    m.put(info, "ns-a", data)
    for i in range(3):  # push it out of the (4-page) CPU tier onto disk
        filler, filler_data = make_chunk(f"filler-{i}", 2 * 4096)
        m.put(filler, "ns-a", filler_data)
    assert m.lookup([info.key])[0].tier == "disk"
    assert m.lookup([info.key], "ns-b") == [None]
    assert m.prefetch([info.key], namespace="ns-b") == 0
    assert m.get(info.key, "ns-b") is None
    assert m.prefetch([info.key], namespace="ns-a") == 1
    wait_until(lambda: m.lookup([info.key])[0].tier == "cpu", 10, "the prefetch")


def test_a_refused_handshake_leaves_no_session(secure_node, grpc_channel):
    node = secure_node()
    stub = pb_grpc.KVStoreStub(grpc_channel(node.address))
    with pytest.raises(grpc.RpcError):
        stub.Handshake(pb.HandshakeRequest(scheme=wire.scheme_to_pb(scheme_of("alice"))),
                       metadata=(("authorization", f"Bearer {TOKENS['bob']}"),), timeout=10)
    assert len(node.core.sessions._sessions) == 0
