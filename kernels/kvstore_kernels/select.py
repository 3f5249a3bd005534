"""CacheBlend token selection: per-token KV deviation and its top-k (PAPERS.md section 2, step 4).

Algorithm. At the check layer CacheBlend compares the freshly computed K or V (`new`) with the
loaded, re-rotated one (`old`) and recomputes the tokens that deviate most:
    score[t] = sum over b, h, d of (new[b, h, t, d] - old[b, h, t, d])^2, accumulated in fp32.
The Triton kernel computes the scores (one reduction over B*H*D per token); the top-k itself uses
torch.topk on the [T] score vector, which is tiny next to the [B, H, T, D] inputs.

Memory layout. new and old are [B, H, T, D] (or [H, T, D]) fp16/bf16/fp32 with any strides.
Grid: one program per block of BLOCK_T tokens. It walks b, h and D in tiles of
[BLOCK_T, BLOCK_D] (each row a contiguous run of D elements in HF layout), keeps an fp32
[BLOCK_T, BLOCK_D] accumulator and writes BLOCK_T scores. No atomics: the summation order is
fixed, so scores are deterministic run to run.
"""

from __future__ import annotations

import torch

from kvstore_kernels._backend import select_backend, tl, triton
from kvstore_kernels._checks import (
    FLOAT_DTYPES,
    as_bhtd,
    check_device,
    check_dtype,
    check_like,
    check_vector,
)
from kvstore_kernels.errors import KernelInputError

_BLOCK_T = 16
_MAX_BLOCK_D = 128


@triton.jit
def _deviation_kernel(
    new_ptr, old_ptr, scores_ptr,
    B, H, T, D,
    stride_nb, stride_nh, stride_nt, stride_nd,
    stride_ob, stride_oh, stride_ot, stride_od,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    offs_t64 = offs_t.to(tl.int64)
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for bh in range(0, B * H):
        b = (bh // H).to(tl.int64)
        h = (bh % H).to(tl.int64)
        n_rows = new_ptr + b * stride_nb + h * stride_nh + offs_t64[:, None] * stride_nt
        o_rows = old_ptr + b * stride_ob + h * stride_oh + offs_t64[:, None] * stride_ot
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask = mask_t[:, None] & (offs_d < D)[None, :]
            x = tl.load(n_rows + offs_d[None, :] * stride_nd, mask=mask, other=0.0)
            y = tl.load(o_rows + offs_d[None, :] * stride_od, mask=mask, other=0.0)
            diff = x.to(tl.float32) - y.to(tl.float32)
            acc += diff * diff
    tl.store(scores_ptr + offs_t, tl.sum(acc, axis=1), mask=mask_t)


def deviation_scores(new: torch.Tensor, old: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Per-token squared L2 deviation summed over B, H, D: fp32 [T] on the inputs' device."""
    new4, old4 = as_bhtd(new, "new"), as_bhtd(old, "old")
    check_dtype(new, "new", FLOAT_DTYPES)
    check_like(old, "old", new, "new")
    chosen = select_backend(backend, new.device, _deviation_kernel)
    if chosen == "torch":
        return deviation_scores_ref(new, old)

    B, H, T, D = new4.shape
    scores = torch.zeros(T, dtype=torch.float32, device=new.device)
    if T == 0 or B * H * D == 0:
        return scores
    grid = (triton.cdiv(T, _BLOCK_T),)
    _deviation_kernel[grid](
        new4, old4, scores,
        B, H, T, D,
        *new4.stride(), *old4.stride(),
        BLOCK_T=_BLOCK_T, BLOCK_D=min(triton.next_power_of_2(D), _MAX_BLOCK_D),
    )
    return scores


def deviation_topk(
    new: torch.Tensor,
    old: torch.Tensor,
    k: int,
    candidates: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k tokens whose KV deviates most, among `candidates` (bool [T], None = all tokens).

    Returns (indices int64 [k] sorted ascending, scores fp32 [T]). Scores are the real deviations
    for every token, candidates or not. Raises KernelInputError if k exceeds the candidate count.
    Ties are broken by torch.topk (unspecified order); NaN scores rank highest.
    """
    scores = deviation_scores(new, old, backend)
    T = scores.numel()
    n_candidates = T if candidates is None else _count_candidates(candidates, T, new.device)
    _check_k(k, n_candidates)
    if k == 0:
        return torch.empty(0, dtype=torch.int64, device=scores.device), scores
    ranked = scores if candidates is None else scores.masked_fill(~candidates, float("-inf"))
    indices = torch.topk(ranked, k, sorted=False).indices
    return torch.sort(indices).values, scores


def deviation_scores_ref(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Plain-torch reference of deviation_scores."""
    diff = as_bhtd(new, "new").to(torch.float32) - as_bhtd(old, "old").to(torch.float32)
    return diff.square().sum(dim=(0, 1, 3))


def random_select(
    T: int,
    k: int,
    candidates: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Control for benchmarks: k distinct tokens drawn uniformly from the candidates.

    Returns int64 [k] sorted ascending, on candidates' device (CPU when candidates is None).
    The draw happens on the CPU so that a CPU `generator` gives the same picks on any device.
    """
    device = torch.device("cpu") if candidates is None else candidates.device
    if candidates is None:
        pool = torch.arange(T, dtype=torch.int64)
    else:
        _count_candidates(candidates, T, candidates.device)
        pool = candidates.cpu().nonzero().squeeze(1)
    _check_k(k, pool.numel())
    picks = pool[torch.randperm(pool.numel(), generator=generator)[:k]]
    return torch.sort(picks).values.to(device)


def _count_candidates(candidates: torch.Tensor, T: int, device: torch.device) -> int:
    check_vector(candidates, "candidates", T)
    check_dtype(candidates, "candidates", (torch.bool,))
    check_device(candidates, "candidates", device)
    return int(candidates.sum().item())


def _check_k(k: int, n_candidates: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise KernelInputError(f"k must be an int, got {type(k).__name__}")
    if not 0 <= k <= n_candidates:
        raise KernelInputError(f"k must be in [0, {n_candidates}] (the number of candidate "
                               f"tokens), got {k}")


__all__ = [
    "deviation_scores",
    "deviation_scores_ref",
    "deviation_topk",
    "random_select",
]
