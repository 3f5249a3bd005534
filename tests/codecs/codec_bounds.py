"""The documented per-element error bounds of the lossy codecs, computed from the original tensor.

kivi (kvstore_kernels/quant_kivi.py): |x_hat - x| <= 0.51 * (mx - mn) / levels
    + 2**-10 * max(|mn|, |mx|) + 2**-20 + half an ulp of the output dtype, per group [mn, mx].
    With key_rotation "hadamard" that bound b holds per element of the rotated keys y = k R, and
    R is orthogonal, so each key vector's error has L2 norm <= ||b||_2 plus the fp16 roundings
    of k before the rotation and of y_hat before the inverse (2**-11 relative each): checked per
    key vector (assert_kivi_within).
fp8 (kvstore_kernels/fp8.py): |x_hat - x| <= 2**-4 * |x| + 2**-10 * amax / 448 + half an ulp,
    amax per row of the last dimension.
"""

import torch

from kvstore_kernels.hadamard import rotate_ref


def half_ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.abs() * torch.finfo(dtype).eps / 2


def kivi_bound(x: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Per-element bound for an LKHTD chunk x (any float dtype) encoded without key rotation."""
    levels = (1 << bits) - 1
    xf = x.float()
    L, _, H, T, D = xf.shape
    G = group_size
    tp, dp = -(-T // G) * G, -(-D // G) * G
    keys = torch.cat([xf[:, 0], xf[:, 0, :, -1:].expand(L, H, tp - T, D)], dim=2)
    kb = _group_bound(keys.view(L, H, tp // G, G, D), 3, levels).reshape(L, H, tp, D)[:, :, :T]
    vals = torch.cat([xf[:, 1], xf[:, 1, ..., -1:].expand(L, H, T, dp - D)], dim=3)
    vb = _group_bound(vals.view(L, H, T, dp // G, G), 4, levels).reshape(L, H, T, dp)[..., :D]
    # The output rounding is half an ulp of x_hat, which is at most |x| + bound.
    bound = torch.stack([kb, vb], dim=1)
    return bound * (1 + torch.finfo(x.dtype).eps) + half_ulp(xf, x.dtype) * 1.01


def rotated_key_norm_bound(x: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """[L, H, T] bound on the L2 norm of each key vector's error with key_rotation "hadamard":
    the per-element bound of the rotated keys y = k R, as an L2 norm (R is orthogonal), plus the
    fp16 roundings of k and of y_hat (2**-11 relative each) and the output's rounding."""
    levels = (1 << bits) - 1
    L, _, H, T, D = x.shape
    G = group_size
    tp = -(-T // G) * G
    y = rotate_ref(x[:, 0])
    y = torch.cat([y, y[:, :, -1:].expand(L, H, tp - T, D)], dim=2)
    yb = _group_bound(y.view(L, H, tp // G, G, D), 3, levels).reshape(L, H, tp, D)[:, :, :T]
    norm = yb.norm(dim=-1)
    k_norm = x[:, 0].float().norm(dim=-1)
    out_rounding = (k_norm + norm) * torch.finfo(x.dtype).eps / 2 * 1.01
    return norm * (1 + 2.0**-10) + 2.0**-10 * (k_norm + norm) + out_rounding + 2.0**-20


def assert_kivi_within(decoded: torch.Tensor, x: torch.Tensor, bits: int, group_size: int,
                       key_rotation: str = "hadamard") -> None:
    """Unrotated: every element within kivi_bound. Rotated: values element by element, keys by
    the L2 norm of each key vector's error (an element-wise bound would be sqrt(D) times looser
    and pass a decoder that returns zeros)."""
    if key_rotation == "none":
        assert_within(decoded, x, kivi_bound(x, bits, group_size))
        return
    assert_within(decoded[:, 1], x[:, 1], kivi_bound(x, bits, group_size)[:, 1])
    err = (decoded[:, 0].float() - x[:, 0].float()).norm(dim=-1)
    bound = rotated_key_norm_bound(x, bits, group_size)
    over = err > bound
    worst = (err / bound.clamp_min(1e-30)).max()
    assert not over.any(), f"{int(over.sum())} key vectors exceed the bound, worst by {worst:.3f}x"


def _group_bound(groups: torch.Tensor, dim: int, levels: int) -> torch.Tensor:
    mn, mx = groups.amin(dim, keepdim=True), groups.amax(dim, keepdim=True)
    bound = 0.51 * (mx - mn) / levels + 2.0**-10 * torch.maximum(mn.abs(), mx.abs()) + 2.0**-20
    return bound.expand_as(groups)


def fp8_bound(x: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True)
    bound = 2.0**-4 * xf.abs() * 1.001 + 2.0**-10 * amax / 448
    return bound * (1 + torch.finfo(x.dtype).eps) + half_ulp(xf, x.dtype) * 1.01


def assert_within(decoded: torch.Tensor, x: torch.Tensor, bound: torch.Tensor) -> None:
    err = (decoded.float() - x.float()).abs()
    over = err > bound
    worst = (err / bound.clamp_min(1e-30)).max()
    assert not over.any(), f"{int(over.sum())} elements exceed the bound, worst by {worst:.3f}x"
