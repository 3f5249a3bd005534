"""FP8 (e4m3) quantization of KV rows with one fp32 scale per row.

Algorithm. x is viewed as rows of its last dimension; for an LKHTD chunk [L, 2, H, T, D] a row is
one (layer, k/v, head, token): per-token scales, kept separate per head. For each row:
    amax  = max |x|                       scale = amax / 448    (448 = largest e4m3 value)
    code  = e4m3(clamp(x * (448 / amax), -448, 448))            round to nearest even
    x_hat = float(code) * scale
Rows with amax <= 2**-110 (all zeros in practice) get code 0: 448 / amax would overflow fp32.
Error: |x_hat - x| <= 2**-4 * |x| + 2**-10 * scale, plus half an ulp of the output dtype.

Payload layout (one contiguous uint8 buffer, as stored by kvstore.codecs "fp8-e4m3"):
    [R] fp32 scales (R = numel / D rows)  |  [R, D] uint8 e4m3 codes
Scales come first so they stay 4-byte aligned.

Grid: one program per BLOCK_R rows; a program loads a [BLOCK_R, BLOCK_D] tile (BLOCK_D = D rounded
up to a power of two), so each row is reduced in registers and read once. Interpreted runs use the
integer conversion of _softcvt (the interpreter's own fp8/bf16 casts do not round like the GPU).
"""

from __future__ import annotations

import math

import torch

from kvstore_kernels._backend import select_backend, tl, triton
from kvstore_kernels._softcvt import E4M3_MAX, f32_to_bf16_bits, f32_to_e4m3_bits
from kvstore_kernels.errors import KernelInputError

FP8_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_TINY_AMAX = 2.0**-110
# Launch shape: elements per program tile and warps per program. Measured on an H100 with
# bench_quant_gpu --tune (docs/BENCHMARKS.md); a dict so that the tuning sweep can override it.
LAUNCH = {"tile": 4096, "num_warps": 4}


@triton.jit
def _fp8_quant_kernel(
    x_ptr, scale_ptr, codes_ptr, R, D,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, SOFT_CVT: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < R)[:, None] & (cols < D)[None, :]
    offs = rows[:, None] * D + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), axis=1)
    ok = amax > 7.703719777548943e-34  # 2**-110, see _TINY_AMAX
    inv = tl.where(ok, tl.math.div_rn(448.0, tl.where(ok, amax, 1.0)), 0.0)
    y = tl.minimum(tl.maximum(x * inv[:, None], -448.0), 448.0)
    if SOFT_CVT:
        codes = f32_to_e4m3_bits(y).to(tl.uint8)
    else:
        codes = y.to(tl.float8e4nv, fp_downcast_rounding="rtne").to(tl.uint8, bitcast=True)
    tl.store(codes_ptr + offs, codes, mask=mask)
    tl.store(scale_ptr + rows, tl.math.div_rn(amax, 448.0), mask=rows < R)


@triton.jit
def _fp8_dequant_kernel(
    scale_ptr, codes_ptr, out_ptr, R, D,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, SOFT_BF16: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < R)[:, None] & (cols < D)[None, :]
    offs = rows[:, None] * D + cols[None, :]
    codes = tl.load(codes_ptr + offs, mask=mask, other=0)
    scale = tl.load(scale_ptr + rows, mask=rows < R, other=0.0)
    x = codes.to(tl.float8e4nv, bitcast=True).to(tl.float32) * scale[:, None]
    if SOFT_BF16:
        tl.store(out_ptr + offs, f32_to_bf16_bits(x).to(tl.int16), mask=mask)
    else:
        tl.store(out_ptr + offs, x.to(out_ptr.dtype.element_ty), mask=mask)


def fp8_payload_nbytes(shape: tuple[int, ...] | list[int]) -> int:
    """Bytes of the fp8 payload for `shape`: 4 per row of the last dim plus 1 per element."""
    rows, d = _rows(shape)
    return rows * 4 + rows * d


def fp8_quantize(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Quantize x (fp16/bf16/fp32, any shape with a last dim) into a new 1-D uint8 payload on
    x's device (layout in the module docstring). x must be finite; it is not modified."""
    _check_input(x)
    if select_backend(backend, x.device, _fp8_quant_kernel) == "torch":
        return fp8_quantize_ref(x)
    rows, d = _rows(x.shape)
    x = x.contiguous()
    payload = torch.empty(rows * 4 + rows * d, dtype=torch.uint8, device=x.device)
    scales, codes = _split(payload, rows)
    block_r, block_d = _blocks(d)
    if rows:
        _fp8_quant_kernel[(triton.cdiv(rows, block_r),)](
            x, scales, codes, rows, d,
            BLOCK_R=block_r, BLOCK_D=block_d, SOFT_CVT=x.device.type != "cuda",
            num_warps=LAUNCH["num_warps"],
        )
    return payload


def fp8_dequantize(
    payload: torch.Tensor, shape: tuple[int, ...] | list[int], dtype: torch.dtype,
    backend: str = "auto",
) -> torch.Tensor:
    """Decode an fp8 payload (1-D uint8, fp8_payload_nbytes(shape) bytes) into a new tensor of
    `shape` and `dtype` on the payload's device."""
    _check_payload(payload, shape, dtype)
    if select_backend(backend, payload.device, _fp8_dequant_kernel) == "torch":
        return fp8_dequantize_ref(payload, shape, dtype)
    rows, d = _rows(shape)
    scales, codes = _split(payload, rows)
    out = torch.empty(tuple(shape), dtype=dtype, device=payload.device)
    soft_bf16 = dtype == torch.bfloat16 and payload.device.type != "cuda"
    block_r, block_d = _blocks(d)
    if rows:
        _fp8_dequant_kernel[(triton.cdiv(rows, block_r),)](
            scales, codes, out.view(torch.int16) if soft_bf16 else out, rows, d,
            BLOCK_R=block_r, BLOCK_D=block_d, SOFT_BF16=soft_bf16,
            num_warps=LAUNCH["num_warps"],
        )
    return out


def fp8_quantize_ref(x: torch.Tensor) -> torch.Tensor:
    """Plain-torch reference of fp8_quantize (same payload, bit for bit)."""
    _check_input(x)
    rows, d = _rows(x.shape)
    xf = x.reshape(rows, d).float()
    amax = xf.abs().amax(dim=1) if d else xf.new_zeros(rows)
    ok = amax > _TINY_AMAX
    # torch evaluates `scalar / tensor` as reciprocal(tensor) * scalar (two roundings); divide a
    # full tensor instead so that the result is the correctly rounded quotient the kernel gets.
    inv = torch.where(ok, torch.full_like(amax, E4M3_MAX) / torch.where(ok, amax, 1.0), 0.0)
    y = (xf * inv[:, None]).clamp_(-E4M3_MAX, E4M3_MAX)
    payload = torch.empty(rows * 4 + rows * d, dtype=torch.uint8, device=x.device)
    scales, codes = _split(payload, rows)
    scales.copy_(amax / torch.full_like(amax, E4M3_MAX))  # CUDA computes `/ 448.0` as `* (1/448)`
    codes.copy_(y.to(torch.float8_e4m3fn).view(torch.uint8).reshape(-1))
    return payload


def fp8_dequantize_ref(
    payload: torch.Tensor, shape: tuple[int, ...] | list[int], dtype: torch.dtype
) -> torch.Tensor:
    """Plain-torch reference of fp8_dequantize."""
    _check_payload(payload, shape, dtype)
    rows, d = _rows(shape)
    scales, codes = _split(payload, rows)
    x = codes.view(torch.float8_e4m3fn).reshape(rows, d).float() * scales[:, None]
    return x.to(dtype).reshape(tuple(shape))


def _rows(shape: tuple[int, ...] | list[int] | torch.Size) -> tuple[int, int]:
    if len(shape) == 0:
        raise KernelInputError("fp8 quantization needs at least one dimension")
    d = int(shape[-1])
    return (math.prod(int(s) for s in shape[:-1]), d)


def _split(payload: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 scales [rows], uint8 codes [rows * D]) views of a payload."""
    return payload[: rows * 4].view(torch.float32), payload[rows * 4 :]


def _blocks(d: int) -> tuple[int, int]:
    block_d = triton.next_power_of_2(max(d, 1))
    return max(1, LAUNCH["tile"] // block_d), block_d


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise KernelInputError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FP8_DTYPES:
        raise KernelInputError(f"fp8 quantization takes float16/bfloat16/float32, got {x.dtype}")
    _rows(x.shape)


def _check_payload(payload: torch.Tensor, shape: tuple[int, ...] | list[int], dtype: torch.dtype):
    if dtype not in FP8_DTYPES:
        raise KernelInputError(f"fp8 output dtype must be float16/bfloat16/float32, got {dtype}")
    if payload.dtype != torch.uint8 or payload.dim() != 1 or not payload.is_contiguous():
        raise KernelInputError("fp8 payload must be a contiguous 1-D uint8 tensor")
    want = fp8_payload_nbytes(shape)
    if payload.numel() != want:
        raise KernelInputError(f"fp8 payload of shape {tuple(shape)} must be {want} bytes, "
                               f"got {payload.numel()}")
    if payload.data_ptr() % 4:
        raise KernelInputError("fp8 payload must start at a 4-byte aligned address")


__all__ = [
    "FP8_DTYPES", "fp8_dequantize", "fp8_dequantize_ref", "fp8_payload_nbytes", "fp8_quantize",
    "fp8_quantize_ref",
]
