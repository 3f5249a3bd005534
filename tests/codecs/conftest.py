"""Real SmolLM2 KV, loaded once per test session (model load ~15 s, prefill < 1 s)."""

import pytest
import torch

PROMPT_TOKENS = 200


@pytest.fixture(scope="session")
def smollm2():
    from kvstore_client.models import smollm2

    return smollm2.load()


@pytest.fixture(scope="session")
def real_kv(smollm2) -> torch.Tensor:
    """[30, 2, 3, 200, 64] fp32 KV of 200 tokens of a pydoc help text (PSF license)."""
    from kvstore.bench import codec_quality as cq

    model, tokenizer = smollm2
    prompt = cq.load_prompts(tokenizer, 1, PROMPT_TOKENS, 0)[0]
    kv = cq.prefill_kv(model, prompt.prefix_ids)
    assert kv.shape == (30, 2, 3, PROMPT_TOKENS, 64)
    return kv
