"""Fixtures of the inference-integration tests.

``smollm2`` loads the real model once per session (tests using it are marked ``model``);
``tiny_llama`` builds small random-weight HF models in milliseconds for the tests that need a
real decoder but not real weights (refusal, write-back, fallback plumbing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

SYSTEM = "<|im_start|>system\nAnswer using the documents.<|im_end|>\n<|im_start|>user\n"
QUESTION = "\nQuestion: what do these statements do?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="session")
def texts() -> tuple[str, str]:
    """(system prompt, question) in SmolLM2's chat format."""
    return SYSTEM, QUESTION


@pytest.fixture(scope="session")
def smollm2() -> tuple[Any, Any]:
    from kvstore_client.models.smollm2 import load

    return load()


@pytest.fixture(scope="session")
def docs() -> list[str]:
    """Three short real documents (Python's own docs, PSF licence) of ~100-250 tokens."""
    from pydoc_data.topics import topics

    return [topics["assert"][:900], topics["pass"][:600], topics["del"][:800]]


@pytest.fixture(scope="session")
def make_scheme() -> Callable[..., Any]:
    def build(model_id: str = "test-model", kv_dtype: str = "float32", chunk_tokens: int = 64):
        from kvstore.keys import KeyScheme

        return KeyScheme(model_id, kv_dtype, "LKHTD", chunk_tokens=chunk_tokens)

    return build


def tiny_config(model_type: str = "llama", **overrides: Any) -> Any:
    from transformers import LlamaConfig, MistralConfig

    cls = {"llama": LlamaConfig, "mistral": MistralConfig}[model_type]
    fields = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  rope_theta=10000.0)
    fields.update(overrides)
    return cls(**fields)


@pytest.fixture
def tiny_llama() -> Callable[..., Any]:
    def build(model_type: str = "llama", seed: int = 0, **overrides: Any) -> Any:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides))
        return model.float().eval()

    return build


@pytest.fixture(scope="session")
def token_segments() -> Callable[..., list[Any]]:
    """Random token-id segments; the last one is the (uncached) question."""

    def build(lengths: list[int], seed: int = 0, vocab: int = 97) -> list[Any]:
        from kvstore_client.inference import Segment

        gen = torch.Generator().manual_seed(seed)
        segs = []
        for i, n in enumerate(lengths):
            ids = torch.randint(1, vocab, (n,), generator=gen).tolist()
            segs.append(Segment.tokens(ids, cacheable=i < len(lengths) - 1))
        return segs

    return build
