"""Blending is refused where RoPE handling is not known to be right; prefix reuse still works."""

from __future__ import annotations

import pytest
import torch

from kvstore_client.inference import (
    BlendUnsupported,
    CacheEngine,
    EngineConfig,
    InMemoryChunkStore,
    blend_unsupported_reason,
)

UNSUPPORTED = {
    "rope-scaling": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
                     "rope_type 'linear'"),
    "mistral": ("mistral", {}, "model_type 'mistral'"),
}


def test_default_llama_blends(tiny_llama):
    assert blend_unsupported_reason(tiny_llama()) is None


def test_partial_rotary_is_refused(tiny_llama):
    model = tiny_llama()
    model.config.partial_rotary_factor = 0.5
    assert "partial_rotary_factor=0.5" in blend_unsupported_reason(model)


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_unsupported_model_refuses_blend_but_reuses_prefix(
    tiny_llama, token_segments, make_scheme, case
):
    model_type, overrides, reason = UNSUPPORTED[case]
    model = tiny_llama(model_type, **overrides)
    assert reason in blend_unsupported_reason(model)
    prompt = token_segments([70, 90, 12])
    store = InMemoryChunkStore()
    config = EngineConfig(kv_dtype="float32")
    with CacheEngine(model, None, store, make_scheme(), config) as engine:
        with pytest.raises(BlendUnsupported, match="prefix reuse still works"):
            engine.prefill(prompt, "blend")
        with pytest.raises(BlendUnsupported):
            engine.cache_segments(prompt)
        full = engine.prefill(prompt, "full")  # writes the chained chunks back
        assert engine.flush(10)
        assert len(store) == 160 // 64  # prefix chunks only: content chunks need blending
        auto = engine.prefill(prompt, "auto", write_back=False)
    assert auto.mode == "prefix" and auto.blend_refused == blend_unsupported_reason(model)
    assert auto.hits.exact_tokens == 128
    assert torch.allclose(auto.logits, full.logits, atol=1e-4)
