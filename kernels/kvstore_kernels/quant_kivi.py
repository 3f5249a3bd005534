"""KIVI-style asymmetric int4 / int2 quantization of an LKHTD KV chunk (PAPERS.md section 5).

Algorithm. x is one chunk [L, 2, H, T, D]; K = x[:, 0], V = x[:, 1]. With b bits, levels = 2**b - 1
and group size G (a power of two, 4..256):
  keys:   per channel over groups of G tokens: one group is K[l, h, g*G:(g+1)*G, d]
  values: per token over groups of G channels: one group is V[l, h, t, g*G:(g+1)*G]
For each group with minimum mn and maximum mx:
    s = fp16((mx - mn) / levels)      m = fp16(mn)        (KIVI keeps scale and zero in fp16)
    q = clamp(floor((x - m) * (1 / s) + 0.5), 0, levels)  (q = 0 where s == 0)
    x_hat = m + q * s
Error per element: |x_hat - x| <= 0.51 * (mx - mn) / levels + 2**-10 * max(|mn|, |mx|) + 2**-20,
plus half an ulp of the output dtype (the 2**-10 and 2**-20 terms are the fp16 rounding of m and s).
Inputs must be finite with |x| <= 65504 so that m and s fit in fp16; kvstore.codecs checks that.
Key rotation (rotate_keys=True; the codec's default, key_rotation "hadamard"): keys are first
rotated by a fixed orthogonal Walsh-Hadamard matrix, y = k R (kvstore_kernels/hadamard.py), the
groups above are formed over y, and dequantization returns x_hat = y_hat R^T. Same layout and size.
The bound above then holds per element of y; R is orthogonal, so each key vector's error has L2
norm at most that of its bounds (plus 2**-11 relative for the fp16 roundings of k before and of
y_hat before the inverse), and keys must satisfy |k| <= 65504 / sqrt(D). Needs G >= 16.
T need not be a multiple of G (the last key group is padded, pad codes are 0) and D need not be
either (value groups are padded up to Dp = ceil(D / G) * G channels). KIVI also keeps the newest R
tokens in full precision; a stored chunk is immutable, so there is no such residual here.

Payload layout (one contiguous uint8 buffer; NG = ceil(T / G), Tp = NG * G, NGD = ceil(D / G),
PPB = 8 / b codes per byte, packed little end first: code i of a byte sits at bits [i*b, (i+1)*b)):
    k_scale  [L, H, NG, D]     fp16 |  k_min [L, H, NG, D] fp16
    v_scale  [L, H, T, NGD]    fp16 |  v_min [L, H, T, NGD] fp16
    k_codes  [L, H, Tp/PPB, D] uint8: byte (r, d) holds tokens r*PPB .. r*PPB+PPB-1 of channel d
    v_codes  [L, H, T, Dp/PPB] uint8: byte (t, c) holds channels c*PPB .. c*PPB+PPB-1 of token t
fp16 sections come first so every one of them is 2-byte aligned. Cost: b + 32/G bits per element
plus padding (int4, G=32: 3.2x smaller than fp16; int2: 5.3x).

Grid. One launch per call (a launch costs about as much host time as the kernels take on a
64 MiB chunk): a 1-D grid whose first programs each take one key group (l*H + h, token group,
block of BLOCK_D channels), loading it as PPB row slices [G/PPB, BLOCK_D] (rows contiguous in D)
so that the min/max reduction and the packing along tokens stay 2-D; the remaining programs each
take BLOCK_T tokens of one value channel group, one contiguous [BLOCK_T, G] tile, packing
neighbouring channels with tl.split (tl.join to unpack) inside a thread's registers.
With rotated keys a key program reads all channels of LAUNCH["rotate_groups"] consecutive groups
(the rotation mixes them) and produces a block of output channels (rotate_n_quant / _dequant),
with one fp16 tensor-core tl.dot per row slice against that block of P, loaded once per program
(rows padded to 16). Splitting output channels restores parallelism: with all 128 channels per
program there were 8x fewer programs than unrotated, and that, not the product, cost most.
Dequantization mirrors all of them. Interpreted runs write bf16 through _softcvt (the
interpreter's bf16 cast truncates).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from kvstore_kernels import hadamard
from kvstore_kernels._backend import select_backend, tl, triton
from kvstore_kernels._softcvt import f32_to_bf16_bits
from kvstore_kernels.errors import KernelInputError

KIVI_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
KIVI_BITS = (2, 4)
GROUP_SIZES = (4, 8, 16, 32, 64, 128, 256)
# Launch shape: elements per program tile and warps per program. Measured on an H100 with
# bench_quant_gpu --tune (docs/BENCHMARKS.md); a dict so that the tuning sweep can override it.
LAUNCH = {"keys_tile": 1024, "values_tile": 2048, "num_warps": 2, "rotate_num_warps": 2,
          "rotate_groups": 8, "rotate_n_quant": 64, "rotate_n_dequant": 128}
# tl.dot needs at least 16 rows: a rotated key group is one tile of G tokens.
MIN_ROTATED_GROUP = 16
# A rotated-key program holds all of a token's channels (and P's rows): measured up to 128 on
# GPUs; 256 is allowed, larger head dims are refused (their tiles would not fit on chip).
MAX_ROTATED_HEAD_DIM = 256


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True, eq=True)
class KiviLayout:
    """Sizes and byte offsets of a KIVI payload; the single definition both backends and
    kvstore.codecs use."""

    L: int
    H: int
    T: int
    D: int
    bits: int
    group_size: int

    @property
    def ppb(self) -> int:
        return 8 // self.bits

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    @property
    def ng(self) -> int:
        return -(-self.T // self.group_size)

    @property
    def ngd(self) -> int:
        return -(-self.D // self.group_size)

    @property
    def t_pad(self) -> int:
        return self.ng * self.group_size

    @property
    def d_pad(self) -> int:
        return self.ngd * self.group_size

    def section_shapes(self) -> dict[str, tuple[int, ...]]:
        L, H = self.L, self.H
        return {
            "k_scale": (L, H, self.ng, self.D),
            "k_min": (L, H, self.ng, self.D),
            "v_scale": (L, H, self.T, self.ngd),
            "v_min": (L, H, self.T, self.ngd),
            "k_codes": (L, H, self.t_pad // self.ppb, self.D),
            "v_codes": (L, H, self.T, self.d_pad // self.ppb),
        }

    @property
    def nbytes(self) -> int:
        return sum(math.prod(s) * (1 if n.endswith("codes") else 2)
                   for n, s in self.section_shapes().items())

    @functools.cached_property
    def spans(self) -> dict[str, tuple[int, int]]:
        """Section name -> (start, end) in elements of its dtype: fp16 sections index the
        payload viewed as fp16 (they come first and are 2-byte aligned), codes index bytes."""
        out, off = {}, 0
        for name, shape in self.section_shapes().items():
            itemsize = 1 if name.endswith("codes") else 2
            n = math.prod(shape)
            out[name] = (off // itemsize, off // itemsize + n)
            off += n * itemsize
        return out

    def flat_views(self, payload: torch.Tensor) -> list[torch.Tensor]:
        """Flat views of the sections in order (k_scale, k_min, v_scale, v_min, k_codes,
        v_codes): the kernels only need their addresses. A few slices, not 18 tensor ops: the
        launcher's host time matters next to ~20 us kernels."""
        sp = self.spans
        f16 = payload[: sp["v_min"][1] * 2].view(torch.float16)
        return [f16[a:b] for a, b in (sp["k_scale"], sp["k_min"], sp["v_scale"], sp["v_min"])] + [
            payload[a:b] for a, b in (sp["k_codes"], sp["v_codes"])]

    def views(self, payload: torch.Tensor) -> dict[str, torch.Tensor]:
        """Typed, shaped views of the six sections of `payload` (no copies)."""
        flat = dict(zip(("k_scale", "k_min", "v_scale", "v_min", "k_codes", "v_codes"),
                        self.flat_views(payload), strict=True))
        return {name: flat[name].view(shape) for name, shape in self.section_shapes().items()}


def kivi_layout(shape: tuple[int, ...] | list[int] | torch.Size, bits: int,
                group_size: int) -> KiviLayout:
    """The layout for a chunk of `shape` [L, 2, H, T, D]; raises KernelInputError if invalid."""
    return _layout(tuple(int(s) for s in shape), bits, group_size)


@functools.lru_cache(maxsize=256)
def _layout(shape: tuple[int, ...], bits: int, group_size: int) -> KiviLayout:
    # cached: a chunk store sees few distinct shapes, and the launcher's host time counts
    if bits not in KIVI_BITS:
        raise KernelInputError(f"KIVI bits must be one of {KIVI_BITS}, got {bits}")
    if group_size not in GROUP_SIZES:
        raise KernelInputError(f"KIVI group size must be one of {GROUP_SIZES}, got {group_size}")
    if len(shape) != 5 or shape[1] != 2:
        raise KernelInputError(f"KIVI needs an LKHTD chunk [L, 2, H, T, D], got {shape}")
    L, _, H, T, D = shape
    if min(L, H, T, D) <= 0:
        raise KernelInputError(f"KIVI needs a non-empty chunk, got shape {shape}")
    return KiviLayout(L, H, T, D, bits, group_size)


def kivi_payload_nbytes(shape: tuple[int, ...] | list[int], bits: int, group_size: int) -> int:
    return kivi_layout(shape, bits, group_size).nbytes


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _group_params(mn, mx, LEVELS: tl.constexpr):
    """fp16-rounded zero point and scale (returned as fp32) and the reciprocal scale."""
    s = tl.math.div_rn(mx - mn, LEVELS * 1.0).to(tl.float16).to(tl.float32)
    m = mn.to(tl.float16).to(tl.float32)
    inv = tl.where(s > 0, tl.math.div_rn(1.0, tl.where(s > 0, s, 1.0)), 0.0)
    return m, s, inv


@triton.jit
def _quant(x, m, inv, LEVELS: tl.constexpr):
    q = tl.floor((x - m) * inv + 0.5)
    return tl.minimum(tl.maximum(q, 0.0), LEVELS * 1.0).to(tl.int32)


@triton.jit
def _quant_keys_block(
    x_ptr, scale_ptr, min_ptr, codes_ptr, n, p1, p2,
    H, T, D, NG, stride_l, stride_h, stride_t,
    BITS: tl.constexpr, G: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # 2-D tiles only: token r*PPB + j of the group is loaded as row r of the j-th [G/PPB, BLOCK_D]
    # tile (rows contiguous in D), so min/max, quantization and packing need no layout change.
    # The second pass re-reads the tile from L1/L2, not from DRAM.
    PPB: tl.constexpr = 8 // BITS
    LEVELS: tl.constexpr = (1 << BITS) - 1
    g = p1
    dv = p2 * BLOCK_D + tl.arange(0, BLOCK_D)
    r = tl.arange(0, G // PPB)[:, None]
    d = dv[None, :]
    d_ok = dv < D
    base = x_ptr + (n // H) * stride_l + (n % H) * stride_h
    # Elementwise min/max over the PPB row slices first, then one cross-row reduction each.
    mn_rows = tl.full([G // PPB, BLOCK_D], float("inf"), tl.float32)
    mx_rows = tl.full([G // PPB, BLOCK_D], float("-inf"), tl.float32)
    for j in tl.static_range(PPB):
        t = g * G + r * PPB + j
        mask = (t < T) & (d < D)
        x = tl.load(base + t * stride_t + d, mask=mask, other=0.0).to(tl.float32)
        mn_rows = tl.minimum(mn_rows, tl.where(mask, x, float("inf")))
        mx_rows = tl.maximum(mx_rows, tl.where(mask, x, float("-inf")))
    mn = tl.min(mn_rows, axis=0)
    mx = tl.max(mx_rows, axis=0)
    m, s, inv = _group_params(tl.where(d_ok, mn, 0.0), tl.where(d_ok, mx, 0.0), LEVELS)
    packed = tl.zeros([G // PPB, BLOCK_D], tl.int32)
    for j in tl.static_range(PPB):
        t = g * G + r * PPB + j
        mask = (t < T) & (d < D)
        x = tl.load(base + t * stride_t + d, mask=mask, other=0.0).to(tl.float32)
        q = tl.where(mask, _quant(x, m[None, :], inv[None, :], LEVELS), 0)
        packed = packed | (q << (j * BITS))
    code_offs = ((n * NG + g) * (G // PPB) + r) * D + d
    tl.store(codes_ptr + code_offs, packed.to(tl.uint8), mask=d_ok[None, :])
    tl.store(scale_ptr + (n * NG + g) * D + dv, s.to(tl.float16), mask=d_ok)
    tl.store(min_ptr + (n * NG + g) * D + dv, m.to(tl.float16), mask=d_ok)


@triton.jit
def _rotated_slice(base, p, cs, g, j, r, dv, nv, T, D, stride_t,
                   G: tl.constexpr, PPB: tl.constexpr):
    """Rows r of slice j of key group g (token g*G + r*PPB + j), all input channels dv, rotated
    into the output channels nv: dot(fp16(k), P[:, nv]) * c[nv], and its mask. Rows r >= G/PPB
    pad the tile to tl.dot's 16 rows and are masked."""
    t = g * G + r * PPB + j
    rows_ok = (r < G // PPB) & (t < T)
    x = tl.load(base + t * stride_t + dv[None, :], mask=rows_ok & (dv[None, :] < D), other=0.0)
    return tl.dot(x.to(tl.float16), p) * cs[None, :], rows_ok & (nv[None, :] < D)


@triton.jit
def _quant_keys_rot_block(
    x_ptr, scale_ptr, min_ptr, codes_ptr, rot_ptr, cs_ptr, n, gb, nb,
    H, T, D, NG, stride_l, stride_h, stride_t,
    BITS: tl.constexpr, G: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr,
    GROUPS: tl.constexpr, ROT_N: tl.constexpr,
):
    # GROUPS consecutive key groups, all input channels each (the rotation mixes a token's
    # channels), output channels nv only. P's block is loaded once per program, not once per
    # group (per group it cost more than the group's own bytes). Like the unrotated kernel, each
    # group is PPB row slices [G/PPB, D] (one tl.dot each) so that min/max and packing stay 2-D
    # in the dot's layout. int4 keeps its two slices live; int2's four would spill, so its second
    # pass recomputes the dots.
    PPB: tl.constexpr = 8 // BITS
    LEVELS: tl.constexpr = (1 << BITS) - 1
    dv = tl.arange(0, BLOCK_D)  # input channels: all of them
    nv = nb * ROT_N + tl.arange(0, ROT_N)  # the output channels this program quantizes
    r = tl.arange(0, ROWS)[:, None]
    base = x_ptr + (n // H) * stride_l + (n % H) * stride_h
    p = tl.load(rot_ptr + dv[:, None] * BLOCK_D + nv[None, :])
    cs = tl.load(cs_ptr + nv)
    for gi in range(GROUPS):
        g = gb * GROUPS + gi
        ok = (nv < D) & ((nv * 0 + g) < NG)  # a vector: the interpreter refuses a scalar mask
        if PPB == 2:
            # int4: both slices stay in registers (2 x [16, D] fp32), one dot each, one pass.
            y0, mask0 = _rotated_slice(base, p, cs, g, 0, r, dv, nv, T, D, stride_t, G, PPB)
            y1, mask1 = _rotated_slice(base, p, cs, g, 1, r, dv, nv, T, D, stride_t, G, PPB)
            mn = tl.min(tl.minimum(tl.where(mask0, y0, float("inf")),
                                   tl.where(mask1, y1, float("inf"))), axis=0)
            mx = tl.max(tl.maximum(tl.where(mask0, y0, float("-inf")),
                                   tl.where(mask1, y1, float("-inf"))), axis=0)
            m, s, inv = _group_params(tl.where(ok, mn, 0.0), tl.where(ok, mx, 0.0), LEVELS)
            q0 = tl.where(mask0, _quant(y0, m[None, :], inv[None, :], LEVELS), 0)
            q1 = tl.where(mask1, _quant(y1, m[None, :], inv[None, :], LEVELS), 0)
            packed = q0 | (q1 << BITS)
        else:
            mn_rows = tl.full([ROWS, ROT_N], float("inf"), tl.float32)
            mx_rows = tl.full([ROWS, ROT_N], float("-inf"), tl.float32)
            for j in tl.static_range(PPB):
                y, mask = _rotated_slice(base, p, cs, g, j, r, dv, nv, T, D, stride_t, G, PPB)
                mn_rows = tl.minimum(mn_rows, tl.where(mask, y, float("inf")))
                mx_rows = tl.maximum(mx_rows, tl.where(mask, y, float("-inf")))
            mn = tl.min(mn_rows, axis=0)
            mx = tl.max(mx_rows, axis=0)
            m, s, inv = _group_params(tl.where(ok, mn, 0.0), tl.where(ok, mx, 0.0), LEVELS)
            packed = tl.zeros([ROWS, ROT_N], tl.int32)
            for j in tl.static_range(PPB):
                y, mask = _rotated_slice(base, p, cs, g, j, r, dv, nv, T, D, stride_t, G, PPB)
                q = tl.where(mask, _quant(y, m[None, :], inv[None, :], LEVELS), 0)
                packed = packed | (q << (j * BITS))
        code_offs = ((n * NG + g) * (G // PPB) + r) * D + nv[None, :]
        tl.store(codes_ptr + code_offs, packed.to(tl.uint8), mask=(r < G // PPB) & ok[None, :])
        tl.store(scale_ptr + (n * NG + g) * D + nv, s.to(tl.float16), mask=ok)
        tl.store(min_ptr + (n * NG + g) * D + nv, m.to(tl.float16), mask=ok)


@triton.jit
def _pack_rows(q, BLOCK_T: tl.constexpr, G: tl.constexpr, BITS: tl.constexpr):
    """[BLOCK_T, G] codes -> [BLOCK_T, G / PPB] bytes, channel r*PPB + j at bits j*BITS."""
    if BITS == 4:
        a, b = tl.split(tl.reshape(q, (BLOCK_T, G // 2, 2)))
        return a | (b << 4)
    else:
        # [t, r, a, b] = q[t, r*4 + 2a + b]: split b first, then a
        lo, hi = tl.split(tl.reshape(q, (BLOCK_T, G // 4, 2, 2)))
        q0, q2 = tl.split(lo)
        q1, q3 = tl.split(hi)
        return q0 | (q1 << 2) | (q2 << 4) | (q3 << 6)


@triton.jit
def _unpack_rows(b, BLOCK_T: tl.constexpr, G: tl.constexpr, BITS: tl.constexpr):
    """Inverse of _pack_rows: [BLOCK_T, G / PPB] bytes -> [BLOCK_T, G] codes."""
    LEVELS: tl.constexpr = (1 << BITS) - 1
    if BITS == 4:
        q = tl.join(b & LEVELS, (b >> 4) & LEVELS)
    else:
        q = tl.join(tl.join(b & LEVELS, (b >> 4) & LEVELS),
                    tl.join((b >> 2) & LEVELS, (b >> 6) & LEVELS))
    return tl.reshape(q, (BLOCK_T, G))


@triton.jit
def _quant_values_block(
    x_ptr, scale_ptr, min_ptr, codes_ptr, n, p1, p2,
    H, T, D, NGD, stride_l, stride_h, stride_t,
    BITS: tl.constexpr, G: tl.constexpr, BLOCK_T: tl.constexpr,
):
    # One contiguous [BLOCK_T, G] tile (a channel group of BLOCK_T tokens); the packing pairs
    # neighbouring channels with tl.split, which stays within a thread's registers.
    PPB: tl.constexpr = 8 // BITS
    LEVELS: tl.constexpr = (1 << BITS) - 1
    tv = p1 * BLOCK_T + tl.arange(0, BLOCK_T)
    g = p2
    t = tv[:, None]
    d = g * G + tl.arange(0, G)[None, :]
    mask = (t < T) & (d < D)
    base = x_ptr + (n // H) * stride_l + (n % H) * stride_h
    x = tl.load(base + t * stride_t + d, mask=mask, other=0.0).to(tl.float32)
    mn = tl.min(tl.where(mask, x, float("inf")), axis=1)
    mx = tl.max(tl.where(mask, x, float("-inf")), axis=1)
    t_ok = tv < T
    m, s, inv = _group_params(tl.where(t_ok, mn, 0.0), tl.where(t_ok, mx, 0.0), LEVELS)
    q = tl.where(mask, _quant(x, m[:, None], inv[:, None], LEVELS), 0)
    packed = _pack_rows(q, BLOCK_T, G, BITS)
    rr = tl.arange(0, G // PPB)[None, :]
    row = n * T + tv
    code_offs = row[:, None] * (NGD * (G // PPB)) + g * (G // PPB) + rr
    tl.store(codes_ptr + code_offs, packed.to(tl.uint8), mask=t_ok[:, None])
    tl.store(scale_ptr + row * NGD + g, s.to(tl.float16), mask=t_ok)
    tl.store(min_ptr + row * NGD + g, m.to(tl.float16), mask=t_ok)


@triton.jit
def _store_f32(ptrs, x, mask, SOFT_BF16: tl.constexpr):
    if SOFT_BF16:
        tl.store(ptrs, f32_to_bf16_bits(x).to(tl.int16), mask=mask)
    else:
        tl.store(ptrs, x.to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _dequant_keys_block(
    scale_ptr, min_ptr, codes_ptr, out_ptr, n, p1, p2,
    H, T, D, NG, stride_l, stride_h, stride_t,
    BITS: tl.constexpr, G: tl.constexpr, BLOCK_D: tl.constexpr, SOFT_BF16: tl.constexpr,
):
    PPB: tl.constexpr = 8 // BITS
    LEVELS: tl.constexpr = (1 << BITS) - 1
    g = p1
    dv = p2 * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = dv < D
    r = tl.arange(0, G // PPB)[:, None]
    d = dv[None, :]
    code_offs = ((n * NG + g) * (G // PPB) + r) * D + d
    b = tl.load(codes_ptr + code_offs, mask=d_ok[None, :], other=0).to(tl.int32)
    s = tl.load(scale_ptr + (n * NG + g) * D + dv, mask=d_ok, other=0.0).to(tl.float32)
    m = tl.load(min_ptr + (n * NG + g) * D + dv, mask=d_ok, other=0.0).to(tl.float32)
    base = out_ptr + (n // H) * stride_l + (n % H) * stride_h
    for j in tl.static_range(PPB):  # token r*PPB + j from bits j*BITS of byte row r
        x = m[None, :] + ((b >> (j * BITS)) & LEVELS).to(tl.float32) * s[None, :]
        t = g * G + r * PPB + j
        _store_f32(base + t * stride_t + d, x, (t < T) & (d < D), SOFT_BF16)


@triton.jit
def _dequant_keys_rot_block(
    scale_ptr, min_ptr, codes_ptr, rot_ptr, cs_ptr, out_ptr, n, gb, nb,
    H, T, D, NG, stride_l, stride_h, stride_t,
    BITS: tl.constexpr, G: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr,
    GROUPS: tl.constexpr, ROT_N: tl.constexpr, SOFT_BF16: tl.constexpr,
):
    # Every rotated channel of a token is needed for each output channel: a program reads all
    # of the group's codes (small, shared through L2) and writes output channels nv only.
    PPB: tl.constexpr = 8 // BITS
    LEVELS: tl.constexpr = (1 << BITS) - 1
    dv = tl.arange(0, BLOCK_D)
    d_ok = dv < D
    r = tl.arange(0, ROWS)[:, None]
    nv = nb * ROT_N + tl.arange(0, ROT_N)
    base = out_ptr + (n // H) * stride_l + (n % H) * stride_h
    pt = tl.load(rot_ptr + nv[None, :] * BLOCK_D + dv[:, None])  # P^T[:, nv]
    cs = tl.load(cs_ptr + dv)
    for gi in range(GROUPS):
        g = gb * GROUPS + gi
        ok = d_ok & ((dv * 0 + g) < NG)  # a vector: the interpreter refuses a scalar mask
        code_offs = ((n * NG + g) * (G // PPB) + r) * D + dv[None, :]
        b = tl.load(codes_ptr + code_offs, mask=(r < G // PPB) & ok[None, :], other=0)
        b = b.to(tl.int32)
        s = tl.load(scale_ptr + (n * NG + g) * D + dv, mask=ok, other=0.0).to(tl.float32)
        m = tl.load(min_ptr + (n * NG + g) * D + dv, mask=ok, other=0.0).to(tl.float32)
        for j in tl.static_range(PPB):  # token r*PPB + j from bits j*BITS of byte row r
            y = m[None, :] + ((b >> (j * BITS)) & LEVELS).to(tl.float32) * s[None, :]
            yc = tl.minimum(tl.maximum(y * cs[None, :], -65504.0), 65504.0)  # fp16 dot input
            k = tl.dot(yc.to(tl.float16), pt)
            t = g * G + r * PPB + j
            _store_f32(base + t * stride_t + nv[None, :], k,
                       (r < G // PPB) & (t < T) & (nv[None, :] < D), SOFT_BF16)


@triton.jit
def _dequant_values_block(
    scale_ptr, min_ptr, codes_ptr, out_ptr, n, p1, p2,
    H, T, D, NGD, stride_l, stride_h, stride_t,
    BITS: tl.constexpr, G: tl.constexpr, BLOCK_T: tl.constexpr, SOFT_BF16: tl.constexpr,
):
    PPB: tl.constexpr = 8 // BITS
    tv = p1 * BLOCK_T + tl.arange(0, BLOCK_T)
    g = p2
    t_ok = tv < T
    row = n * T + tv
    rr = tl.arange(0, G // PPB)[None, :]
    code_offs = row[:, None] * (NGD * (G // PPB)) + g * (G // PPB) + rr
    b = tl.load(codes_ptr + code_offs, mask=t_ok[:, None], other=0).to(tl.int32)
    q = _unpack_rows(b, BLOCK_T, G, BITS)  # [BLOCK_T, G]
    s = tl.load(scale_ptr + row * NGD + g, mask=t_ok, other=0.0).to(tl.float32)
    m = tl.load(min_ptr + row * NGD + g, mask=t_ok, other=0.0).to(tl.float32)
    x = m[:, None] + q.to(tl.float32) * s[:, None]
    t = tv[:, None]
    d = g * G + tl.arange(0, G)[None, :]
    base = out_ptr + (n // H) * stride_l + (n % H) * stride_h
    _store_f32(base + t * stride_t + d, x, (t < T) & (d < D), SOFT_BF16)


@triton.jit
def _kivi_quant_kernel(
    k_ptr, v_ptr, k_scale_ptr, k_min_ptr, k_codes_ptr, v_scale_ptr, v_min_ptr, v_codes_ptr,
    rot_ptr, cs_ptr,
    H, T, D, NG, NGD, N_DBLK, N_TBLK, N_KEY_PROGRAMS, stride_l, stride_h, stride_t,
    BITS: tl.constexpr, G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    ROTATE: tl.constexpr, ROWS: tl.constexpr, GROUPS: tl.constexpr, ROT_N: tl.constexpr,
):
    # One launch for both halves (key groups: programs [0, N_KEY_PROGRAMS), value groups: the
    # rest): a launch costs ~40 us of host time, as much as the kernels' own time on a 64 MiB
    # chunk, so two launches made a stream of chunks host-bound.
    pid = tl.program_id(0)
    if pid < N_KEY_PROGRAMS:
        n = (pid // (NG * N_DBLK)).to(tl.int64)
        r = pid % (NG * N_DBLK)
        if ROTATE:  # N_DBLK = number of GROUPS-group blocks per head: see _grid
            NNB: tl.constexpr = BLOCK_D // ROT_N
            _quant_keys_rot_block(k_ptr, k_scale_ptr, k_min_ptr, k_codes_ptr, rot_ptr, cs_ptr,
                                  (pid // N_DBLK).to(tl.int64), pid % N_DBLK // NNB,
                                  pid % N_DBLK % NNB, H, T, D, NG, stride_l, stride_h, stride_t,
                                  BITS, G, BLOCK_D, ROWS, GROUPS, ROT_N)
        else:
            _quant_keys_block(k_ptr, k_scale_ptr, k_min_ptr, k_codes_ptr, n, r // N_DBLK,
                              r % N_DBLK, H, T, D, NG, stride_l, stride_h, stride_t,
                              BITS, G, BLOCK_D)
    else:
        q = pid - N_KEY_PROGRAMS
        n = (q // (N_TBLK * NGD)).to(tl.int64)
        r = q % (N_TBLK * NGD)
        _quant_values_block(v_ptr, v_scale_ptr, v_min_ptr, v_codes_ptr, n, r // NGD, r % NGD,
                            H, T, D, NGD, stride_l, stride_h, stride_t, BITS, G, BLOCK_T)


@triton.jit
def _kivi_dequant_kernel(
    k_scale_ptr, k_min_ptr, k_codes_ptr, v_scale_ptr, v_min_ptr, v_codes_ptr, k_out, v_out,
    rot_ptr, cs_ptr,
    H, T, D, NG, NGD, N_DBLK, N_TBLK, N_KEY_PROGRAMS, stride_l, stride_h, stride_t,
    BITS: tl.constexpr, G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    SOFT_BF16: tl.constexpr, ROTATE: tl.constexpr, ROWS: tl.constexpr, GROUPS: tl.constexpr,
    ROT_N: tl.constexpr,
):
    pid = tl.program_id(0)
    if pid < N_KEY_PROGRAMS:
        n = (pid // (NG * N_DBLK)).to(tl.int64)
        r = pid % (NG * N_DBLK)
        if ROTATE:
            NNB: tl.constexpr = BLOCK_D // ROT_N
            _dequant_keys_rot_block(k_scale_ptr, k_min_ptr, k_codes_ptr, rot_ptr, cs_ptr, k_out,
                                    (pid // N_DBLK).to(tl.int64), pid % N_DBLK // NNB,
                                    pid % N_DBLK % NNB, H, T, D, NG, stride_l, stride_h,
                                    stride_t, BITS, G, BLOCK_D, ROWS, GROUPS, ROT_N, SOFT_BF16)
        else:
            _dequant_keys_block(k_scale_ptr, k_min_ptr, k_codes_ptr, k_out, n, r // N_DBLK,
                                r % N_DBLK, H, T, D, NG, stride_l, stride_h, stride_t,
                                BITS, G, BLOCK_D, SOFT_BF16)
    else:
        q = pid - N_KEY_PROGRAMS
        n = (q // (N_TBLK * NGD)).to(tl.int64)
        r = q % (N_TBLK * NGD)
        _dequant_values_block(v_scale_ptr, v_min_ptr, v_codes_ptr, v_out, n, r // NGD, r % NGD,
                              H, T, D, NGD, stride_l, stride_h, stride_t, BITS, G, BLOCK_T,
                              SOFT_BF16)


# ----------------------------------------------------------------------------- launchers


def kivi_quantize(x: torch.Tensor, bits: int, group_size: int = 32,
                  backend: str = "auto", rotate_keys: bool = False) -> torch.Tensor:
    """Quantize an LKHTD chunk x (fp16/bf16/fp32, finite, |x| <= 65504; with rotate_keys, keys
    |k| <= 65504 / sqrt(D)) into a new 1-D uint8 payload on x's device (layout in the module
    docstring). x is not modified."""
    lay = _check_input(x, bits, group_size, rotate_keys)
    if select_backend(backend, x.device, _kivi_quant_kernel) == "torch":
        return kivi_quantize_ref(x, bits, group_size, rotate_keys)
    payload = torch.empty(lay.nbytes, dtype=torch.uint8, device=x.device)
    k_in, v_in = _kv_views(x)
    grid, sizes, blocks, warps = _grid(lay, rotate_keys, "quant")
    k_scale, k_min, v_scale, v_min, k_codes, v_codes = lay.flat_views(payload)
    _kivi_quant_kernel[grid](
        k_in, v_in, k_scale, k_min, k_codes, v_scale, v_min, v_codes,
        *_rotation_args(lay, rotate_keys, k_scale), *sizes, *k_in.stride()[:3],
        BITS=bits, G=group_size, **blocks, ROTATE=rotate_keys, num_warps=warps,
    )
    return payload


def kivi_dequantize(
    payload: torch.Tensor, shape: tuple[int, ...] | list[int], bits: int, group_size: int,
    dtype: torch.dtype, backend: str = "auto", rotate_keys: bool = False,
) -> torch.Tensor:
    """Decode a KIVI payload (1-D uint8 on any device) into a new contiguous LKHTD tensor of
    `shape` and `dtype` on the payload's device."""
    lay = _check_payload(payload, shape, bits, group_size, dtype, rotate_keys)
    if select_backend(backend, payload.device, _kivi_dequant_kernel) == "torch":
        return kivi_dequantize_ref(payload, shape, bits, group_size, dtype, rotate_keys)
    out = torch.empty(tuple(shape), dtype=dtype, device=payload.device)
    soft_bf16 = dtype == torch.bfloat16 and payload.device.type != "cuda"
    k_out, v_out = _kv_views(out.view(torch.int16) if soft_bf16 else out)
    grid, sizes, blocks, warps = _grid(lay, rotate_keys, "dequant")
    k_scale, k_min, v_scale, v_min, k_codes, v_codes = lay.flat_views(payload)
    _kivi_dequant_kernel[grid](
        k_scale, k_min, k_codes, v_scale, v_min, v_codes, k_out, v_out,
        *_rotation_args(lay, rotate_keys, k_scale), *sizes, *k_out.stride()[:3],
        BITS=bits, G=group_size, **blocks, SOFT_BF16=soft_bf16, ROTATE=rotate_keys,
        num_warps=warps,
    )
    return out


def _rotation_args(lay: KiviLayout, rotate: bool,
                   dummy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, c) for rotated keys; unrotated launches pass any tensor (never read), so that they do
    not build and cache a D x D matrix."""
    return hadamard.rotation(lay.D, dummy.device) if rotate else (dummy, dummy)


def _kv_views(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V as [L, H, T, D] views of an LKHTD tensor (strides of x; last dim contiguous)."""
    return x[:, 0], x[:, 1]


def _grid(lay: KiviLayout, rotate: bool,
          op: str) -> tuple[tuple[int], tuple[int, ...], dict[str, int], int]:
    """(1-D grid, the size arguments H..N_KEY_PROGRAMS, block constexprs, num_warps) from
    LAUNCH. A rotated-key program reads all channels of `rotate_groups` consecutive groups and
    writes `rotate_n_<op>` of them (op: "quant" or "dequant"; measured best apart,
    docs/results/quant_h100_rotation_sweep.txt); N_DBLK is then (group blocks x channel blocks)
    per head."""
    G = lay.group_size
    block_t = max(1, min(triton.next_power_of_2(lay.T), LAUNCH["values_tile"] // G))
    n_tblk = triton.cdiv(lay.T, block_t)
    groups = LAUNCH["rotate_groups"]  # fixed, not min(., ng): one compiled kernel per shape class
    rot_n = 16
    if rotate:
        block_d = hadamard.padded_dim(lay.D)
        rot_n = max(16, min(LAUNCH[f"rotate_n_{op}"], block_d))  # tl.dot: N >= 16
        n_dblk = triton.cdiv(lay.ng, groups) * (block_d // rot_n)
        n_key = lay.L * lay.H * n_dblk
    else:
        block_d = min(triton.next_power_of_2(lay.D), max(16, LAUNCH["keys_tile"] // G))
        n_dblk = triton.cdiv(lay.D, block_d)
        n_key = lay.L * lay.H * lay.ng * n_dblk
    n_val = lay.L * lay.H * n_tblk * lay.ngd
    sizes = (lay.H, lay.T, lay.D, lay.ng, lay.ngd, n_dblk, n_tblk, n_key)
    warps = LAUNCH["rotate_num_warps" if rotate else "num_warps"]
    # tl.dot needs >= 16 rows: a group's row slices (G / PPB tokens) are padded up to that.
    blocks = {"BLOCK_D": block_d, "BLOCK_T": block_t, "ROWS": max(16, G // lay.ppb),
              "GROUPS": groups if rotate else 1, "ROT_N": rot_n}
    return (n_key + n_val,), sizes, blocks, warps


# ----------------------------------------------------------------------------- torch reference


def kivi_quantize_ref(x: torch.Tensor, bits: int, group_size: int = 32,
                      rotate_keys: bool = False) -> torch.Tensor:
    """Plain-torch reference of kivi_quantize (same payload, bit for bit without rotate_keys;
    with it, the fp32 sums of the rotation may round differently, so a code at a rounding
    boundary may differ by one step)."""
    lay = _check_input(x, bits, group_size, rotate_keys)
    payload = torch.empty(lay.nbytes, dtype=torch.uint8, device=x.device)
    v = lay.views(payload)
    L, H, T, D, G, P = lay.L, lay.H, lay.T, lay.D, group_size, lay.ppb
    xf = x.float()
    keys = hadamard.rotate_ref(x[:, 0]) if rotate_keys else xf[:, 0]
    # Pad by repeating the last token / channel: the copies leave every group's min and max alone.
    k = _pad_last(keys.transpose(-1, -2), lay.t_pad).transpose(-1, -2)  # [L, H, Tp, D]
    kq, v["k_scale"][:], v["k_min"][:] = _quant_groups(k.reshape(L, H, lay.ng, G, D), 3, lay.levels)
    kq.view(L, H, lay.t_pad, D)[:, :, T:] = 0
    v["k_codes"][:] = _pack(kq.reshape(L, H, lay.t_pad // P, P, D), 3, bits)
    vals = _pad_last(xf[:, 1], lay.d_pad).reshape(L, H, T, lay.ngd, G)
    vq, v["v_scale"][:], v["v_min"][:] = _quant_groups(vals, 4, lay.levels)
    vq = vq.reshape(L, H, T, lay.d_pad)
    vq[..., D:] = 0
    v["v_codes"][:] = _pack(vq.reshape(L, H, T, lay.d_pad // P, P), 4, bits)
    return payload


def kivi_dequantize_ref(
    payload: torch.Tensor, shape: tuple[int, ...] | list[int], bits: int, group_size: int,
    dtype: torch.dtype, rotate_keys: bool = False,
) -> torch.Tensor:
    """Plain-torch reference of kivi_dequantize."""
    lay = _check_payload(payload, shape, bits, group_size, dtype, rotate_keys)
    v = lay.views(payload)
    L, H, T, D, G = lay.L, lay.H, lay.T, lay.D, group_size
    out = torch.empty(tuple(shape), dtype=dtype, device=payload.device)
    kq = _unpack(v["k_codes"], 2, bits).reshape(L, H, lay.ng, G, D)
    k = v["k_min"].float()[:, :, :, None, :] + kq.float() * v["k_scale"].float()[:, :, :, None, :]
    k = k.reshape(L, H, lay.t_pad, D)[:, :, :T]
    out[:, 0] = hadamard.unrotate_ref(k) if rotate_keys else k
    vq = _unpack(v["v_codes"], 3, bits).reshape(L, H, T, lay.ngd, G)
    val = v["v_min"].float()[..., None] + vq.float() * v["v_scale"].float()[..., None]
    out[:, 1] = val.reshape(L, H, T, lay.d_pad)[..., :D]
    return out


def _pad_last(x: torch.Tensor, size: int) -> torch.Tensor:
    extra = size - x.shape[-1]
    return x if extra == 0 else torch.cat([x, x[..., -1:].expand(*x.shape[:-1], extra)], dim=-1)


def _quant_groups(x: torch.Tensor, dim: int, levels: int):
    """(codes uint8 like x, fp16 scale, fp16 min) with groups along `dim` of fp32 x."""
    mn, mx = x.amin(dim=dim), x.amax(dim=dim)
    # Tensor / tensor again: on CUDA `t / scalar` becomes t * (1 / scalar), not the quotient.
    s16, m16 = ((mx - mn) / torch.full_like(mx, levels)).half(), mn.half()
    s, m = s16.float().unsqueeze(dim), m16.float().unsqueeze(dim)
    # A tensor / tensor division: torch computes `1.0 / t` as reciprocal(t), which need not be
    # the correctly rounded quotient the kernel's div_rn gives.
    inv = torch.where(s > 0, torch.ones_like(s) / torch.where(s > 0, s, 1.0), 0.0)
    q = torch.floor((x - m) * inv + 0.5).clamp_(0, levels)
    return q.to(torch.uint8), s16, m16


def _pack(q: torch.Tensor, dim: int, bits: int) -> torch.Tensor:
    """Pack the codes along `dim` (of size 8 / bits) into bytes, first code in the low bits."""
    shifts = (torch.arange(q.shape[dim], device=q.device, dtype=torch.int32) * bits)
    shape = [1] * q.dim()
    shape[dim] = -1
    return (q.to(torch.int32) << shifts.view(shape)).sum(dim=dim).to(torch.uint8)


def _unpack(packed: torch.Tensor, dim: int, bits: int) -> torch.Tensor:
    """Inverse of _pack: a new axis of size 8 / bits after `dim`, merged into it."""
    ppb = 8 // bits
    shifts = torch.arange(ppb, device=packed.device, dtype=torch.int32) * bits
    shape = [1] * (packed.dim() + 1)
    shape[dim + 1] = ppb
    q = (packed.to(torch.int32).unsqueeze(dim + 1) >> shifts.view(shape)) & ((1 << bits) - 1)
    return q.flatten(dim, dim + 1)


# ----------------------------------------------------------------------------- checks


def _check_rotation(rotate_keys: bool, group_size: int, head_dim: int) -> None:
    if rotate_keys and group_size < MIN_ROTATED_GROUP:
        raise KernelInputError(f"KIVI key rotation needs group size >= {MIN_ROTATED_GROUP} "
                               f"(a tensor-core dot over the group's tokens), got {group_size}")
    if rotate_keys and head_dim > MAX_ROTATED_HEAD_DIM:
        raise KernelInputError(f"KIVI key rotation supports head dims up to "
                               f"{MAX_ROTATED_HEAD_DIM}, got {head_dim}")


def _check_input(x: torch.Tensor, bits: int, group_size: int, rotate_keys: bool) -> KiviLayout:
    if not isinstance(x, torch.Tensor):
        raise KernelInputError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in KIVI_DTYPES:
        raise KernelInputError(f"KIVI quantizes float16/bfloat16/float32, got {x.dtype}")
    lay = kivi_layout(x.shape, bits, group_size)
    _check_rotation(rotate_keys, group_size, lay.D)
    if x.stride(-1) != 1:
        raise KernelInputError("KIVI input must have a contiguous last dimension")
    return lay


def _check_payload(payload: torch.Tensor, shape, bits: int, group_size: int,
                   dtype: torch.dtype, rotate_keys: bool) -> KiviLayout:
    if dtype not in KIVI_DTYPES:
        raise KernelInputError(f"KIVI output dtype must be float16/bfloat16/float32, got {dtype}")
    lay = kivi_layout(shape, bits, group_size)
    _check_rotation(rotate_keys, group_size, lay.D)
    if payload.dtype != torch.uint8 or payload.dim() != 1 or not payload.is_contiguous():
        raise KernelInputError("KIVI payload must be a contiguous 1-D uint8 tensor")
    if payload.numel() != lay.nbytes:
        raise KernelInputError(f"KIVI payload of shape {tuple(shape)}, {bits} bits, group size "
                               f"{group_size} must be {lay.nbytes} bytes, got {payload.numel()}")
    if payload.data_ptr() % 2:
        raise KernelInputError("KIVI payload must start at a 2-byte aligned address")
    return lay


__all__ = [
    "GROUP_SIZES", "KIVI_BITS", "KIVI_DTYPES", "MAX_ROTATED_HEAD_DIM", "MIN_ROTATED_GROUP",
    "KiviLayout", "kivi_dequantize",
    "kivi_dequantize_ref", "kivi_layout", "kivi_payload_nbytes", "kivi_quantize",
    "kivi_quantize_ref",
]
