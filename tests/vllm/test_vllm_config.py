"""The connector's settings, key scheme and layout code, with vLLM's real config objects."""

from __future__ import annotations

import pytest
import torch

from kvstore.errors import SchemeMismatch
from kvstore.procs import start_node
from kvstore_client import KVStoreClient
from kvstore_client.vllm.config import (
    ConnectorConfig,
    ConnectorConfigError,
    blocks_per_chunk,
    scheme_for,
)
from kvstore_client.vllm.layout import check_cpu_caches, gather_chunk, scatter_layer

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def vllm_config(model_dir):
    """vLLM's own VllmConfig for SmolLM2 with the connector configured (no engine started)."""
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=str(model_dir), dtype="float32", max_model_len=4096,
                      kv_transfer_config={
                          "kv_connector": "KVStoreConnector",
                          "kv_connector_module_path": "kvstore_client.vllm.connector",
                          "kv_role": "kv_both",
                          "kv_connector_extra_config": {"address": "127.0.0.1:1",
                                                        "tenant": "t9"}},
                      ).create_engine_config()


def test_scheme_comes_from_vllms_config(vllm_config):
    extra = vllm_config.kv_transfer_config.kv_connector_extra_config
    scheme = scheme_for(ConnectorConfig.from_extra(extra), vllm_config, 0)
    assert scheme.model_id == "SmolLM2-135M-Instruct-hf@"   # the directory's name, not its path
    assert scheme.kv_dtype == "float32"
    assert scheme.kv_layout == "vllm-LHT2D/tp0of1"
    assert scheme.chunk_tokens == 256 and scheme.tenant == "t9"
    with pytest.raises(ConnectorConfigError, match="rank 1 outside"):
        scheme_for(ConnectorConfig.from_extra(extra), vllm_config, 1)


def test_node_refuses_a_scheme_it_does_not_serve_naming_the_field(vllm_config, tmp_path):
    extra = vllm_config.kv_transfer_config.kv_connector_extra_config
    scheme = scheme_for(ConnectorConfig.from_extra(extra), vllm_config, 0)
    node = start_node(str(tmp_path / "node"), ["--model", f"{scheme.model_id}:float16"])
    try:
        with pytest.raises(SchemeMismatch, match="kv_dtype differs.*float32"):
            KVStoreClient(node.address, scheme).close()
    finally:
        node.stop()


def test_settings_are_checked():
    with pytest.raises(ConnectorConfigError, match="exactly one of"):
        ConnectorConfig.from_extra({})
    with pytest.raises(ConnectorConfigError, match="unknown .* key"):
        ConnectorConfig.from_extra({"address": "127.0.0.1:1", "adress": "x"})
    with pytest.raises(ConnectorConfigError, match="host:port"):
        ConnectorConfig.from_extra({"members": "a,b"})
    with pytest.raises(ConnectorConfigError, match="tls_cert and tls_key"):
        ConnectorConfig.from_extra({"address": "127.0.0.1:1", "tls_cert": "c.pem"})
    cfg = ConnectorConfig.from_extra({"members": "127.0.0.1:1,127.0.0.1:2", "replication": 1})
    assert cfg.members == ("127.0.0.1:1", "127.0.0.1:2")


def test_block_size_must_tile_the_chunk():
    assert blocks_per_chunk(256, 128) == 2 and blocks_per_chunk(256, 16) == 16
    for bad in (96, 512):
        with pytest.raises(ConnectorConfigError, match="whole number of blocks"):
            blocks_per_chunk(256, bad)


def test_unknown_cache_layouts_are_refused():
    good = [("model.layers.0.self_attn.attn", torch.zeros(4, 3, 128, 128))]
    check_cpu_caches(good, kv_heads=3, head_dim=64, block_size=128, platform_is_cpu=True)
    with pytest.raises(ConnectorConfigError, match="only the CPU attention backend"):
        check_cpu_caches(good, 3, 64, 128, platform_is_cpu=False)
    flash = [("model.layers.0.self_attn.attn", torch.zeros(2, 4, 128, 3, 64))]
    with pytest.raises(ConnectorConfigError, match="unknown attention backend layout"):
        check_cpu_caches(flash, 3, 64, 128, platform_is_cpu=True)


def test_chunks_round_trip_through_other_blocks_and_block_sizes():
    """Gathered from blocks (5, 2) of 128 tokens, scattered into blocks (1, 7): same KV; and a
    chunk is block-size independent (read back through 64-token blocks)."""
    torch.manual_seed(0)
    layers, heads, width = 3, 2, 8
    src = [torch.randn(8, heads, 128, width) for _ in range(layers)]
    chunk = gather_chunk(src, [5, 2])
    assert chunk.shape == (layers, heads, 256, width)
    dst = [torch.zeros(8, heads, 128, width) for _ in range(layers)]
    small = [torch.zeros(8, heads, 64, width) for _ in range(layers)]
    for layer in range(layers):
        scatter_layer(dst[layer], chunk[layer], 0, [1, 7])
        scatter_layer(small[layer], chunk[layer], 128, [3, 0])  # tokens 128..255 only
        assert torch.equal(dst[layer][1], src[layer][5]) and torch.equal(dst[layer][7],
                                                                        src[layer][2])
        assert torch.equal(small[layer][3], src[layer][2][:, :64])
        assert torch.equal(small[layer][0], src[layer][2][:, 64:])
    assert torch.equal(gather_chunk(dst, [1, 7]), chunk)
