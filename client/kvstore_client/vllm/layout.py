"""vLLM's paged KV layout <-> kvstore chunks, and the checks that refuse layouts we do not know.

Known layout: the CPU attention backend (CPU_ATTN). Each layer's cache is
``[num_blocks, kv_heads, block_size, 2 * head_dim]`` (K in the first head_dim of the last axis,
V in the second), all layers views of one buffer.

A chunk is one tensor ``[layers, kv_heads, chunk_tokens, 2 * head_dim]`` (layout ``LHT2D``):
token-major per head, so it does not depend on vLLM's block size; a chunk's tokens are the blocks
``block_ids`` in order. GPU layouts (FlashAttention/FlashInfer ``[2, blocks, block, heads, dim]``)
would convert to the same chunk layout; they are refused until written and tested on a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kvstore_client.vllm.config import ConnectorConfigError


def check_model(vllm_config: Any, kv_cache_config: Any) -> None:
    """Refuse what the chunk layout cannot describe, before any KV moves."""
    mc = vllm_config.model_config
    if getattr(mc, "use_mla", False):
        raise ConnectorConfigError(
            f"KVStoreConnector: {mc.model} uses MLA (one latent KV vector per token, not K and V "
            "per head); kvstore's vLLM connector supports standard attention only")
    groups = getattr(kv_cache_config, "kv_cache_groups", None) or ()
    if len(groups) > 1:
        raise ConnectorConfigError(
            f"KVStoreConnector: {mc.model} has {len(groups)} KV cache groups (a hybrid model: "
            "sliding-window, Mamba or mixed attention layers); only one full-attention group "
            "is supported")


def ordered_layers(kv_caches: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """Layers in model order (by the index in their name, e.g. model.layers.7.self_attn.attn)."""
    from vllm.model_executor.models.utils import extract_layer_index

    return sorted(kv_caches.items(), key=lambda kv: extract_layer_index(kv[0]))


def check_cpu_caches(layers: Sequence[tuple[str, torch.Tensor]], kv_heads: int, head_dim: int,
                     block_size: int, platform_is_cpu: bool) -> None:
    if not platform_is_cpu:
        raise ConnectorConfigError(
            "KVStoreConnector: only the CPU attention backend's KV layout [blocks, kv_heads, "
            "block_size, 2*head_dim] is supported so far; this platform's backend (e.g. "
            "FlashAttention [2, blocks, block_size, heads, head_dim]) is not")
    if not layers:
        raise ConnectorConfigError("KVStoreConnector: vLLM registered no KV cache layers")
    want = (kv_heads, block_size, 2 * head_dim)
    first = layers[0][1]
    for name, t in layers:
        if t.dim() != 4 or tuple(t.shape[1:]) != want:
            raise ConnectorConfigError(
                f"KVStoreConnector: layer {name} has a KV cache of shape {tuple(t.shape)}; the "
                f"CPU backend layout is [blocks, {want[0]}, {want[1]}, {want[2]}] (kv_heads, "
                "block_size, 2*head_dim): unknown attention backend layout")
        if t.dtype != first.dtype or t.shape[0] != first.shape[0]:
            raise ConnectorConfigError(
                f"KVStoreConnector: layer {name} differs from {layers[0][0]} in dtype or block "
                "count (a hybrid cache?)")


def chunk_shape(layers: Sequence[tuple[str, torch.Tensor]], chunk_tokens: int
                ) -> tuple[int, int, int, int]:
    t = layers[0][1]
    return (len(layers), t.shape[1], chunk_tokens, t.shape[3])


# Copies go through numpy, not torch's copy_: torch splits each copy over its OpenMP threads, and
# on a busy 2-core machine every fork-join stalls whenever another process holds a core (measured
# in vLLM: 0.77 s to write a 2K-token hit into the cache with copy_/index_copy_, ~0.05 s alone).
# numpy copies on the calling thread; each block of each head is one contiguous run.


def gather_chunk(caches: Sequence[torch.Tensor], block_ids: Sequence[int]) -> torch.Tensor:
    """A new [layers, heads, len(block_ids) * block_size, 2D] tensor of those blocks' KV."""
    n, (_, heads, bs, width) = len(block_ids), caches[0].shape
    out = torch.empty((len(caches), heads, n * bs, width), dtype=caches[0].dtype)
    dst = _np(out)
    for layer, cache in enumerate(caches):
        src = _np(cache)
        for j, block in enumerate(block_ids):
            dst[layer, :, j * bs:(j + 1) * bs] = src[block]
    return out


def scatter_layer(cache: torch.Tensor, chunk_layer: torch.Tensor, token_offset: int,
                  block_ids: Sequence[int]) -> None:
    """Write tokens [token_offset, + len(block_ids) * block_size) of one layer of a chunk
    ([heads, tokens, 2D]) into ``block_ids`` of that layer's cache."""
    bs = cache.shape[2]
    dst, src = _np(cache), _np(chunk_layer.to(cache.dtype))
    for j, block in enumerate(block_ids):
        start = token_offset + j * bs
        dst[block] = src[:, start:start + bs]


def _np(t: torch.Tensor) -> Any:
    """A numpy view of a CPU tensor's memory (bf16/fp8 as same-width integers)."""
    if t.device.type != "cpu":
        raise ConnectorConfigError(f"KV tensors must be on the CPU here, got {t.device}")
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    elif t.element_size() == 1:
        t = t.view(torch.uint8)
    return t.numpy()
