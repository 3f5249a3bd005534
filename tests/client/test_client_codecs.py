"""Codecs through a real node and the client: put_many(codec=...) sends the encoded bytes,
get_many decodes them (or hands the payload back with decode=False), a node with tier_codecs
re-encodes on demotion and the client decodes that too, also after a warm restart, and a put
whose codec metadata does not match its payload is refused with INVALID_ARGUMENT.

Chunks are synthetic LKHTD float16 KV [2, 2, 4, 64, 64] (128 KiB): keys with per-channel
offsets (outlier channels), values standard normal.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import kvstore_client.aio as aio
from kvstore.codecs import encode
from kvstore.errors import InvalidArgument
from kvstore.keys import prefix_keys

_spec = importlib.util.spec_from_file_location(
    "codec_bounds", Path(__file__).parents[1] / "codecs" / "codec_bounds.py")
assert _spec and _spec.loader
bounds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bounds)

PLANES = [pytest.param(True, id="dataplane"), pytest.param(False, id="grpc")]
SHAPE = (2, 2, 4, 64, 64)
RAW = 2 * 2 * 4 * 64 * 64 * 2


def kv(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g)
    x[:, 0] += torch.linspace(-8, 8, SHAPE[-1])
    return x.to(torch.float16)


def keys_for(scheme, n: int, salt: int = 0) -> list[bytes]:
    tokens = [salt * 1000 + i for i in range(n * scheme.chunk_tokens)]
    return prefix_keys(scheme, tokens)


@pytest.mark.parametrize("plane", PLANES)
def test_put_with_fp8_sends_fewer_bytes_and_get_decodes(start_node, connect, scheme, plane):
    node = start_node()
    c = connect(node.address, use_data_plane=plane)
    x = kv(1)
    (key,) = keys_for(scheme, 1)
    assert c.put_many([key], [x], codec="fp8-e4m3") == [True]
    sent = c.stats().bytes_in
    assert sent == encode(x, "fp8-e4m3").payload.numel() and sent < RAW * 0.6
    assert c.lookup([key]).payload_bytes == [sent]

    (y,) = c.get_many([key])
    assert y.dtype == torch.float16 and tuple(y.shape) == SHAPE
    bounds.assert_within(y, x, bounds.fp8_bound(x))
    assert not torch.equal(y, x)

    (raw,) = c.get_many([key], decode=False)
    assert raw.dtype == torch.uint8 and raw.shape == (sent,)
    assert torch.equal(raw, encode(x, "fp8-e4m3").payload)


def test_kivi_params_out_buffer_and_device(start_node, connect, scheme):
    node = start_node()
    c = connect(node.address)
    x = kv(2)
    (key,) = keys_for(scheme, 1, salt=2)
    c.put_many([key], [x], codec="kivi-int4", codec_params={"group_size": "64"})
    n = encode(x, "kivi-int4", group_size=64).payload.numel()
    assert c.stats().bytes_in == n < RAW // 3
    out = torch.empty(RAW, dtype=torch.uint8)
    (y,) = c.get_many([key], out=[out], device="cpu")
    assert y.data_ptr() != out.data_ptr()          # a new decoded tensor, not a view of out
    assert torch.equal(out[:n], encode(x, "kivi-int4", group_size=64).payload)
    bounds.assert_kivi_within(y, x, 4, 64)


def test_identity_get_into_out_stays_a_view(start_node, connect, scheme):
    node = start_node()
    c = connect(node.address)
    x = kv(3)
    (key,) = keys_for(scheme, 1, salt=3)
    c.put_many([key], [x])
    assert c.stats().bytes_in == RAW
    out = torch.empty(RAW, dtype=torch.uint8)
    (y,) = c.get_many([key], out=[out])
    assert y.data_ptr() == out.data_ptr() and torch.equal(y, x)    # zero-copy as before


@pytest.mark.parametrize("plane", PLANES)
def test_codec_params_not_matching_payload_are_refused(start_node, connect, scheme, plane,
                                                      monkeypatch):
    node = start_node()
    c = connect(node.address, use_data_plane=plane)
    real = aio._encoded

    def lying(data, codec, params):  # payload encoded with G=32, metadata claims G=64
        view, dtype, shape, owner, name, _ = real(data, codec, params)
        return view, dtype, shape, owner, name, {"group_size": "64"}

    monkeypatch.setattr(aio, "_encoded", lying)
    (key,) = keys_for(scheme, 1, salt=4)
    with pytest.raises(InvalidArgument, match="kivi-int4 payload .* must be .* bytes"):
        c.put_many([key], [kv(4)], codec="kivi-int4")
    assert c.lookup([key]).found == [False]
    s = c.stats()
    assert s.puts == 0 and s.rejected >= 1
    monkeypatch.undo()
    assert c.put_many([key], [kv(4)], codec="kivi-int4") == [True]   # the node is still fine


def test_codec_needs_a_tensor(start_node, connect, scheme):
    c = connect(start_node().address)
    (key,) = keys_for(scheme, 1, salt=5)
    with pytest.raises(InvalidArgument, match="encodes tensors"):
        c.put_many([key], [b"abc"], codec="fp8-e4m3")
    with pytest.raises(InvalidArgument, match="without a codec"):
        c.put_many([key], [kv(5)], codec_params={"group_size": "32"})


def test_node_encodes_on_demotion_and_client_decodes_after_restart(start_node, node_config,
                                                                   connect, scheme):
    cfg = node_config(page_bytes=64 << 10, cpu_capacity_bytes=2 * RAW, max_chunk_bytes=RAW,
                      disk_capacity_bytes=16 << 20, tier_codecs={"disk": "kivi-int4"})
    node = start_node(cfg)
    c = connect(node.address)
    keys = keys_for(scheme, 3, salt=6)
    xs = [kv(60 + i) for i in range(3)]
    for k, x in zip(keys, xs, strict=True):               # identity on the wire; CPU holds two
        c.put_many([k], [x])
    assert node.core.manager.counters["disk"].encoded_in == 1
    assert c.lookup(keys[:1]).tiers == ["disk"]
    disk = next(t for t in c.stats().tiers if t.name == "disk")
    assert disk.chunks == 1 and disk.used_bytes < RAW // 3

    (raw,) = c.get_many(keys[:1], decode=False)
    assert raw.dtype == torch.uint8 and raw.numel() < RAW // 3
    (y,) = c.get_many(keys[:1])
    assert y.dtype == torch.float16 and tuple(y.shape) == SHAPE
    bounds.assert_kivi_within(y, xs[0], 4, 32)

    c.close()
    start_node.stop(node)
    node2 = start_node(cfg)
    c2 = connect(node2.address)
    (y2,) = c2.get_many(keys[:1])
    assert torch.equal(y2, y)
