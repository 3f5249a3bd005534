"""A real node (gRPC + data plane on real sockets) and the real client, end to end.

Most tests run twice: chunk bytes over the bulk data plane, and over gRPC streams
(use_data_plane=False).
"""

from __future__ import annotations

import threading

import grpc
import pytest
import torch

from kvstore.config import ModelSpec
from kvstore.errors import InvalidArgument, SchemeMismatch
from kvstore.keys import KeyScheme, prefix_keys
from kvstore.v1 import kvstore_pb2 as pb

PLANES = [pytest.param(True, id="dataplane"), pytest.param(False, id="grpc")]


@pytest.fixture
def node(start_node):
    return start_node()


@pytest.fixture(params=PLANES)
def client(request, node, connect):
    c = connect(node.address, use_data_plane=request.param)
    assert (c._client._pool is not None) == request.param  # the plane under test is in use
    return c


def keys_for(scheme: KeyScheme, n: int, salt: int = 0) -> list[bytes]:
    return prefix_keys(scheme, [salt] + list(range(n * scheme.chunk_tokens - 1)))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


# ---- handshake ------------------------------------------------------------------------------
def test_handshake_describes_the_node(node, connect, scheme):
    c = connect(node.address)
    s = c.session
    assert len(s.session_id) >= 32 and s.namespace_id == scheme.namespace_id()
    assert s.data_port == node.core.data_port != 0
    assert s.max_chunk_bytes == node.config.max_chunk_bytes
    assert s.frame_bytes == node.config.frame_bytes and s.server_version


def test_node_id_names_the_bound_port(start_node, connect):
    """Regression: with port=0 every node called itself "127.0.0.1:0"."""
    a, b = start_node(), start_node()
    ids = {connect(n.address).session.node_id for n in (a, b)}
    assert ids == {a.address, b.address}


# ---- put / get / lookup / delete / stats ----------------------------------------------------
def test_put_get_lookup_delete_stats(client, payload, scheme):
    keys = keys_for(scheme, 4)
    blobs = [payload(n, n) for n in (1, 4096, 300_000)]
    assert client.put_many(keys[:3], blobs) == [True, True, True]

    got = client.get_bytes_many(keys)
    assert [None if g is None else bytes(g) for g in got] == blobs + [None]
    tensors = client.get_many(keys[:1])
    assert tensors[0].dtype == torch.uint8 and bytes(tensors[0].numpy()) == blobs[0]

    res = client.lookup([keys[0], keys[1], keys[3], keys[2]])
    assert res.found == [True, True, False, True]
    assert res.tiers == ["cpu", "cpu", "", "cpu"]
    assert res.payload_bytes == [1, 4096, 0, 300_000]
    assert res.prefix_hits == 2                   # leading run of hits

    assert client.delete_many([keys[1], keys[3]]) == 1
    assert client.get_many([keys[1]]) == [None]
    assert client.lookup(keys).found == [True, False, True, False]

    st = client.stats()
    assert st.puts == 3 and st.bytes_in == sum(map(len, blobs))
    assert st.hits == 4 and st.misses == 2
    assert st.bytes_out == sum(map(len, blobs)) + 1
    cpu = next(t for t in st.tiers if t.name == "cpu")
    assert cpu.chunks == 2 and cpu.hits == 4 and cpu.used_bytes > 0
    ns = next(n for n in st.namespaces if n.namespace_id == scheme.namespace_id())
    assert (ns.model_id, ns.hits, ns.misses) == (scheme.model_id, 4, 2)
    assert {lat.op for lat in st.latencies} == {"get", "put", "lookup"}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("plane", PLANES)
def test_tensors_round_trip_exactly(node, connect, dtype, plane):
    name = str(dtype).removeprefix("torch.")
    scheme = KeyScheme("test/model", name)
    c = connect(node.address, scheme, use_data_plane=plane)
    gen = torch.Generator().manual_seed(7)
    t = torch.randn((2, 2, 4, 16, 8), generator=gen).to(dtype)    # LKHTD
    t.view(-1)[:4] = torch.tensor([float("inf"), float("-inf"), -0.0, 1e-40]).to(dtype)
    strided = torch.randn((16, 6), generator=gen).to(dtype).t()   # not contiguous
    keys = keys_for(scheme, 2)
    assert c.put_many(keys, [t, strided]) == [True, True]
    a, b = c.get_many(keys)
    assert same_bits(a, t) and a.dtype == dtype and a.shape == (2, 2, 4, 16, 8)
    assert same_bits(b, strided.contiguous()) and b.shape == (6, 16)


@pytest.mark.parametrize("plane", PLANES)
def test_get_many_receives_into_out_buffers(node, connect, scheme, plane):
    c = connect(node.address, use_data_plane=plane)
    keys = keys_for(scheme, 3)
    tensors = [torch.randn(4, 64).half(), torch.randn(2, 2, 8).half()]
    c.put_many([keys[0], keys[2]], tensors)
    out = [torch.zeros(1024, dtype=torch.uint8) for _ in range(3)]   # larger than needed
    got = c.get_many(keys, out=out)
    assert got[1] is None
    for g, t, buf in ((got[0], tensors[0], out[0]), (got[2], tensors[1], out[2])):
        assert torch.equal(g, t) and g.shape == t.shape
        assert g.data_ptr() == buf.data_ptr()       # received in place, not copied
    with pytest.raises(InvalidArgument, match="holds 16 bytes"):
        c.get_many(keys[:1], out=[torch.empty(16, dtype=torch.uint8)])
    with pytest.raises(InvalidArgument, match="output buffers"):
        c.get_many(keys, out=out[:2])
    assert torch.equal(c.get(keys[0]), tensors[0])  # the failed calls left the client usable


@pytest.mark.parametrize("plane", PLANES)
def test_32mib_chunk_round_trip(node, connect, scheme, plane):
    c = connect(node.address, use_data_plane=plane)
    t = torch.randn((32, 2, 8, 256, 128)).half()
    assert t.numel() * t.element_size() == 32 << 20
    key = keys_for(scheme, 1)[0]
    assert c.put(key, t)
    got = c.get(key)
    assert same_bits(got, t)
    assert c.lookup([key]).payload_bytes == [32 << 20]


def test_eight_concurrent_client_threads(node, connect, scheme, payload):
    clients = [connect(node.address), connect(node.address, use_data_plane=False)]
    shared_keys = keys_for(scheme, 4, salt=99)
    shared = [payload(20_000 + i, f"shared{i}") for i in range(4)]
    clients[0].put_many(shared_keys, shared)
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            c = clients[i % 2]
            keys = keys_for(scheme, 6, salt=i)
            blobs = [payload(70_000 + 1000 * j, f"t{i}-{j}") for j in range(6)]
            start.wait(10)
            for _ in range(3):
                assert c.put_many(keys, blobs) == [True] * 6
                assert [bytes(g) for g in c.get_bytes_many(keys)] == blobs
                assert [bytes(g) for g in c.get_bytes_many(shared_keys)] == shared
                assert c.lookup(keys).prefix_hits == 6
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]
    assert clients[0].stats().puts == 4 + 8 * 3 * 6


# ---- health and reflection ------------------------------------------------------------------
def test_health_check_serving(node):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(node.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ("", "kvstore.v1.KVStore"):
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as exc:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_kvstore_service(node):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(node.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        reqs = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="kvstore.v1.KVStore")]
        resps = list(stub.ServerReflectionInfo(iter(reqs), timeout=10))
    names = {s.name for s in resps[0].list_services_response.service}
    assert {"kvstore.v1.KVStore", "grpc.health.v1.Health"} <= names
    assert resps[1].file_descriptor_response.file_descriptor_proto  # the .proto is served too


# ---- handshake refusals ---------------------------------------------------------------------
@pytest.fixture
def strict_node(start_node):
    return start_node(models=(ModelSpec("test/model", "float16"),
                              ModelSpec("test/model", "bfloat16", chunk_tokens=128)))


def test_default_scheme_matches_default_model_spec(strict_node, connect):
    """KeyScheme's and ModelSpec's defaults (layout, chunk size) must agree, or a node started
    with `--model ID:DTYPE` refuses a worker built with KeyScheme(ID, DTYPE)."""
    assert connect(strict_node.address, KeyScheme("test/model", "float16")).session.session_id


@pytest.mark.parametrize("change,field", [
    (dict(model_id="other/model"), "model 'other/model' is not served"),
    (dict(kv_dtype="float32"), "kv_dtype"),
    (dict(chunk_tokens=64), "chunk_tokens"),
    (dict(kv_layout="LTKHD"), "kv_layout"),
    (dict(kv_dtype="bfloat16", chunk_tokens=256), "chunk_tokens"),  # served only with 128
])
def test_handshake_mismatch_names_the_field(strict_node, connect, raw_stub, change, field):
    from kvstore import wire

    s = KeyScheme(**{**dict(model_id="test/model", kv_dtype="float16"), **change})
    with pytest.raises(SchemeMismatch, match=field):
        connect(strict_node.address, s)
    stub, _ = raw_stub(strict_node.address, session=False)
    with pytest.raises(grpc.RpcError) as exc:
        stub.Handshake(pb.HandshakeRequest(scheme=wire.scheme_to_pb(s)), timeout=10)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert field in exc.value.details()


@pytest.mark.parametrize("algo,version", [("xxh3-128", 2), ("sha256", 1), ("", 0)])
def test_handshake_with_other_hash_version_is_refused(strict_node, raw_stub, algo, version):
    stub, _ = raw_stub(strict_node.address, session=False)
    m = pb.KeyScheme(hash_algorithm=algo, version=version, model_id="test/model",
                     kv_dtype="float16", kv_layout="LKHTD", chunk_tokens=256)
    with pytest.raises(grpc.RpcError) as exc:
        stub.Handshake(pb.HandshakeRequest(scheme=m), timeout=10)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "key scheme" in exc.value.details() and f"/v{version}" in exc.value.details()


def test_any_model_is_accepted_when_none_configured(node, connect):
    assert connect(node.address, KeyScheme("whatever", "float32", chunk_tokens=16)).session


# ---- sessions -------------------------------------------------------------------------------
@pytest.mark.parametrize("metadata", [(), (("kvstore-session", "f" * 32),)],
                         ids=["no-session", "unknown-session"])
def test_data_calls_without_a_session_fail_precondition(node, raw_stub, metadata):
    stub, _ = raw_stub(node.address, session=False)
    key = b"k" * 16
    calls = {
        "Lookup": lambda: stub.Lookup(pb.LookupRequest(keys=[key]), metadata=metadata,
                                      timeout=10),
        "Delete": lambda: stub.Delete(pb.DeleteRequest(keys=[key]), metadata=metadata,
                                      timeout=10),
        "Get": lambda: list(stub.Get(pb.GetRequest(keys=[key]), metadata=metadata, timeout=10)),
        "Put": lambda: stub.Put(iter([pb.PutRequest(meta=pb.ChunkMeta(
            key=key, payload_bytes=1, checksum=0)), pb.PutRequest(data=b"x")]),
            metadata=metadata, timeout=10),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION, name
        assert "Handshake" in exc.value.details(), name
    assert stub.Stats(pb.StatsRequest(), timeout=10).puts == 0  # nothing was stored


# ---- lookup with prefetch -------------------------------------------------------------------
def test_lookup_prefetch_promotes_disk_hits(start_node, connect, scheme, payload, wait_until):
    node = start_node(page_bytes=4096, cpu_capacity_bytes=64 << 10, max_chunk_bytes=16 << 10,
                      disk_capacity_bytes=1 << 20)
    c = connect(node.address)
    keys = keys_for(scheme, 4)
    blobs = [payload(16 << 10, i) for i in range(4)]
    c.put_many(keys, blobs, parent_keys=[None] + keys[:-1])
    c.put_many(keys_for(scheme, 4, salt=1), blobs)             # pushes the chain to disk
    assert c.lookup(keys).tiers == ["disk"] * 4
    res = c.lookup(keys[:1], prefetch=True, prefetch_next=2)
    assert res.found == [True] and res.tiers == ["disk"]       # answered before prefetching
    wait_until(lambda: c.lookup(keys).tiers == ["cpu"] * 3 + ["disk"], 10, "prefetch")
    assert c.stats().prefetches == 3
    assert [bytes(g) for g in c.get_bytes_many(keys)] == blobs
