"""The engine over a real kvstore node and the real sync client (real sockets), tiny model."""

from __future__ import annotations

import torch

from kvstore.config import ModelSpec
from kvstore_client.inference import CacheEngine, ChunkStore, EngineConfig, InMemoryChunkStore


def test_blend_and_prefix_through_a_real_node(start_node, connect, tiny_llama, token_segments,
                                              make_scheme):
    scheme = make_scheme(kv_dtype="float16")
    node = start_node(models=(ModelSpec(scheme.model_id, "float16", "LKHTD", 64),))
    client = connect(node.address, scheme)
    assert isinstance(client, ChunkStore)
    model = tiny_llama()
    prompt = token_segments([70, 90, 50, 12])
    config = EngineConfig(kv_dtype="float16")
    results = {}
    for name, store in (("node", client), ("memory", InMemoryChunkStore())):
        with CacheEngine(model, None, store, scheme, config) as engine:
            assert engine.cache_segments(prompt) == 5
            blend = engine.prefill(prompt, "blend", write_back=False)
            engine.prefill(prompt, "full")  # writes the chained chunks back
            assert engine.flush(20) and engine.writer.stats.chunks_failed == 0
            prefix = engine.prefill(prompt, "prefix", write_back=False)
        results[name] = (blend, prefix)
    node_blend, node_prefix = results["node"]
    mem_blend, mem_prefix = results["memory"]
    assert node_blend.hits.content_tokens == 210 and node_blend.hits.fetch.loaded == 5
    assert node_prefix.hits.exact_tokens == 192
    assert torch.equal(node_blend.logits, mem_blend.logits)
    assert torch.equal(node_prefix.logits, mem_prefix.logits)
