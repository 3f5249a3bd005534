"""The three CacheBlend invariants with the real SmolLM2 (shared/PAPERS.md section 2).

fp32 storage where a test checks exactness, so only the arithmetic order differs (~1e-5).
"""

from __future__ import annotations

import pytest
import torch

from kvstore_client.inference import (
    CacheEngine,
    EngineConfig,
    InMemoryChunkStore,
    Segment,
    hf_cache,
)
from kvstore_client.models.smollm2 import MODEL_ID

pytestmark = pytest.mark.model

EXACT_ATOL = 2e-4  # measured ~4e-5 (fp32, different op order than HF)


def _engine(smollm2, make_scheme, store, kv_dtype="float32", chunk_tokens=64, **cfg):
    model, tok = smollm2
    scheme = make_scheme(MODEL_ID, kv_dtype, chunk_tokens)
    return CacheEngine(model, tok, store, scheme, EngineConfig(kv_dtype=kv_dtype, **cfg))


@pytest.fixture(scope="module")
def prompt(docs, texts):
    system, question = texts
    return [Segment.doc(system), *(Segment.doc(d) for d in docs), Segment.query(question)]


@pytest.fixture(scope="module")
def hf_full(smollm2, prompt, make_scheme):
    """HF's own forward over the whole prompt: logits and the DynamicCache."""
    model, tok = smollm2
    engine = _engine(smollm2, make_scheme, InMemoryChunkStore())
    ids = torch.tensor([engine.layout(prompt).token_ids])
    with torch.no_grad():
        out = model(ids, use_cache=True)
    engine.close()
    return out.logits[0, -1].float(), hf_cache.cache_of(model, out)


def _kl(ref_logits, logits):
    p = torch.log_softmax(ref_logits, -1)
    q = torch.log_softmax(logits, -1)
    return float((p.exp() * (p - q)).sum())


def test_full_mode_is_hf_prefill(smollm2, make_scheme, prompt, hf_full):
    with _engine(smollm2, make_scheme, InMemoryChunkStore()) as engine:
        out = engine.prefill(prompt, "full", write_back=False)
    assert torch.allclose(out.logits, hf_full[0], atol=EXACT_ATOL)


def test_r1_reproduces_full_prefill(smollm2, make_scheme, prompt, hf_full):
    with _engine(smollm2, make_scheme, InMemoryChunkStore()) as engine:
        engine.cache_segments(prompt)
        out = engine.prefill(prompt, "blend", recompute_ratio=1.0, write_back=False)
    assert out.mode == "blend" and out.hits.content_tokens > 0
    assert out.hits.recomputed_tokens == out.hits.prompt_tokens
    assert (out.logits - hf_full[0]).abs().max() < EXACT_ATOL
    for mine, ref in zip(out.cache.layers, hf_full[1].layers, strict=True):
        assert torch.allclose(mine.keys, ref.keys, atol=1e-3)
        assert torch.allclose(mine.values, ref.values, atol=1e-3)


def test_single_chunk_at_zero_with_r0_is_exact_prefix_reuse(smollm2, make_scheme, docs, texts):
    model, tok = smollm2
    chunk = tok(docs[0], add_special_tokens=False)["input_ids"][:64]
    prompt = [Segment.tokens(chunk), Segment.query(texts[1])]
    prefix_store, blend_store = InMemoryChunkStore(), InMemoryChunkStore()
    with _engine(smollm2, make_scheme, prefix_store, write_back="prefix") as engine:
        engine.prefill(prompt, "full")
        assert engine.flush(30)
        reused = engine.prefill(prompt, "prefix", write_back=False)
    assert reused.mode == "prefix" and reused.hits.exact_tokens == 64
    with _engine(smollm2, make_scheme, blend_store) as engine:
        engine.cache_segments(prompt)
        blended = engine.prefill(prompt, "blend", recompute_ratio=0.0, write_back=False)
    assert blended.hits.content_tokens == 64 and blended.hits.exact_tokens == 0
    assert (blended.logits - reused.logits).abs().max() < EXACT_ATOL


def test_moving_a_chunks_original_position_does_not_change_the_blend(
    smollm2, make_scheme, prompt
):
    results = []
    for start_pos in (0, 517):
        with _engine(smollm2, make_scheme, InMemoryChunkStore()) as engine:
            engine.cache_segments(prompt, start_pos=start_pos)
            results.append(engine.prefill(prompt, "blend", write_back=False))
    a, b = results
    assert a.hits.recomputed_tokens == b.hits.recomputed_tokens
    assert (a.logits - b.logits).abs().max() < 1e-3


def test_recompute_restores_quality_over_naive_reuse(smollm2, make_scheme, prompt, hf_full):
    """Default fp16 storage: blending at r=0.15 is much closer to full prefill than r=0."""
    with _engine(smollm2, make_scheme, InMemoryChunkStore(), kv_dtype="float16") as engine:
        engine.cache_segments(prompt)
        naive = engine.prefill(prompt, "blend", recompute_ratio=0.0, check_layer=0,
                               write_back=False)
        blend = engine.prefill(prompt, "blend", write_back=False)
    assert _kl(hf_full[0], blend.logits) < 0.5 * _kl(hf_full[0], naive.logits)


def test_generate_auto_blends_then_decodes(smollm2, make_scheme, prompt, hf_full):
    with _engine(smollm2, make_scheme, InMemoryChunkStore(), kv_dtype="float16") as engine:
        engine.cache_segments(prompt[1:])  # documents only: the system prompt misses
        result = engine.generate(prompt, max_new_tokens=6)
        assert engine.flush(30)
        assert engine.writer.stats.chunks_written > 0  # the system prompt's chunk went back
    assert result.mode == "blend"
    assert 1 <= len(result.token_ids) <= 6 and isinstance(result.text, str)
    assert result.token_ids[0] == int(hf_full[0].argmax())
    assert result.ttft_s > 0 and result.timings.recompute_s > 0
    summary = result.summary()
    assert summary["hits"]["content_tokens"] > 0
