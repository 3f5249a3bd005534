"""Gather and scatter KV rows along the token dimension (CacheBlend, PAPERS.md section 2, step 5).

Algorithm. CacheBlend recomputes K/V only for the selected tokens S and writes those rows back into
the loaded KV buffer:
    gather_rows:  rows[b, h, j, :] = kv[b, h, idx[j], :]
    scatter_rows: kv[b, h, idx[j], :] = rows[b, h, j, :]      (in place)
Both are pure copies, so any dtype triton can load works (fp16, bf16, fp32 and the int8/uint8 of
quantized KV); values are moved bit for bit.

Memory layout. kv is [B, H, T, D] (or [H, T, D]); rows is [B, H, N, D] with N = len(idx); idx is
int32/int64 [N] with 0 <= idx < T; any strides. Grid: one program per (b, h, block of BLOCK_N
indices), flattened into axis 0; it loads BLOCK_N indices once and copies [BLOCK_N, BLOCK_D] tiles,
each row a contiguous run of D elements in HF layout.

Validation. idx is range-checked (and, for scatter, checked for duplicates, whose write order
would be undefined) before either backend runs. On CUDA this costs one host sync per call.
"""

from __future__ import annotations

import torch

from kvstore_kernels._backend import select_backend, tl, triton
from kvstore_kernels._checks import INDEX_DTYPES, as_bhtd, check_device, check_dtype, check_vector
from kvstore_kernels.errors import KernelInputError

ROW_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.int8, torch.uint8)
_BLOCK_N = 16
_MAX_BLOCK_D = 128


@triton.jit
def _copy_rows_kernel(
    src_ptr, dst_ptr, idx_ptr,
    H, N, D,
    stride_sb, stride_sh, stride_st, stride_sd,
    stride_db, stride_dh, stride_dt, stride_dd,
    SCATTER: tl.constexpr,  # False: src=kv, rows picked by idx; True: dst=kv, rows placed by idx
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    n_blocks = tl.cdiv(N, BLOCK_N)
    pid_bh = pid // n_blocks
    b = pid_bh // H
    h = pid_bh % H
    offs_n = (pid % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    tok = tl.load(idx_ptr + offs_n, mask=mask_n, other=0).to(tl.int64)
    if SCATTER:
        src_t = offs_n
        dst_t = tok
    else:
        src_t = tok
        dst_t = offs_n
    src_rows = src_ptr + b * stride_sb + h * stride_sh + src_t[:, None] * stride_st
    dst_rows = dst_ptr + b * stride_db + h * stride_dh + dst_t[:, None] * stride_dt
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask = mask_n[:, None] & (offs_d < D)[None, :]
        vals = tl.load(src_rows + offs_d[None, :] * stride_sd, mask=mask)
        tl.store(dst_rows + offs_d[None, :] * stride_dd, vals, mask=mask)


def gather_rows(kv: torch.Tensor, idx: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Copy kv[..., idx, :] into a new [B, H, N, D] tensor ([H, N, D] for 3-D kv), owned by the
    caller."""
    kv4 = as_bhtd(kv, "kv")
    _check_rows_args(kv4, idx, unique=False)
    chosen = select_backend(backend, kv.device, _copy_rows_kernel)
    if chosen == "torch":
        return gather_rows_ref(kv, idx)
    B, H, _, D = kv4.shape
    out = kv4.new_empty((B, H, idx.numel(), D))
    _launch(kv4, out, idx, scatter=False)
    return out if kv.dim() == 4 else out.squeeze(0)


def scatter_rows(
    kv: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """Write rows ([B, H, N, D], like kv but N = len(idx) tokens) into kv[..., idx, :] in place.

    idx must hold distinct tokens. Returns kv.
    """
    kv4, rows4 = as_bhtd(kv, "kv"), as_bhtd(rows, "rows")
    _check_rows_args(kv4, idx, unique=True)
    B, H, _, D = kv4.shape
    expected = (B, H, idx.numel(), D)
    if rows.dim() != kv.dim() or tuple(rows4.shape) != expected:
        want = expected if kv.dim() == 4 else expected[1:]
        raise KernelInputError(f"rows must have shape {want} (kv with len(idx) tokens), "
                               f"got {tuple(rows.shape)}")
    if rows.dtype != kv.dtype:
        raise KernelInputError(f"rows dtype {rows.dtype} differs from kv dtype {kv.dtype}")
    check_device(rows, "rows", kv.device)
    chosen = select_backend(backend, kv.device, _copy_rows_kernel)
    if chosen == "torch":
        return scatter_rows_ref(kv, idx, rows)
    _launch(rows4, kv4, idx, scatter=True)
    return kv


def _launch(src: torch.Tensor, dst: torch.Tensor, idx: torch.Tensor, scatter: bool) -> None:
    B, H, _, D = dst.shape
    N = idx.numel()
    if B * H * N * D == 0:
        return
    grid = (B * H * triton.cdiv(N, _BLOCK_N),)
    _copy_rows_kernel[grid](
        src, dst, idx,
        H, N, D,
        *src.stride(), *dst.stride(),
        SCATTER=scatter, BLOCK_N=_BLOCK_N,
        BLOCK_D=min(triton.next_power_of_2(D), _MAX_BLOCK_D),
    )


def _check_rows_args(kv4: torch.Tensor, idx: torch.Tensor, unique: bool) -> None:
    check_dtype(kv4, "kv", ROW_DTYPES)
    check_vector(idx, "idx")
    check_dtype(idx, "idx", INDEX_DTYPES)
    check_device(idx, "idx", kv4.device)
    if idx.numel() == 0:
        return
    T = kv4.shape[2]
    # One host sync for all three facts.
    dup = (idx.sort().values.diff() == 0).any() if unique else idx.new_zeros((), dtype=torch.bool)
    lo, hi, has_dup = torch.stack([idx.min(), idx.max(), dup.to(idx.dtype)]).tolist()
    if lo < 0 or hi >= T:
        raise KernelInputError(f"idx values must be in [0, {T}) (tokens of kv), "
                               f"got min {lo}, max {hi}")
    if has_dup:
        raise KernelInputError("idx has duplicate tokens; scatter order would be undefined")


def gather_rows_ref(kv: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Plain-torch reference of gather_rows."""
    return kv.index_select(-2, idx)


def scatter_rows_ref(kv: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Plain-torch reference of scatter_rows (in place, returns kv)."""
    return kv.index_copy_(-2, idx.to(torch.int64), rows)


__all__ = ["ROW_DTYPES", "gather_rows", "gather_rows_ref", "scatter_rows", "scatter_rows_ref"]
