"""Real SmolLM2 KV and prefix-reuse quality, for `kvstore bench codecs` and tests/codecs.

Prompts are help texts from Python's own `pydoc_data.topics` (PSF license), tokenized and cut into
a prefix (whose KV is cached, chunked and round-tripped through a codec) and a continuation that the
model processes on top of the rebuilt cache. Quality compares that against the uncompressed fp32
cache:
  - first-token KL: KL(uncompressed || codec) of the next-token distribution after the continuation;
  - teacher-forced top-1 agreement and mean KL over the N tokens that the uncompressed run
    generates greedily (the codec run is fed the same tokens; a position agrees when its argmax is
    the token the uncompressed run chose).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from kvstore_client.inference import hf_cache


@dataclass(frozen=True)
class Prompt:
    name: str
    prefix_ids: torch.Tensor  # [1, P]
    cont_ids: torch.Tensor  # [1, S]


@dataclass(frozen=True)
class Reference:
    """What the uncompressed cache gives for one prompt."""

    greedy_ids: torch.Tensor  # [N]
    logprobs: torch.Tensor  # [N, vocab] teacher-forced, float64


def load_prompts(tokenizer: Any, n: int, prefix_tokens: int, cont_tokens: int) -> list[Prompt]:
    """The first `n` topics (by name) long enough for prefix + continuation."""
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        ids = tokenizer(topics[name], return_tensors="pt").input_ids
        if ids.shape[1] >= prefix_tokens + cont_tokens:
            out.append(Prompt(name, ids[:, :prefix_tokens],
                              ids[:, prefix_tokens : prefix_tokens + cont_tokens]))
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} pydoc topics have {prefix_tokens + cont_tokens} tokens; "
                     f"asked for {n} prompts")


@torch.no_grad()
def prefill_kv(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """The KV cache of `ids` as one LKHTD tensor [L, 2, H, T, D] (fp32, CPU)."""
    cache = hf_cache.cache_of(model, model(ids, use_cache=True))
    return torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers])


def to_cache(kv: torch.Tensor, config: Any) -> Any:
    """A fresh transformers DynamicCache holding an LKHTD tensor (batch 1, fp32)."""
    from transformers import DynamicCache

    kv = kv.float()
    return DynamicCache(ddp_cache_data=[(kv[i, 0][None], kv[i, 1][None])
                                        for i in range(kv.shape[0])], config=config)


def split_chunks(kv: torch.Tensor, chunk_tokens: int) -> list[torch.Tensor]:
    """Contiguous chunks of at most chunk_tokens tokens each, as a store would hold them."""
    return [c.contiguous() for c in kv.split(chunk_tokens, dim=3)]


def round_trip(kv: torch.Tensor, chunk_tokens: int,
               codec_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """kv with every chunk replaced by codec_fn(chunk) (encode + decode)."""
    return torch.cat([codec_fn(c) for c in split_chunks(kv, chunk_tokens)], dim=3)


@torch.no_grad()
def reference(model: Any, kv: torch.Tensor, cont_ids: torch.Tensor, n_tokens: int) -> Reference:
    """Greedy tokens from the uncompressed cache, and its teacher-forced log-probs on them."""
    cache = to_cache(kv, model.config)
    logits = hf_cache.forward(model, cache, cont_ids, use_cache=True).logits[0, -1]
    tokens = []
    for _ in range(n_tokens):
        nxt = logits.argmax()
        tokens.append(int(nxt))
        logits = hf_cache.forward(model, cache, nxt.view(1, 1), use_cache=True).logits[0, -1]
    greedy = torch.tensor(tokens)
    return Reference(greedy, teacher_forced(model, kv, cont_ids, greedy))


@torch.no_grad()
def teacher_forced(model: Any, kv: torch.Tensor, cont_ids: torch.Tensor,
                   gen_ids: torch.Tensor) -> torch.Tensor:
    """[N, vocab] float64 log-probs predicting gen_ids[i] after cont_ids + gen_ids[:i]."""
    ids = torch.cat([cont_ids[0], gen_ids[:-1]])[None]
    logits = hf_cache.forward(model, to_cache(kv, model.config), ids, use_cache=True).logits[0]
    start = cont_ids.shape[1] - 1
    return torch.log_softmax(logits[start : start + gen_ids.numel()].double(), dim=-1)


def compare(ref: Reference, logprobs: torch.Tensor) -> dict[str, float]:
    """first_kl, mean_kl (KL(ref || codec) in nats), top1 agreement and the number of scored
    positions for one prompt."""
    kl = (ref.logprobs.exp() * (ref.logprobs - logprobs)).sum(dim=-1).clamp_min(0.0)
    agree = (logprobs.argmax(dim=-1) == ref.greedy_ids).double()
    return {"first_kl": float(kl[0]), "mean_kl": float(kl.mean()), "top1": float(agree.mean()),
            "positions": agree.numel()}
