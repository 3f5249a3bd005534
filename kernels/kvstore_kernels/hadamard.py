"""The orthogonal key rotation of the KIVI codec: a block-diagonal Walsh-Hadamard transform.

Why. Per-channel int4 keys lose most of KIVI's quality on small models (docs/BENCHMARKS.md): a few
channels carry most of the range, and RoPE's fast-turning channel pairs swing across each group of
tokens. Rotating every key vector by an orthogonal matrix R before quantizing spreads both over all
channels; dequantizing multiplies by R^T, so keys come back in their own basis and nothing else
(attention, RoPE re-rotation, blending) needs to know. QuaRot and SpinQuant use the same rotation.

Which R. The Sylvester Hadamard matrix H_n (n a power of two, entries +-1, H_n H_n^T = n I) scaled
by 1/sqrt(n); for a head dimension D that is not a power of two, one such block per set bit of D
(D = 80: blocks of 64 and 16), block-diagonal. R is fixed by D alone: no seed, nothing to store.

How it is applied. Entries are +-1 (exact in fp16) and the 1/sqrt(block) factor is a per-column
fp32 scale, so on the GPU the product is an fp16 tensor-core dot with fp32 accumulation:
    rotate:   y = dot(fp16(k), P) * c         (P: the +-1 matrix, c: column scales)
    unrotate: k = dot(fp16(y * c), P^T)        (P is symmetric, so P^T = P)
The matrix is padded with zeros to Dp = max(16, next power of two >= D) (tl.dot needs >= 16).
"""

from __future__ import annotations

import functools

import torch

FP16_MAX = 65504.0


def padded_dim(d: int) -> int:
    """The tile width the kernels use for a head dimension d."""
    return max(16, 1 << (d - 1).bit_length())


def blocks(d: int) -> list[int]:
    """Block sizes of the rotation for head dimension d: its set bits, largest first."""
    return [1 << b for b in range(d.bit_length() - 1, -1, -1) if d >> b & 1]


@functools.lru_cache(maxsize=32)
def _matrices(d: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    dp = padded_dim(d)
    p = torch.zeros(dp, dp)
    c = torch.zeros(dp)
    off = 0
    for n in blocks(d):
        h = torch.ones(1, 1)
        while h.shape[0] < n:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        p[off : off + n, off : off + n] = h
        c[off : off + n] = n**-0.5
        off += n
    return p.to(device=device, dtype=torch.float16), c.to(device)


def rotation(d: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(P [Dp, Dp] fp16 of +-1 and 0, c [Dp] fp32 column scales) for head dimension d; R = P diag(c)
    restricted to the first d rows and columns is orthogonal. Cached per (d, device)."""
    return _matrices(d, str(torch.device(device)))


def rotate_ref(k: torch.Tensor) -> torch.Tensor:
    """k [..., D] (any float dtype) -> fp32 k R, computed as the kernels do."""
    d = k.shape[-1]
    p, c = rotation(d, k.device)
    return (k.half().float() @ p[:d, :d].float()) * c[:d]


def unrotate_ref(y: torch.Tensor) -> torch.Tensor:
    """y [..., D] fp32 -> fp32 y R^T, computed as the kernels do (y * c clamped to the fp16
    range and rounded to fp16 first: the tensor-core input; a hostile payload can still decode
    to +-inf in an fp16 output, as its values can)."""
    d = y.shape[-1]
    p, c = rotation(d, y.device)
    yc = (y * c[:d]).clamp(-FP16_MAX, FP16_MAX).half().float()
    return yc @ p[:d, :d].float().T


__all__ = ["blocks", "padded_dim", "rotate_ref", "rotation", "unrotate_ref"]
