"""The cache argument across transformers versions, and no deprecation warning from our calls.

transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns until 5.40); the
engine must use whichever name the installed version's models take, so that none of our calls
raises a FutureWarning or DeprecationWarning (issue 13).
"""

from __future__ import annotations

import inspect
import warnings

import torch

from kvstore_client.inference import CacheEngine, EngineConfig, InMemoryChunkStore, hf_cache


def test_cache_name_follows_the_installed_transformers(tiny_llama):
    model = tiny_llama()
    params = inspect.signature(type(model).forward).parameters
    name = hf_cache._cache_name(type(model))
    assert name in params and name in ("cache", "past_key_values")
    ids = torch.arange(3, 13)[None]
    with torch.no_grad():
        first = model(input_ids=ids[:, :6], use_cache=True)
        cache = hf_cache.cache_of(model, first)
        assert cache.get_seq_length() == 6
        step = hf_cache.forward(model, cache, input_ids=ids[:, 6:], use_cache=True)
        whole = model(input_ids=ids).logits[0, -1]
    assert hf_cache.cache_of(model, step).get_seq_length() == 10
    assert torch.allclose(step.logits[0, -1], whole, atol=1e-5)


def test_engine_paths_raise_no_deprecation_warning(tiny_llama, token_segments, make_scheme):
    """full prefill, prefix reuse, blending and decoding with every warning made an error."""
    model = tiny_llama()
    prompt = token_segments([64, 64, 20])
    with CacheEngine(model, None, InMemoryChunkStore(), make_scheme(),
                     EngineConfig(kv_dtype="float32")) as engine, warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        engine.cache_segments(prompt[:-1])
        full = engine.prefill(prompt, "full")
        engine.flush(30)
        prefix = engine.prefill(prompt, "prefix", write_back=False)
        reordered = [prompt[1], prompt[0], prompt[2]]  # content chunks at other positions
        blend = engine.prefill(reordered, "blend", write_back=False)
        result = engine.generate(prompt, max_new_tokens=4)
    assert prefix.hits.exact_tokens == 128
    assert torch.allclose(prefix.logits, full.logits, atol=1e-4)
    assert blend.hits.content_tokens > 0 and len(result.token_ids) >= 1
