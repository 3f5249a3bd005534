"""RoPE delta re-rotation of cached keys (CacheBlend, PAPERS.md section 2).

Algorithm. RoPE rotates each rotary pair (x1, x2) of a key at position p by the angle p * theta_i:
    y1 = x1 * cos(a) - x2 * sin(a),   y2 = x2 * cos(a) + x1 * sin(a),   a = p * theta_i.
Rotations compose, so a key stored already rotated at its original position o moves to a new
position n by one more rotation with a = (n - o) * theta_i. The kernel applies that rotation per
token with delta[t] = n_t - o_t; values carry no position and are never touched.

Pairing. "neox" (HF Llama rotate_half) pairs dim i with i + D_rot/2; "gptj" pairs 2i with 2i+1.
Partial rotary: only the first D_rot = 2 * len(inv_freq) dims rotate; dims D_rot..D-1 are copied.

Precision. The angle delta * inv_freq is formed in fp32 exactly as HF forms position * inv_freq,
so the result composes with HF's own RoPE. It is then reduced to [0, 2*pi) in fp64 before cos/sin:
for long contexts the angle reaches 1e4-1e6 rad and a GPU's fast fp32 sin/cos loses accuracy far
from the origin; the fp64 reduction is a few flops per pair on a memory-bound kernel. The rotation
itself is done in fp32 and the output is rounded once to k's dtype.

Memory layout. k and out are [B, H, T, D] (or [H, T, D]) with any strides (HF keys are often a
transposed view of [B, T, H, D]); delta is [T] int32/int64; inv_freq is [D_rot/2] fp32.
Grid: one program per (b, h, block of BLOCK_T tokens), flattened into axis 0 so B*H is not bounded
by the 65535 limit of grid axes 1-2. A program loads its x1 and x2 tiles before storing, so
out=k (in place) is safe; out must otherwise not overlap k.
"""

from __future__ import annotations

import torch

from kvstore_kernels._backend import select_backend, tl, triton
from kvstore_kernels._checks import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    as_bhtd,
    check_device,
    check_dtype,
    check_like,
    check_vector,
)
from kvstore_kernels.errors import KernelInputError

PAIRINGS = ("neox", "gptj")
_BLOCK_T = 32


@triton.jit
def _rerotate_kernel(
    k_ptr, out_ptr, delta_ptr, inv_freq_ptr,
    H, T,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_ob, stride_oh, stride_ot, stride_od,
    HALF: tl.constexpr,        # rotary pairs per token, D_rot / 2
    PASS: tl.constexpr,        # trailing non-rotary dims, D - D_rot
    GPTJ: tl.constexpr,        # True: pairs (2i, 2i+1); False: NeoX pairs (i, i + HALF)
    BLOCK_T: tl.constexpr,
    BLOCK_HALF: tl.constexpr,  # next power of two >= HALF
    BLOCK_PASS: tl.constexpr,  # next power of two >= PASS (1 when PASS == 0)
):
    pid = tl.program_id(0).to(tl.int64)
    n_tblocks = tl.cdiv(T, BLOCK_T)
    pid_bh = pid // n_tblocks
    b = pid_bh // H
    h = pid_bh % H
    offs_t = (pid % n_tblocks) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    offs_i = tl.arange(0, BLOCK_HALF)
    mask_i = offs_i < HALF
    mask = mask_t[:, None] & mask_i[None, :]

    delta = tl.load(delta_ptr + offs_t, mask=mask_t, other=0).to(tl.float32)
    inv_freq = tl.load(inv_freq_ptr + offs_i, mask=mask_i, other=0.0)
    angle = (delta[:, None] * inv_freq[None, :]).to(tl.float64)
    # Explicit fp64 constants: a bare Python float may be materialized as fp32 (2*pi off by
    # 1.7e-7, i.e. 1e-3 rad after 6000 turns). Multiplying by 1/(2*pi) instead of dividing may
    # pick a neighbouring turn count near a boundary; the remainder is then just outside
    # [0, 2*pi), which sin/cos handle exactly as well.
    two_pi = tl.full((BLOCK_T, BLOCK_HALF), 6.283185307179586, tl.float64)  # math.tau
    inv_two_pi = tl.full((BLOCK_T, BLOCK_HALF), 0.15915494309189535, tl.float64)
    angle = (angle - two_pi * tl.floor(angle * inv_two_pi)).to(tl.float32)
    cos = tl.cos(angle)
    sin = tl.sin(angle)

    if GPTJ:
        d1 = 2 * offs_i
        d2 = d1 + 1
    else:
        d1 = offs_i
        d2 = offs_i + HALF
    k_rows = k_ptr + b * stride_kb + h * stride_kh + offs_t[:, None] * stride_kt
    o_rows = out_ptr + b * stride_ob + h * stride_oh + offs_t[:, None] * stride_ot
    x1 = tl.load(k_rows + d1[None, :] * stride_kd, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(k_rows + d2[None, :] * stride_kd, mask=mask, other=0.0).to(tl.float32)
    y1 = x1 * cos - x2 * sin
    y2 = x2 * cos + x1 * sin
    out_ty = out_ptr.dtype.element_ty
    tl.store(o_rows + d1[None, :] * stride_od, y1.to(out_ty), mask=mask)
    tl.store(o_rows + d2[None, :] * stride_od, y2.to(out_ty), mask=mask)

    if PASS > 0:
        offs_p = 2 * HALF + tl.arange(0, BLOCK_PASS)
        mask_p = mask_t[:, None] & (offs_p < 2 * HALF + PASS)[None, :]
        rest = tl.load(k_rows + offs_p[None, :] * stride_kd, mask=mask_p, other=0.0)
        tl.store(o_rows + offs_p[None, :] * stride_od, rest, mask=mask_p)


def rerotate_keys(
    k: torch.Tensor,
    delta: torch.Tensor,
    inv_freq: torch.Tensor,
    pairing: str = "neox",
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Rotate keys already rotated at their original positions by delta[t] more positions.

    k: [B, H, T, D] or [H, T, D], fp16/bf16/fp32. delta: [T] int32/int64 (new_pos - old_pos).
    inv_freq: [D_rot/2] fp32 with D_rot <= D. Returns `out` (allocated like k when None; out=k
    rotates in place). The caller owns the returned tensor.
    """
    _check_rope_args(k, delta, inv_freq, pairing)
    if out is None:
        out = torch.empty_like(k)
    else:
        check_like(out, "out", k, "k")
    chosen = select_backend(backend, k.device, _rerotate_kernel)
    if chosen == "torch":
        return out.copy_(rerotate_keys_ref(k, delta, inv_freq, pairing))

    k4, o4 = as_bhtd(k, "k"), as_bhtd(out, "out")
    B, H, T, D = k4.shape
    half = inv_freq.numel()
    n_pass = D - 2 * half
    if B * H * T == 0:
        return out
    grid = (B * H * triton.cdiv(T, _BLOCK_T),)
    _rerotate_kernel[grid](
        k4, o4, delta, inv_freq,
        H, T,
        *k4.stride(), *o4.stride(),
        HALF=half, PASS=n_pass, GPTJ=pairing == "gptj", BLOCK_T=_BLOCK_T,
        BLOCK_HALF=triton.next_power_of_2(half),
        BLOCK_PASS=triton.next_power_of_2(max(n_pass, 1)),
    )
    return out


def _check_rope_args(
    k: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor, pairing: str
) -> None:
    k4 = as_bhtd(k, "k")
    check_dtype(k, "k", FLOAT_DTYPES)
    T, D = k4.shape[2], k4.shape[3]
    check_vector(delta, "delta", T)
    check_dtype(delta, "delta", INDEX_DTYPES)
    check_device(delta, "delta", k.device)
    check_vector(inv_freq, "inv_freq")
    check_dtype(inv_freq, "inv_freq", (torch.float32,))
    check_device(inv_freq, "inv_freq", k.device)
    if inv_freq.numel() == 0 or 2 * inv_freq.numel() > D:
        raise KernelInputError(
            f"inv_freq must have 1..D/2 = 1..{D // 2} entries (rotary dims <= head_dim), "
            f"got {inv_freq.numel()}")
    if pairing not in PAIRINGS:
        raise KernelInputError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")


def apply_rope_ref(
    x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, pairing: str = "neox"
) -> torch.Tensor:
    """Plain-torch RoPE: rotate x ([..., T, D]) at positions [T]; fp32 math, result in x.dtype.

    Used both as the reference for rerotate_keys (a delta rotation is RoPE at position delta) and
    in tests to build keys at known positions.
    """
    if pairing not in PAIRINGS:
        raise KernelInputError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    half = inv_freq.numel()
    angle = positions.to(torch.float32)[:, None] * inv_freq.to(torch.float32)[None, :]
    cos, sin = angle.cos(), angle.sin()
    xf = x.to(torch.float32)
    rot, rest = xf[..., : 2 * half], xf[..., 2 * half :]
    if pairing == "neox":
        x1, x2 = rot[..., :half], rot[..., half:]
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    y1 = x1 * cos - x2 * sin
    y2 = x2 * cos + x1 * sin
    if pairing == "neox":
        rotated = torch.cat([y1, y2], dim=-1)
    else:
        rotated = torch.stack([y1, y2], dim=-1).flatten(-2)
    return torch.cat([rotated, rest], dim=-1).to(x.dtype)


def rerotate_keys_ref(
    k: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor, pairing: str = "neox"
) -> torch.Tensor:
    """Plain-torch reference of rerotate_keys (returns a new tensor)."""
    return apply_rope_ref(k, delta, inv_freq, pairing)


def rope_inv_freq(rot_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Standard (unscaled) RoPE inverse frequencies theta^(-2i/rot_dim), fp32 [rot_dim/2].

    Scaled variants (Llama-3, YaRN, ...) only change inv_freq: pass the model's own.
    """
    if rot_dim <= 0 or rot_dim % 2:
        raise KernelInputError(f"rot_dim must be a positive even number, got {rot_dim}")
    exponents = torch.arange(0, rot_dim, 2, dtype=torch.int64).to(torch.float32) / rot_dim
    return 1.0 / (theta ** exponents)


__all__ = ["PAIRINGS", "apply_rope_ref", "rerotate_keys", "rerotate_keys_ref", "rope_inv_freq"]
