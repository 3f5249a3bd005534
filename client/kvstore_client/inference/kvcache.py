"""HF caches over preallocated buffers: DynamicCache layers that append in place.

Why: transformers' DynamicLayer appends with torch.cat, which copies a layer's whole cache on
every call. Building a DynamicCache from loaded chunks that way copies every reused byte once
more, and the first forward over the prompt's suffix copies it again (at 16K tokens of a
Llama-3-8B shape that is 2 GiB each time, about 13 ms of an H100, measured with
``kvstore.bench.blend_gpu --profile``). A ReservedLayer's keys/values are views of buffers with
spare rows; new rows are written into the spare rows. When those run out, or something replaced
the tensors (batch reordering, offloading), it falls back to DynamicLayer's cat, so it is never
wrong, only sometimes not faster.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class ReservedLayer(DynamicLayer):
    """A DynamicLayer whose first ``length`` rows are already in ``k_buf``/``v_buf``
    ([batch, heads, capacity, head_dim]); appends go to rows ``length..capacity``."""

    def __init__(self, k_buf: torch.Tensor, v_buf: torch.Tensor, length: int) -> None:
        super().__init__()
        self._k_buf: torch.Tensor | None = k_buf
        self._v_buf: torch.Tensor | None = v_buf
        self.dtype, self.device = k_buf.dtype, k_buf.device
        self.keys, self.values = k_buf[..., :length, :], v_buf[..., :length, :]
        self.is_initialized = True

    def _appendable(self, n_new: int) -> bool:
        k, v = self._k_buf, self._v_buf
        if k is None or v is None:
            return False
        # keys/values must still be the leading rows of the buffers (not replaced or reordered)
        return (self.keys.data_ptr() == k.data_ptr() and self.values.data_ptr() == v.data_ptr()
                and self.keys.stride() == k.stride() and self.values.stride() == v.stride()
                and self.keys.shape[:-2] == k.shape[:-2]
                and self.keys.shape[-2] + n_new <= k.shape[-2])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        n, m = self.keys.shape[-2], key_states.shape[-2]
        if not self._appendable(m) or key_states.shape[:-2] != self.keys.shape[:-2]:
            self._k_buf = self._v_buf = None  # from now on a plain DynamicLayer
            return super().update(key_states, value_states, *args, **kwargs)
        assert self._k_buf is not None and self._v_buf is not None  # _appendable checked it
        self._k_buf[..., n:n + m, :].copy_(key_states)
        self._v_buf[..., n:n + m, :].copy_(value_states)
        self.keys = self._k_buf[..., :n + m, :]
        self.values = self._v_buf[..., :n + m, :]
        return self.keys, self.values


def reserved_cache(config: Any, layers: Sequence[tuple[torch.Tensor, torch.Tensor]],
                   length: int) -> DynamicCache:
    """A DynamicCache holding rows [0, length) of each layer's (k_buf, v_buf), without copying
    them. Models whose cache layers are not plain DynamicLayers (sliding windows, ...) get the
    ordinary DynamicCache (one copy)."""
    cache = DynamicCache(config=config)
    if (len(cache.layers) != len(layers)
            or any(type(layer) is not DynamicLayer for layer in cache.layers)):
        return DynamicCache(ddp_cache_data=[(k[..., :length, :], v[..., :length, :])
                                            for k, v in layers], config=config)
    cache.layers = [ReservedLayer(k, v, length) for k, v in layers]
    return cache
