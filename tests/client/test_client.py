"""The client library on its own terms: tensor views, retry strategy, error mapping, the asyncio
client, end-to-end checksum verification and deadlines."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
import torch

from kvstore.errors import (
    CapacityError,
    DeadlineExceeded,
    InvalidArgument,
    KVStoreError,
    ResourceExhausted,
    SchemeMismatch,
    Unavailable,
    error_for_status,
)
from kvstore.keys import prefix_keys
from kvstore_client import AsyncKVStoreClient, RetryPolicy
from kvstore_client.dataplane import ConnectionPool
from kvstore_client.retry import NO_RETRY
from kvstore_client.tensors import as_bytes_view, dtype_name, torch_dtype, view_as

PLANES = [pytest.param(True, id="dataplane"), pytest.param(False, id="grpc")]


# ---- tensors --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.int8])
def test_contiguous_tensor_is_sent_from_its_own_memory(dtype):
    t = torch.ones(3, 5, dtype=dtype)
    view, name, shape, owner = as_bytes_view(t)
    assert name == dtype_name(dtype) and shape == (3, 5) and len(view) == t.nbytes
    t.view(-1)[0] = 0                                        # zero-copy: the view sees writes
    assert bytes(view[:t.element_size()]) == bytes(t.element_size())
    back = view_as(torch.frombuffer(bytearray(view), dtype=torch.uint8), name, shape)
    assert torch.equal(back, t) and back.dtype == dtype


def test_non_contiguous_tensor_is_copied_once():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    view, name, shape, owner = as_bytes_view(t)
    assert owner.is_contiguous() and shape == (4, 3)
    assert torch.equal(view_as(torch.frombuffer(bytearray(view), dtype=torch.uint8), name, shape),
                       t)


@pytest.mark.parametrize("data", [b"abc", bytearray(b"abc"), memoryview(b"abc")])
def test_bytes_payloads_are_uint8(data):
    view, name, shape, owner = as_bytes_view(data)
    assert (bytes(view), name, shape, owner) == (b"abc", "uint8", (3,), None)


def test_unknown_dtype_name():
    with pytest.raises(InvalidArgument, match="unsupported tensor dtype"):
        torch_dtype("complex64")
    assert torch_dtype("bfloat16") is torch.bfloat16


# ---- retry and errors -----------------------------------------------------------------------
def test_backoff_grows_and_is_capped():
    p = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.5, multiplier=2.0, jitter=0.2)
    for attempt, base in enumerate([0.1, 0.2, 0.4, 0.5, 0.5]):
        for _ in range(20):
            assert base * 0.8 <= p.backoff_s(attempt) <= base * 1.2


async def test_retry_runs_until_success_or_attempts_run_out():
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.001)
    calls = []

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise Unavailable("node restarting")
        return "ok"

    assert await policy.run(flaky) == "ok" and len(calls) == 3
    calls.clear()

    async def down():
        calls.append(1)
        raise Unavailable("down")

    with pytest.raises(Unavailable):
        await policy.run(down)
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(Unavailable):
        await NO_RETRY.run(down)
    assert len(calls) == 1


async def test_retry_does_not_retry_other_errors():
    calls = []

    async def refused():
        calls.append(1)
        raise InvalidArgument("bad chunk")

    with pytest.raises(InvalidArgument):
        await RetryPolicy(initial_backoff_s=0.001).run(refused)
    assert len(calls) == 1


def test_error_for_status_maps_back_to_the_hierarchy():
    err = error_for_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", "CapacityError")
    assert type(err) is CapacityError and str(err) == "full"
    # a class name that does not match the code falls back to the class for the code
    err = error_for_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", "SchemeMismatch")
    assert type(err) is ResourceExhausted
    err = error_for_status(grpc.StatusCode.FAILED_PRECONDITION, "x", "SchemeMismatch")
    assert type(err) is SchemeMismatch
    err = error_for_status(grpc.StatusCode.UNIMPLEMENTED, "nope")
    assert type(err) is KVStoreError and err.code == grpc.StatusCode.UNIMPLEMENTED


# ---- the asyncio client ---------------------------------------------------------------------
@pytest.mark.parametrize("plane", PLANES)
async def test_async_client_round_trip(start_node, scheme, plane):
    node = start_node()
    keys = prefix_keys(scheme, list(range(3 * 256)))
    t = torch.randn(4, 32).half()
    client = await AsyncKVStoreClient.connect(node.address, scheme, use_data_plane=plane)
    async with client:
        assert await client.put_many([], []) == []
        assert await client.get_many([]) == []
        with pytest.raises(InvalidArgument, match="2 keys but 1 payloads"):
            await client.put_many(keys[:2], [t])
        # concurrent calls on one client share its connections
        results = await asyncio.gather(*(client.put(k, t * i) for i, k in enumerate(keys)))
        assert results == [True] * 3
        got = await client.get_many(keys)
        assert all(torch.equal(g, t * i) for i, g in enumerate(got))
        assert (await client.lookup(keys)).prefix_hits == 3
        assert await client.delete_many(keys) == 3


async def test_async_connect_refused_by_node_raises_scheme_mismatch(start_node, scheme):
    from kvstore.config import ModelSpec

    node = start_node(models=(ModelSpec("only/this", "float16"),))
    with pytest.raises(SchemeMismatch, match="not served"):
        await AsyncKVStoreClient.connect(node.address, scheme)


def corrupt_in_node_memory(node, key: bytes) -> None:
    entry = node.core.manager.lookup([key])[0]
    view = entry.mem.pool.host_views(entry.alloc)[0]
    view[3] ^= 0xFF


@pytest.mark.parametrize("plane", PLANES)
def test_corruption_in_transit_or_at_rest_is_a_miss(start_node, connect, scheme, plane):
    node = start_node()
    key = prefix_keys(scheme, list(range(256)))[0]
    t = torch.randn(64).half()
    c = connect(node.address, use_data_plane=plane)
    c.put(key, t)
    corrupt_in_node_memory(node, key)
    assert c.get(key) is None and c.corrupt_received == 1     # verified end to end
    raw = connect(node.address, use_data_plane=plane, verify_checksums=False)
    assert not torch.equal(raw.get(key), t)                   # the check is what caught it
    assert raw.corrupt_received == 0


def test_calls_to_a_stopped_node_raise_unavailable(start_node, connect, scheme):
    node = start_node()
    fast = RetryPolicy(max_attempts=2, initial_backoff_s=0.01)
    clients = [connect(node.address, retry=fast, deadline_s=5),
               connect(node.address, retry=fast, deadline_s=5, use_data_plane=False)]
    key = prefix_keys(scheme, list(range(256)))[0]
    start_node.stop(node)
    for c in clients:
        with pytest.raises(Unavailable):
            c.get(key)
        with pytest.raises(Unavailable):
            c.lookup([key])


def test_data_plane_call_has_a_deadline(start_node, connect, scheme):
    """A data-plane peer that accepts and then never answers costs one deadline, not a hang.

    Regression: the deadline covered only the request, not opening the connection, so a peer
    that never answered HELLO hung the call forever."""
    node = start_node()
    c = connect(node.address, deadline_s=0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        aio = c._client
        aio._pool = ConnectionPool("127.0.0.1", port, lambda: aio.session_id, 1)
        key = prefix_keys(scheme, list(range(256)))[0]
        with pytest.raises(DeadlineExceeded, match="deadline"):
            c.get(key)


def test_close_is_idempotent(start_node, scheme):
    from kvstore_client import KVStoreClient

    node = start_node()
    c = KVStoreClient(node.address, scheme)
    c.close()
    c.close()
