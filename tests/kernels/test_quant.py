"""KIVI int4/int2 and fp8 quantization kernels against their plain-torch references.

The kernels run in triton's interpreter (tests/kernels/conftest.py). There both sides compute the
same fp32 operations in the same order without fused multiply-adds, so payloads and decoded tensors
must be identical bit for bit: any difference is a layout or rounding bug. (On a GPU, FMA
contraction and native casts may differ in the last bit; bench_quant_gpu checks with a tolerance.)
"""

import pytest
import torch
import triton
import triton.language as tl

from kvstore import codecs
from kvstore_kernels import fp8 as fp8k
from kvstore_kernels import quant_kivi as qk
from kvstore_kernels._softcvt import f32_to_bf16_bits, f32_to_e4m3_bits
from kvstore_kernels.errors import KernelInputError

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# (group size, T, D): T not a multiple of G, D a multiple of G, D not a multiple of G.
GEOMETRIES = ((8, 37, 24), (16, 32, 24), (4, 5, 8))


def _kv(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 2
    x[:, 0, :, :, 1] *= 20  # a key outlier channel, as real keys have
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", (2, 4))
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "G{}-T{}-D{}".format(*g))
def test_kivi_kernels_match_reference(dtype, bits, geometry):
    G, T, D = geometry
    x = _kv((2, 2, 3, T, D), dtype)
    expected = qk.kivi_quantize_ref(x, bits, G)
    payload = qk.kivi_quantize(x, bits, G, backend="triton")
    assert payload.numel() == qk.kivi_payload_nbytes(x.shape, bits, G)
    assert torch.equal(payload, expected), f"{(payload != expected).sum()} bytes differ"
    out = qk.kivi_dequantize(payload, x.shape, bits, G, dtype, backend="triton")
    assert torch.equal(out, qk.kivi_dequantize_ref(expected, x.shape, bits, G, dtype))


# Rotated keys (kvstore_kernels/hadamard.py): D = 24 and 80 are block-diagonal (16 + 8, 64 + 16);
# T = 100 and 300 with G = 16 are 7 and 19 groups: with LAUNCH["rotate_groups"] = 8 groups per
# program, one block is partial and, for 300, several are whole.
ROTATED_GEOMETRIES = ((16, 37, 24), (32, 64, 64), (16, 5, 80), (16, 100, 64),
                      (16, 300, 64))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", (2, 4))
@pytest.mark.parametrize("geometry", ROTATED_GEOMETRIES, ids=lambda g: "G{}-T{}-D{}".format(*g))
def test_kivi_rotated_kernels_match_reference(dtype, bits, geometry):
    G, T, D = geometry
    x = _kv((2, 2, 3, T, D), dtype)
    expected = qk.kivi_quantize_ref(x, bits, G, rotate_keys=True)
    payload = qk.kivi_quantize(x, bits, G, backend="triton", rotate_keys=True)
    # The rotation's fp32 sums (tl.dot vs torch matmul) may be added in another order, which can
    # move a value across a rounding boundary: allow a few bytes, never a layout-sized share.
    differ = int((payload != expected).sum())
    assert differ <= payload.numel() // 500, f"{differ} of {payload.numel()} bytes differ"
    out = qk.kivi_dequantize(payload, x.shape, bits, G, dtype, backend="triton", rotate_keys=True)
    ref = qk.kivi_dequantize_ref(payload, x.shape, bits, G, dtype, rotate_keys=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=torch.finfo(dtype).eps)
    assert torch.equal(out[:, 1], ref[:, 1])  # values are not rotated: exact as before
    unrotated = qk.kivi_dequantize_ref(payload, x.shape, bits, G, dtype)
    assert (out[:, 0].float() - unrotated[:, 0].float()).abs().max() > 0.1


@pytest.mark.parametrize("launch", [
    {"rotate_n_quant": 16, "rotate_n_dequant": 32, "rotate_groups": 1},
    {"rotate_n_quant": 128, "rotate_n_dequant": 16, "rotate_groups": 4},
], ids=["narrow", "mixed"])
def test_kivi_rotated_launch_shapes_do_not_change_results(monkeypatch, launch):
    """Output-channel blocks and groups per program split the same sums differently across
    programs, never within one: the payload and the decoded keys are the same bit for bit."""
    x = _kv((2, 2, 2, 100, 128), torch.bfloat16, seed=5)
    payload = qk.kivi_quantize(x, 4, 16, backend="triton", rotate_keys=True)
    out = qk.kivi_dequantize(payload, x.shape, 4, 16, torch.bfloat16, backend="triton",
                             rotate_keys=True)
    for key, value in launch.items():
        monkeypatch.setitem(qk.LAUNCH, key, value)
    assert torch.equal(qk.kivi_quantize(x, 4, 16, backend="triton", rotate_keys=True), payload)
    assert torch.equal(qk.kivi_dequantize(payload, x.shape, 4, 16, torch.bfloat16,
                                          backend="triton", rotate_keys=True), out)


def test_kivi_rotation_needs_groups_of_16():
    x = torch.zeros(1, 2, 1, 8, 8)
    with pytest.raises(KernelInputError, match="group size >= 16"):
        qk.kivi_quantize(x, 4, 8, backend="triton", rotate_keys=True)
    with pytest.raises(KernelInputError, match="group size >= 16"):
        qk.kivi_dequantize(torch.zeros(qk.kivi_payload_nbytes(x.shape, 4, 8), dtype=torch.uint8),
                           x.shape, 4, 8, torch.float16, rotate_keys=True)


def test_auto_backend_runs_the_triton_kernels_in_the_interpreter(monkeypatch):
    x = _kv((1, 2, 2, 40, 32), torch.float16, seed=3)
    expected = qk.kivi_quantize_ref(x, 4, 32)

    def no_torch(*args, **kwargs):
        raise AssertionError("backend auto fell back to the torch reference")

    monkeypatch.setattr(qk, "kivi_quantize_ref", no_torch)
    monkeypatch.setattr(fp8k, "fp8_quantize_ref", no_torch)
    assert torch.equal(qk.kivi_quantize(x, 4, 32), expected)
    fp8k.fp8_quantize(x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fp8_kernels_match_reference(dtype):
    g = torch.Generator().manual_seed(1)
    # Rows spanning 12 orders of magnitude, a zero row, a row with exact e4m3 ties, and a row
    # whose small entries land in e4m3's subnormal range after scaling.
    magnitude = torch.exp(torch.randn(3, 2, 2, 9, 1, generator=g) * 3)
    x = torch.randn(3, 2, 2, 9, 20, generator=g) * magnitude
    codes = torch.arange(0, 126, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    ties = (codes[:-1] + codes[1:]) / 2
    x = x.reshape(-1, 20)
    x[0] = 0.0
    x[1, :19] = ties[::6][:19]
    x[1, 19] = 448.0  # amax 448 -> scale exactly 1, so the ties stay ties
    x[2] = torch.tensor([1.0] + [2.0**-12 * k for k in range(1, 20)])
    x = x.reshape(3, 2, 2, 9, 20).to(dtype)
    expected = fp8k.fp8_quantize_ref(x)
    payload = fp8k.fp8_quantize(x, backend="triton")
    assert torch.equal(payload, expected), f"{(payload != expected).sum()} bytes differ"
    out = fp8k.fp8_dequantize(payload, x.shape, dtype, backend="triton")
    assert torch.equal(out, fp8k.fp8_dequantize_ref(expected, x.shape, dtype))


@triton.jit
def _soft_cvt_kernel(x_ptr, bf16_ptr, e4m3_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    v = tl.load(x_ptr + offs)
    tl.store(bf16_ptr + offs, f32_to_bf16_bits(v).to(tl.int16))
    clamped = tl.minimum(tl.maximum(v, -448.0), 448.0)
    tl.store(e4m3_ptr + offs, f32_to_e4m3_bits(clamped).to(tl.uint8))


def test_soft_conversions_round_to_nearest_even_like_torch():
    g = torch.Generator().manual_seed(2)
    e4m3 = torch.arange(0, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    e4m3_ties = (e4m3[:-1] + e4m3[1:]) / 2
    bf16 = torch.randn(200, generator=g).bfloat16().float()
    _, exponent = torch.frexp(bf16)  # |bf16| in [2**(e-1), 2**e): its ulp is 2**(e-8)
    bf16_ties = bf16 + torch.ldexp(torch.ones_like(bf16), exponent - 9)  # exactly half an ulp up
    x = torch.cat([e4m3_ties, -e4m3_ties, bf16_ties, torch.randn(300, generator=g) * 100,
                   torch.rand(300, generator=g) * 0.02, torch.tensor([0.0, -0.0, 448.0])])
    x = torch.cat([x, torch.zeros(2048 - x.numel())])
    out_bf16 = torch.empty(2048, dtype=torch.int16)
    out_e4m3 = torch.empty(2048, dtype=torch.uint8)
    _soft_cvt_kernel[(1,)](x, out_bf16, out_e4m3, 2048)
    assert torch.equal(out_bf16.view(torch.bfloat16), x.bfloat16())
    assert torch.equal(out_e4m3, x.clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8))


@pytest.mark.parametrize("codec", ["fp8-e4m3", "kivi-int4", "kivi-int2"])
def test_codec_through_triton_equals_torch(codec):
    x = _kv((2, 2, 2, 33, 16), torch.bfloat16, seed=4)
    via_triton = codecs.encode(x, codec, backend="triton", **_params(codec))
    via_torch = codecs.encode(x, codec, backend="torch", **_params(codec))
    assert torch.equal(via_triton.payload, via_torch.payload)
    args = (via_torch.payload, codec, via_torch.codec_params, "bfloat16", x.shape)
    via_triton, via_torch = (codecs.decode(*args, backend=b) for b in ("triton", "torch"))
    assert torch.equal(via_triton, via_torch)


def _params(codec):
    # unrotated: bit-exact in the interpreter (the rotated path has its own test above)
    return {"group_size": 16, "key_rotation": "none"} if codec.startswith("kivi") else {}


@pytest.mark.parametrize("call, match", [
    (lambda: qk.kivi_quantize(torch.zeros(1, 2, 1, 8, 8), 3, 32), "bits"),
    (lambda: qk.kivi_quantize(torch.zeros(1, 2, 1, 8, 8), 4, 24), "group size"),
    (lambda: qk.kivi_quantize(torch.zeros(2, 1, 8, 8), 4, 32), "LKHTD"),
    (lambda: qk.kivi_quantize(torch.zeros(1, 2, 1, 0, 8), 4, 32), "non-empty"),
    (lambda: qk.kivi_quantize(torch.zeros(1, 2, 1, 8, 8, dtype=torch.int8), 4, 32), "float16"),
    (lambda: qk.kivi_dequantize(torch.zeros(10, dtype=torch.uint8), (1, 2, 1, 8, 8), 4, 8,
                                torch.float16), "must be"),
    (lambda: fp8k.fp8_dequantize(torch.zeros(10, dtype=torch.uint8), (2, 8), torch.float16),
     "must be 24 bytes"),
    (lambda: fp8k.fp8_quantize(torch.zeros(())), "at least one dimension"),
])
def test_launchers_reject_bad_input(call, match):
    with pytest.raises(KernelInputError, match=match):
        call()


def test_kivi_layout_sizes():
    # int4, G=32, T=256, D=64: 4 + 32/32 bits per element for keys and values alike.
    lay = qk.kivi_layout((30, 2, 3, 256, 64), 4, 32)
    assert lay.nbytes * 8 == 30 * 2 * 3 * 256 * 64 * 5
    # T=37, G=16: keys padded to 48 tokens; D=24: values padded to 32 channels.
    lay = qk.kivi_layout((1, 2, 1, 37, 24), 2, 16)
    assert (lay.t_pad, lay.d_pad) == (48, 32)
    assert lay.nbytes == 2 * 3 * 24 * 2 + 2 * 37 * 2 * 2 + 48 * 24 // 4 + 37 * 32 // 4
