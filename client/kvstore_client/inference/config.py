"""EngineConfig: the engine's few settings, validated once (raises, never "fixes" a value)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

WRITE_BACK = ("all", "prefix", "content", "none")
SELECTIONS = ("deviation", "deviation_attention", "random")
DEVIATIONS = ("value", "key")
BACKENDS = ("auto", "triton", "torch")
KV_DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class EngineConfig:
    """Settings of a CacheEngine.

    check_layer: the layer whose K/V deviation picks the tokens to recompute; layers below it
        recompute every non-exact token (CacheBlend default: 1).
    recompute_ratio: share r of the reused (content) tokens recomputed after the check layer;
        uncached tokens are always recomputed (0 = naive reuse, 1 = full recompute).
    selection: "deviation_attention" (default): CacheBlend's deviation weighted by how much the
        question (the last uncached rows) attends to each token at that layer, a query-aware
        variant of ours; "deviation": CacheBlend's ranking as published; "random": the control.
        On `kvstore bench blend` (36 prompts, r = 0.15) the weighted ranking reached teacher-
        forced top-1 0.927 vs 0.906 and ~0.56x the first-token KL of plain deviation, at the
        same TTFT.
    deviation: compare "value" (PAPERS.md) or "key" (after RoPE, as LMCache does).
    gradual: CacheBlend's gradual filtering: multipliers m (descending, >= 1) of the share kept
        at the check layer and the layers after it before reaching recompute_ratio; () selects
        once at the check layer. Default (2, 1.5): 2r at layer 1, 1.5r at layer 2, r after; on
        the bench's prompts it lowered first-token KL by ~20% for ~1.5% more compute.
    kv_dtype: storage dtype of chunks. float16 by default: the same bytes as bfloat16 with 8x
        finer mantissa (ENVIRONMENT.md: fp16 storage moves SmolLM2's logits by ~6e-3, bf16 by
        ~6e-2), and KV magnitudes are far below fp16's range. Use bfloat16 for bf16 models.
    fetch_timeout_s: a chunk not fetched within this time of the request's start is recomputed.
    fetch_batch_chunks: chunks per get_many call (batches run in parallel on fetch_workers).
    lookahead_layers: layers the loader may prepare ahead of the compute (device memory bound).
    write_back: which newly computed chunks go back to the store in the background.
    kernel_backend: kvstore_kernels backend ("auto": triton on CUDA, torch on CPU).
    max_pending_writes: write-back jobs queued before new ones are dropped.
    seed: seed of the random selection control.
    """

    check_layer: int = 1
    recompute_ratio: float = 0.15
    selection: str = "deviation_attention"
    deviation: str = "value"
    gradual: tuple[float, ...] = (2.0, 1.5)
    kv_dtype: str = "float16"
    fetch_timeout_s: float = 5.0
    fetch_batch_chunks: int = 16
    fetch_workers: int = 2
    lookahead_layers: int = 2
    write_back: str = "all"
    kernel_backend: str = "auto"
    max_pending_writes: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.check_layer >= 0, f"check_layer must be >= 0, got {self.check_layer}")
        _check(0.0 <= self.recompute_ratio <= 1.0,
               f"recompute_ratio must be in [0, 1], got {self.recompute_ratio}")
        _choice("selection", self.selection, SELECTIONS)
        _choice("deviation", self.deviation, DEVIATIONS)
        _check(all(m >= 1 for m in self.gradual)
               and list(self.gradual) == sorted(self.gradual, reverse=True),
               f"gradual multipliers must be >= 1 and descending, got {self.gradual}")
        _choice("kv_dtype", self.kv_dtype, KV_DTYPES)
        _choice("write_back", self.write_back, WRITE_BACK)
        _choice("kernel_backend", self.kernel_backend, BACKENDS)
        _check(self.fetch_timeout_s > 0, f"fetch_timeout_s must be > 0, got {self.fetch_timeout_s}")
        for name in ("fetch_batch_chunks", "fetch_workers", "lookahead_layers",
                     "max_pending_writes"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1,
                   f"{name} must be an int >= 1, got {value}")

    def with_overrides(self, **overrides: Any) -> EngineConfig:
        """A copy with the non-None overrides applied (validated again)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **changes) if changes else self


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    _check(value in allowed, f"{name} must be one of {allowed}, got {value!r}")
