"""rerotate_keys: triton vs the torch reference, RoPE composition, independent formulas, errors."""

import pytest
import torch

from kvstore_kernels.errors import KernelInputError
from kvstore_kernels.rope import (
    apply_rope_ref,
    rerotate_keys,
    rerotate_keys_ref,
    rope_inv_freq,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
PAIRINGS = ["neox", "gptj"]


def _keys(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 2).to(dtype)


def _delta(T, lo=-3000, hi=30000, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, (T,), generator=g)


@pytest.mark.parametrize("rot_dim", [64, 32], ids=["full", "partial"])
@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rerotate_matches_reference(dtype, pairing, rot_dim, assert_close):
    k = _keys((1, 2, 37, 64), dtype)  # T = 37: a partial last token block
    delta = _delta(37)
    inv_freq = rope_inv_freq(rot_dim, theta=500000.0)
    out = rerotate_keys(k, delta, inv_freq, pairing, backend="triton")
    assert out.dtype == dtype and out.shape == k.shape
    assert_close(out, rerotate_keys_ref(k, delta, inv_freq, pairing), "rope")
    assert torch.equal(out[..., rot_dim:], k[..., rot_dim:]), "non-rotary dims must be copied"


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_rerotate_strided_batched_and_3d(pairing, assert_close):
    # HF keys are often a transposed view of [B, T, H, D]; B = 2 exercises the batch stride.
    k = _keys((2, 19, 3, 32), torch.float32).transpose(1, 2)
    delta = _delta(19, seed=2).to(torch.int32)
    inv_freq = rope_inv_freq(24)
    assert not k.is_contiguous()
    assert_close(rerotate_keys(k, delta, inv_freq, pairing, backend="triton"),
                 rerotate_keys_ref(k, delta, inv_freq, pairing), "rope")
    k3 = k[1]
    out3 = rerotate_keys(k3, delta, inv_freq, pairing, backend="triton")
    assert out3.shape == k3.shape
    assert_close(out3, rerotate_keys_ref(k3, delta, inv_freq, pairing), "rope")


def test_rerotate_in_place(assert_close):
    k = _keys((1, 2, 20, 64), torch.float16)
    delta, inv_freq = _delta(20), rope_inv_freq(64)
    expected = rerotate_keys_ref(k, delta, inv_freq)
    returned = rerotate_keys(k, delta, inv_freq, out=k, backend="triton")
    assert returned is k
    assert_close(k, expected, "rope")


def test_rerotate_zero_delta_is_identity():
    k = _keys((1, 3, 16, 64), torch.float32)
    out = rerotate_keys(k, torch.zeros(16, dtype=torch.int64), rope_inv_freq(64),
                        backend="triton")
    torch.testing.assert_close(out, k, atol=0, rtol=0)


@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_composition_rope_then_rerotate_equals_rope_at_new_positions(dtype, pairing,
                                                                     assert_close):
    x = _keys((1, 2, 33, 64), torch.float32, seed=3)
    inv_freq = rope_inv_freq(64)
    p0 = torch.randperm(2048, generator=torch.Generator().manual_seed(4))[:33]
    p1 = torch.arange(33) + 1000
    stored = apply_rope_ref(x, p0, inv_freq, pairing).to(dtype)
    moved = rerotate_keys(stored, p1 - p0, inv_freq, pairing, backend="triton")
    assert_close(moved, apply_rope_ref(x, p1, inv_freq, pairing).to(dtype), "compose")


def _rope_hf_neox(x, positions, inv_freq):
    """HF Llama formula: x * cos + rotate_half(x) * sin, on the first rot dims, in fp64."""
    rot = 2 * inv_freq.numel()
    freqs = positions.double()[:, None] * inv_freq.double()[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    xr = x[..., :rot].double()
    x1, x2 = xr[..., : rot // 2], xr[..., rot // 2 :]
    rotated = xr * emb.cos() + torch.cat([-x2, x1], dim=-1) * emb.sin()
    return torch.cat([rotated, x[..., rot:].double()], dim=-1)


def _rope_complex_gptj(x, positions, inv_freq):
    """GPT-J / Meta Llama formula: adjacent pairs as complex numbers times e^(i p theta), fp64."""
    rot = 2 * inv_freq.numel()
    freqs = positions.double()[:, None] * inv_freq.double()[None, :]
    xr = x[..., :rot].double().reshape(*x.shape[:-1], rot // 2, 2)
    z = torch.view_as_complex(xr.contiguous()) * torch.polar(torch.ones_like(freqs), freqs)
    rotated = torch.view_as_real(z).flatten(-2)
    return torch.cat([rotated, x[..., rot:].double()], dim=-1)


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_kernel_and_reference_match_independent_formulas(pairing):
    x = _keys((1, 2, 24, 64), torch.float32, seed=5)
    inv_freq = rope_inv_freq(48)
    delta = _delta(24, lo=-500, hi=1500, seed=6)
    truth = (_rope_hf_neox if pairing == "neox" else _rope_complex_gptj)(x, delta, inv_freq)
    # The fp32 angle delta * theta is off by up to ~1e-4 rad at |delta| = 1500.
    for out in (rerotate_keys(x, delta, inv_freq, pairing, backend="triton"),
                rerotate_keys_ref(x, delta, inv_freq, pairing)):
        torch.testing.assert_close(out.double(), truth, atol=2e-3, rtol=1e-3)


def test_pairings_are_not_interchangeable():
    x = _keys((1, 1, 8, 16), torch.float32)
    delta, inv_freq = _delta(8), rope_inv_freq(16)
    neox = rerotate_keys(x, delta, inv_freq, "neox", backend="triton")
    gptj = rerotate_keys(x, delta, inv_freq, "gptj", backend="triton")
    assert (neox - gptj).abs().max() > 0.1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delta": torch.zeros(9, dtype=torch.int64)}, "delta must have 10 entries"),
        ({"delta": torch.zeros(10)}, "delta dtype"),
        ({"inv_freq": rope_inv_freq(64).double()}, "inv_freq dtype"),
        ({"inv_freq": rope_inv_freq(64)}, "inv_freq must have 1..D/2"),
        ({"inv_freq": torch.zeros(0)}, "inv_freq must have 1..D/2"),
        ({"pairing": "llama"}, "pairing must be one of"),
        ({"k": torch.zeros(2, 10, 32, dtype=torch.int8)}, "k dtype"),
        ({"k": torch.zeros(10, 32)}, r"k must be \[B, H, T, D\]"),
        ({"out": torch.zeros(1, 2, 10, 32, dtype=torch.float16)}, "out dtype"),
        ({"out": torch.zeros(1, 2, 11, 32)}, "out shape"),
        ({"backend": "cuda"}, "backend must be one of"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_rerotate_rejects_bad_input(kwargs, message):
    args = {"k": torch.zeros(1, 2, 10, 32), "delta": torch.zeros(10, dtype=torch.int64),
            "inv_freq": rope_inv_freq(16)} | kwargs
    with pytest.raises(KernelInputError, match=message):
        rerotate_keys(**args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rerotate_on_gpu_with_long_context_deltas(dtype, pairing, assert_close):
    # Angles up to ~1e6 rad: catches a GPU sin/cos that is inaccurate far from the origin.
    k = _keys((1, 8, 256, 128), dtype).cuda()
    delta = _delta(256, lo=-1_000_000, hi=1_000_000).cuda()
    inv_freq = rope_inv_freq(128, theta=500000.0).cuda()
    out = rerotate_keys(k, delta, inv_freq, pairing, backend="triton")
    assert_close(out, rerotate_keys_ref(k, delta, inv_freq, pairing), "rope")
