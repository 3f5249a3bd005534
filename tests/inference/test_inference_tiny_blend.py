"""Blend invariants on a tiny random Llama (fast), and the Triton kernels in the real loop."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

from kvstore_client.inference import CacheEngine, EngineConfig, InMemoryChunkStore


def _run(model, prompt, make_scheme, start_pos=0, **kw):
    with CacheEngine(model, None, InMemoryChunkStore(), make_scheme(),
                     EngineConfig(kv_dtype="float32")) as engine:
        engine.cache_segments(prompt, start_pos=start_pos)
        return engine.prefill(prompt, "blend", write_back=False, **kw)


def test_r1_equals_hf_forward(tiny_llama, token_segments, make_scheme):
    model = tiny_llama()
    prompt = token_segments([40, 70, 30, 9])
    out = _run(model, prompt, make_scheme, recompute_ratio=1.0)
    ids = torch.tensor([out.layout.token_ids])
    with torch.no_grad():
        ref = model(ids).logits[0, -1]
    assert torch.allclose(out.logits, ref, atol=1e-5)


def test_blend_does_not_depend_on_where_chunks_were_computed(tiny_llama, token_segments,
                                                            make_scheme):
    model = tiny_llama()
    prompt = token_segments([40, 70, 30, 9])
    a = _run(model, prompt, make_scheme, start_pos=0)
    b = _run(model, prompt, make_scheme, start_pos=1234)
    assert torch.allclose(a.logits, b.logits, atol=1e-4)
    assert 0 < a.hits.recomputed_tokens < a.hits.prompt_tokens


def test_selection_picks_a_share_r_of_the_reused_rows(tiny_llama, token_segments, make_scheme):
    model = tiny_llama()
    prompt = token_segments([40, 70, 30, 9])  # 140 cached rows, 9 uncached
    for ratio, selection in ((0.0, "deviation"), (0.3, "deviation"), (0.3, "random")):
        out = _run(model, prompt, make_scheme, recompute_ratio=ratio, selection=selection)
        assert out.hits.content_tokens == 140
        assert out.hits.recomputed_tokens == 9 + round(ratio * 140)


def test_triton_kernels_in_the_blend_loop_match_torch(tmp_path):
    """The loop with backend="triton" (interpreted on CPU) gives the torch backend's result."""
    script = textwrap.dedent("""
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
        from kvstore.keys import KeyScheme
        from kvstore_client.inference import CacheEngine, EngineConfig, InMemoryChunkStore
        from kvstore_client.inference import Segment
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
        model = LlamaForCausalLM(cfg).eval()
        prompt = [Segment.tokens(range(1, 21)), Segment.tokens(range(5, 30)),
                  Segment.tokens([3, 4, 5], cacheable=False)]
        outs = []
        for backend in ("triton", "torch"):
            config = EngineConfig(kv_dtype="float32", kernel_backend=backend)
            scheme = KeyScheme("tiny", "float32", "LKHTD", chunk_tokens=16)
            with CacheEngine(model, None, InMemoryChunkStore(), scheme, config) as engine:
                engine.cache_segments(prompt, start_pos=7)
                outs.append(engine.prefill(prompt, "blend", recompute_ratio=0.3,
                                           write_back=False).logits)
        assert torch.allclose(outs[0], outs[1], atol=1e-5), (outs[0] - outs[1]).abs().max()
        print("ok")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
