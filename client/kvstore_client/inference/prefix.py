"""Exact prefix reuse through the model's own forward (any HF decoder with a DynamicCache).

The loaded chunks cover rows [0, P) exactly (chained keys: a hit on chunk i means the whole
prefix matched), so the cache they form is the one a full prefill would have built: the model
runs only on rows [P, N). P < N always (the planner leaves the last row to compute), so there
are logits to return. With no chunks this is a plain full prefill.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import hf_cache
from .kvcache import reserved_cache
from .loader import LoadSlot

# Rows reserved after the prompt for decoded tokens before appends fall back to torch.cat.
DECODE_HEADROOM_ROWS = 256


def cache_from_chunks(
    model: Any, loaded: Sequence[tuple[LoadSlot, torch.Tensor]], dtype: torch.dtype,
    device: torch.device, capacity_rows: int = 0,
) -> tuple[Any, int]:
    """A DynamicCache of the loaded prefix rows, and its length P (the slots form a run from 0).

    One buffer [layers, 2, 1, heads, max(P, capacity_rows), head_dim] receives each chunk with
    a single copy covering all its layers (asynchronous from pinned memory, converting the
    storage dtype on the way): one launch per chunk, not one per chunk and layer. The cache's
    layers are views of it, and rows P..capacity_rows (the suffix, the first decoded tokens)
    are appended in place (kvcache.py).
    """
    from transformers import DynamicCache

    if not loaded:
        return DynamicCache(config=model.config), 0
    n_layers, _, kv_heads, _, head_dim = loaded[0][1].shape
    reused = loaded[-1][0].rows[1]
    kv = torch.empty((n_layers, 2, 1, kv_heads, max(reused, capacity_rows), head_dim), dtype=dtype,
                     device=device)
    for slot, chunk in loaded:
        a, b = slot.rows
        kv[:, :, 0, :, a:b].copy_(chunk[:, :, :, slot.use_from : slot.use_to], non_blocking=True)
    return reserved_cache(model.config, [(kv[i, 0], kv[i, 1]) for i in range(n_layers)],
                          reused), reused


@torch.no_grad()
def prefix_prefill(
    model: Any, token_ids: torch.Tensor, loaded: Sequence[tuple[LoadSlot, torch.Tensor]],
    dtype: torch.dtype, device: torch.device,
) -> tuple[torch.Tensor, Any, int]:
    """(last-position logits [vocab] fp32, DynamicCache of all N rows, P rows reused)."""
    capacity = len(token_ids) + DECODE_HEADROOM_ROWS
    cache, reused = cache_from_chunks(model, loaded, dtype, device, capacity)
    return forward_rest(model, token_ids, cache, reused, device)


@torch.no_grad()
def forward_rest(
    model: Any, token_ids: torch.Tensor, cache: Any, reused: int, device: torch.device,
) -> tuple[torch.Tensor, Any, int]:
    """The model on rows [reused, N) over a cache holding rows [0, reused)."""
    out = hf_cache.forward(
        model, cache, input_ids=token_ids[reused:][None].to(device), use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[0, -1].float(), hf_cache.cache_of(model, out), reused


@torch.no_grad()
def standalone_prefill(
    model: Any, token_ids: Sequence[int], start_pos: int, device: torch.device
) -> Any:
    """The DynamicCache of ``token_ids`` prefilled on their own at positions from ``start_pos``
    (how a document is cached for blending; its rows attend only to each other)."""
    ids = torch.tensor([list(token_ids)], device=device)
    positions = torch.arange(start_pos, start_pos + ids.shape[1], device=device)[None]
    out = model(input_ids=ids, position_ids=positions, use_cache=True, logits_to_keep=1)
    return hf_cache.cache_of(model, out)


@torch.no_grad()
def greedy_decode(
    model: Any, cache: Any, first_token: int, max_new_tokens: int, eos_ids: Sequence[int],
    device: torch.device,
) -> list[int]:
    """Greedy tokens after the prefill (``first_token`` included), stopping after an EOS."""
    tokens = [first_token]
    while len(tokens) < max_new_tokens and tokens[-1] not in eos_ids:
        out = hf_cache.forward(model, cache, input_ids=torch.tensor([[tokens[-1]]], device=device),
                               use_cache=True)
        tokens.append(int(out.logits[0, -1].argmax()))
    return tokens
