"""Round-to-nearest-even fp32 -> bf16 / fp8-e4m3 conversions in integer arithmetic.

Why: triton's CPU interpreter does not convert like the GPU. A plain cast fp32 -> bf16 truncates,
and fp32 -> float8e4nv rounds ties up and mishandles subnormals, so an interpreted kernel would not
match the torch reference bit for bit. Kernels call these helpers only when running interpreted
(constexpr SOFT_CVT); on the GPU they use the native round-to-nearest-even casts, which are one
instruction instead of ~20 integer ops (they would make fp8 quantization compute-bound on an H100).

Both take fp32 and return the raw bits as int32 (callers narrow them when storing).
"""

from __future__ import annotations

from kvstore_kernels._backend import tl, triton

E4M3_MAX = 448.0


@triton.jit
def f32_to_bf16_bits(v):
    """bf16 bits (low 16 bits of the int32 result) of fp32 v, round to nearest even."""
    bits = v.to(tl.int32, bitcast=True)
    # Add 0x7FFF plus the lowest kept bit, then drop 16 bits: ties go to the even neighbour.
    # The int32 add may wrap for negative inputs; the low 16 bits after the shift are still right.
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16) & 0xFFFF


@triton.jit
def f32_to_e4m3_bits(v):
    """float8_e4m3fn bits of fp32 v, which must lie in [-448, 448]; round to nearest even."""
    bits = v.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    mag = bits & 0x7FFFFFFF
    exp = (mag >> 23) - 127
    # Normal e4m3 (exp >= -6): keep 3 mantissa bits; a carry out of the mantissa bumps the exponent.
    r = mag + 0x7FFFF + ((mag >> 20) & 1)
    normal = ((((r >> 23) - 120) << 3) | ((r >> 20) & 7))
    # Subnormal e4m3 (exp < -6): the value in units of 2**-9, rounded to nearest even. q == 8 is
    # the smallest normal number, whose bits happen to be 8 as well.
    shift = tl.minimum(14 - exp, 31)
    mant = (mag & 0x7FFFFF) | 0x800000
    q = mant >> shift
    rem = mant & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    q += ((rem > half) | ((rem == half) & ((q & 1) == 1))).to(tl.int32)
    return sign | tl.where(exp >= -6, normal, q)
