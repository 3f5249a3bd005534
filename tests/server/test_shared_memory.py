"""The shared-memory fast path: a node whose CPU tier lives in /dev/shm and a co-located client
that copies chunks out of it (data-plane GET_SHM / RELEASE) instead of through a socket."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from kvstore import dataplane as dp
from kvstore.keys import KeyScheme, prefix_keys


@pytest.fixture
def shm_node(start_node):
    return start_node(shared_memory=True)


def keys_for(scheme: KeyScheme, n: int, salt: int = 0) -> list[bytes]:
    return prefix_keys(scheme, [salt] + list(range(n * scheme.chunk_tokens - 1)))


def pins(node) -> int:
    return sum(e.pins for e in node.core.manager._index.values())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_round_trip_through_shared_memory(shm_node, connect, scheme, dtype):
    sch = KeyScheme("test/model", str(dtype).removeprefix("torch."))
    c = connect(shm_node.address, sch)
    assert c.session.shm_path == shm_node.core.shm.path and os.path.exists(c.session.shm_path)
    assert c._client._shm is not None
    keys = keys_for(sch, 3)
    xs = [torch.randn(4, 256, 128).to(dtype) for _ in keys]
    assert c.put_many(keys, xs) == [True] * 3
    got = c.get_many(keys)
    assert all(g.dtype == dtype and torch.equal(g, x) for g, x in zip(got, xs, strict=True))
    assert c._client.shm_gets == 3
    assert pins(shm_node) == 0  # every lease released


def test_out_buffers_and_misses(shm_node, connect, scheme):
    c = connect(shm_node.address)
    keys = keys_for(scheme, 2)
    xs = [torch.randn(1000, 64).half() for _ in keys]
    c.put_many(keys, xs)
    missing = keys_for(scheme, 1, salt=99)[0]
    out = [torch.empty(1000 * 64 * 2 + 100, dtype=torch.uint8) for _ in range(3)]
    got = c.get_many([keys[0], missing, keys[1]], out=out)
    assert got[1] is None
    assert torch.equal(got[0], xs[0]) and torch.equal(got[2], xs[1])
    assert got[0].data_ptr() == out[0].data_ptr() and got[2].data_ptr() == out[2].data_ptr()
    assert c._client.shm_gets == 2 and pins(shm_node) == 0
    assert c.get_bytes_many([missing]) == [None]


def test_chunk_on_disk_is_promoted_then_served_from_shared_memory(start_node, connect, scheme):
    node = start_node(shared_memory=True, cpu_capacity_bytes=4 << 20, max_chunk_bytes=1 << 20,
                      disk_capacity_bytes=64 << 20)
    c = connect(node.address)
    keys = keys_for(scheme, 8)
    xs = [torch.randn(512, 1024).half() for _ in keys]  # 1 MiB each: the first ones spill
    c.put_many(keys, xs)
    assert node.core.manager._index[keys[0]].tier == "disk"
    got = c.get_many([keys[0]])
    assert torch.equal(got[0], xs[0])
    assert c._client.shm_gets == 1 and node.core.manager._index[keys[0]].tier == "cpu"
    assert pins(node) == 0


def test_corrupt_byte_in_shared_memory_is_a_miss_when_verifying(shm_node, connect, scheme):
    c = connect(shm_node.address, verify_shared_memory=True)
    key = keys_for(scheme, 1)[0]
    c.put_many([key], [torch.randn(256, 256).half()])
    e = shm_node.core.manager._index[key]
    view = e.mem.pool.host_views(e.alloc)[0]
    view[100] = view[100] ^ 0xFF
    assert c.get_many([key]) == [None]
    assert c._client.corrupt_received == 1 and pins(shm_node) == 0


def test_leases_pin_until_release_and_disconnect_releases_them(shm_node, connect, scheme):
    c = connect(shm_node.address)
    keys = keys_for(scheme, 2)
    c.put_many(keys, [torch.randn(128, 128).half() for _ in keys])
    sid = c.session.session_id.encode()
    with socket.create_connection(("127.0.0.1", shm_node.core.data_port)) as s:
        s.sendall(dp.HELLO.pack(dp.MAGIC, dp.VERSION, len(sid)) + sid)
        assert s.recv(dp.STATUS.size, socket.MSG_WAITALL) == dp.pack_status(0)
        s.sendall(dp.OP.pack(dp.OP_GET_SHM) + dp.U32.pack(2) + b"".join(keys))
        ids = []
        for _ in keys:
            assert s.recv(1, socket.MSG_WAITALL) == b"\x01"
            (m,) = dp.U32.unpack(s.recv(4, socket.MSG_WAITALL))
            s.recv(m, socket.MSG_WAITALL)
            lease_id, k = dp.SPAN_HEAD.unpack(s.recv(dp.SPAN_HEAD.size, socket.MSG_WAITALL))
            assert k >= 1
            s.recv(dp.SPAN.size * k, socket.MSG_WAITALL)
            ids.append(lease_id)
        assert pins(shm_node) == 2
        s.sendall(dp.OP.pack(dp.OP_RELEASE) + dp.U32.pack(1) + dp.U64.pack(ids[0]))
        assert s.recv(dp.STATUS.size, socket.MSG_WAITALL) == dp.pack_status(0)
        assert pins(shm_node) == 1
    # the client went away holding one lease: the node releases it
    import time

    deadline = time.monotonic() + 5
    while pins(shm_node) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pins(shm_node) == 0


def test_held_lease_blocks_eviction_and_release_frees_it(start_node, connect, scheme):
    node = start_node(shared_memory=True, cpu_capacity_bytes=2 << 20, max_chunk_bytes=1 << 20,
                      page_bytes=64 << 10)
    c = connect(node.address)
    keys = keys_for(scheme, 4)
    xs = [torch.randn(512, 1024).half() for _ in keys]  # 1 MiB: the tier holds two
    c.put_many(keys[:2], xs[:2])
    c.get_many(keys[:2])  # leased and released
    assert pins(node) == 0
    c.put_many(keys[2:], xs[2:])  # evictions succeed: nothing is pinned any more
    assert [k in node.core.manager._index for k in keys] == [False, False, True, True]


def test_shared_memory_off_uses_tcp(start_node, connect, scheme):
    node = start_node()
    assert node.core.shm is None
    c = connect(node.address)
    assert c.session.shm_path == "" and c._client._shm is None
    key = keys_for(scheme, 1)[0]
    x = torch.randn(64, 64).half()
    c.put_many([key], [x])
    assert torch.equal(c.get_many([key])[0], x) and c._client.shm_gets == 0


def test_client_can_opt_out(shm_node, connect, scheme):
    c = connect(shm_node.address, use_shared_memory=False)
    assert c._client._shm is None
    key = keys_for(scheme, 1)[0]
    x = torch.randn(64, 64).half()
    c.put_many([key], [x])
    assert torch.equal(c.get_many([key])[0], x) and c._client.shm_gets == 0


def test_shm_file_is_private_and_removed_on_stop(start_node):
    node = start_node(shared_memory=True)
    path = node.core.shm.path
    assert path.startswith("/dev/shm/") and os.stat(path).st_mode & 0o777 == 0o600
    start_node.stop(node)
    assert not os.path.exists(path)
