"""The threaded receive into GPU memory (pinned staging ring, copies on the connection's own
stream): device tool only (``-m gpu``)."""

from __future__ import annotations

import pytest
import torch

from kvstore.keys import prefix_keys
from kvstore_client.receiver import PIECE_BYTES

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_chunks_land_in_gpu_memory_through_the_staging_ring(start_node, connect, scheme):
    node = start_node()
    c = connect(node.address, max_connections=3)
    keys = prefix_keys(scheme, list(range(7 * 256)))
    # sizes around the ring's piece size: partial last pieces, more pieces than ring slots
    sizes = [1, 4097, PIECE_BYTES - 1, PIECE_BYTES, PIECE_BYTES + 1, 5 * PIECE_BYTES + 3, 12345]
    data = [torch.randint(-1000, 1000, (n // 2 + 1,), dtype=torch.int16).half() for n in sizes]
    c.put_many(keys, data)
    for _ in range(2):  # the second round reuses the rings
        got = c.get_many(keys, device="cuda")
        for g, t in zip(got, data, strict=True):
            assert g.is_cuda and torch.equal(g.cpu(), t)
    out = [torch.empty(t.numel() * 2, dtype=torch.uint8).pin_memory() for t in data]
    got = c.get_many(keys, out=out, device="cuda")
    for g, t, o in zip(got, data, out, strict=True):
        assert g.is_cuda and torch.equal(g.cpu(), t)
        assert torch.equal(o.view(torch.float16), t)  # out= received the bytes too


def test_a_corrupt_chunk_into_gpu_memory_is_a_miss(start_node, connect, scheme):
    node = start_node()
    c = connect(node.address)
    keys = prefix_keys(scheme, list(range(2 * 256)))
    c.put_many(keys, [torch.randn(1 << 20).half(), torch.randn(100).half()])
    entry = node.core.manager.lookup([keys[0]])[0]
    entry.mem.pool.host_views(entry.alloc)[0][5] ^= 0xFF
    got = c.get_many(keys, device="cuda")
    assert got[0] is None and got[1] is not None and c.corrupt_received == 1


def test_fp8_chunks_decode_on_the_gpu(start_node, connect):
    from kvstore.keys import KeyScheme

    scheme = KeyScheme("test/model", "bfloat16")
    node = start_node()
    c = connect(node.address, scheme)
    key = prefix_keys(scheme, list(range(256)))[0]
    kv = torch.randn(2, 2, 4, 256, 64, dtype=torch.bfloat16, device="cuda")
    c.put_many([key], [kv], codec="fp8-e4m3")
    got = c.get_many([key], device="cuda")[0]
    assert got.is_cuda and got.dtype == torch.bfloat16 and got.shape == kv.shape
    assert (got.float() - kv.float()).abs().max() < 0.2 * kv.float().abs().max()
