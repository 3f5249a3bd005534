"""Round trips of every codec on synthetic data with known properties (CPU, torch backend)."""

import pytest
import torch
from codec_bounds import assert_kivi_within, assert_within, fp8_bound

from kvstore import codecs
from kvstore.errors import InvalidArgument

FLOATS = (torch.float16, torch.bfloat16, torch.float32)
LOSSY = ("fp8-e4m3", "kivi-int4", "kivi-int2")


def _round_trip(x, codec, **params):
    enc = codecs.encode(x, codec, backend="torch", **params)
    codecs.validate(enc.codec, enc.codec_params, enc.dtype, enc.shape, enc.nbytes)
    out = codecs.decode(enc.to_bytes(), enc.codec, enc.codec_params, enc.dtype, enc.shape,
                        backend="torch")
    assert out.dtype == x.dtype and out.shape == x.shape
    return enc, out


def _kv(L=2, H=3, T=64, D=32, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(L, 2, H, T, D, generator=g) * 2).to(dtype)


@pytest.mark.parametrize("codec", ["identity", "shuffle-lz4"])
@pytest.mark.parametrize("dtype", [*FLOATS, torch.int8, torch.uint8, torch.int32, torch.int64,
                                   torch.float64, torch.float8_e4m3fn], ids=str)
@pytest.mark.parametrize("shape", [(2, 2, 3, 17, 8), (5,), (), (0, 4)], ids=str)
def test_lossless_is_bit_exact(codec, dtype, shape):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (*shape, torch.empty((), dtype=dtype).element_size()),
                      generator=g, dtype=torch.uint8).view(dtype).reshape(shape)
    enc, out = _round_trip(x, codec)
    assert torch.equal(_bytes(out), _bytes(x))  # bits, NaN payloads included
    assert enc.nbytes <= x.numel() * x.element_size()  # never larger than the raw tensor


def _bytes(t):
    return t.reshape(-1).view(torch.uint8)


def test_shuffle_lz4_compresses_repetitive_data_and_stores_noise_raw():
    constant = torch.full((4, 2, 2, 64, 64), 0.125, dtype=torch.bfloat16)
    assert codecs.encode(constant, "shuffle-lz4").nbytes * 100 < constant.numel() * 2
    g = torch.Generator().manual_seed(2)
    noise = torch.randint(0, 256, (65536,), generator=g, dtype=torch.uint8).view(torch.float16)
    enc = codecs.encode(noise, "shuffle-lz4")
    assert enc.nbytes == noise.numel() * 2 and enc.codec_params["planes"] == "32768,32768"
    # fp16 in [1, 1.25) shares sign, exponent and top two mantissa bits: the high byte plane is
    # constant and shrinks to almost nothing, the low byte plane is noise and is stored raw.
    same_high_byte = (1 + torch.rand(32768, generator=g) / 4).to(torch.float16)
    low, high = (int(s) for s in codecs.encode(same_high_byte, "shuffle-lz4")
                 .codec_params["planes"].split(","))
    assert low == 32768 and high < 32768 // 50


def test_identity_payload_is_a_view_of_the_input():
    x = _kv()
    enc = codecs.encode(x, "identity")
    assert enc.payload.data_ptr() == x.data_ptr() and enc.nbytes == x.numel() * 2


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("bits", [4, 2])
def test_kivi_values_on_the_quantization_grid_are_exact(dtype, bits):
    """Every group holds min, max and grid points in between: decoding must give them back."""
    levels = (1 << bits) - 1
    g = torch.Generator().manual_seed(3)
    L, H, T, D, G = 2, 2, 64, 32, 16
    q = torch.randint(0, levels + 1, (L, 2, H, T, D), generator=g)
    q[:, 0, :, ::G, :] = 0  # each key group (G tokens of a channel) reaches 0 and levels
    q[:, 0, :, 1::G, :] = levels
    q[:, 1, :, :, ::G] = 0  # each value group (G channels of a token) too
    q[:, 1, :, :, 1::G] = levels
    # Power-of-two scales >= 1/8 and a zero point of -levels/2 keep every value within bf16's
    # 8 significant bits, so x is on the grid in every dtype (and m, s are exact in fp16).
    scale = 2.0 ** torch.randint(-3, 1, (L, 2, H, T, D), generator=g).float()
    scale[:, 0] = scale[:, 0, :, :1, :]  # constant per key channel (over tokens)...
    scale[:, 1] = scale[:, 1, :, :, :1]  # ...and per value token (over channels)
    zero = -float(levels) / 2
    x = (zero + q * scale).to(dtype)
    _, out = _round_trip(x, f"kivi-int{bits}", group_size=G, key_rotation="none")
    assert torch.equal(out, x)


@pytest.mark.parametrize("bits", [4, 2])
def test_kivi_quantizes_keys_per_channel_and_values_per_token(bits):
    """An outlier key channel and an outlier value token must not spoil their neighbours, which
    they would if keys were grouped per token or values per channel."""
    x = _kv(T=64, D=32, dtype=torch.float32, seed=4)
    x[:, 0, :, :, 5] *= 1000
    x[:, 1, :, 7, :] *= 1000
    _, out = _round_trip(x, f"kivi-int{bits}", key_rotation="none")
    assert_kivi_within(out, x, bits, 32, "none")
    err = (out - x).abs()
    normal_keys = torch.cat([err[:, 0, ..., :5], err[:, 0, ..., 6:]], dim=-1)
    normal_values = torch.cat([err[:, 1, :, :7], err[:, 1, :, 8:]], dim=2)
    step = 16 / ((1 << bits) - 1)  # randn * 2 stays within +-8 here
    assert normal_keys.max() <= step and normal_values.max() <= step


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("group_size, T, D, rotation", [
    (32, 37, 64, "none"), (16, 5, 24, "none"), (64, 200, 64, "none"), (4, 9, 6, "none"),
    (32, 37, 64, "hadamard"), (16, 5, 24, "hadamard"), (64, 200, 128, "hadamard"),
    (16, 20, 80, "hadamard"),  # D = 80: blocks of 64 and 16
])
def test_kivi_error_bound_with_padding(dtype, bits, group_size, T, D, rotation):
    x = _kv(T=T, D=D, dtype=dtype, seed=5)
    enc, out = _round_trip(x, f"kivi-int{bits}", group_size=group_size, key_rotation=rotation)
    assert enc.codec_params == {"group_size": str(group_size), "key_rotation": rotation}
    assert_kivi_within(out, x, bits, group_size, rotation)


def test_kivi_constant_groups_decode_exactly():
    x = torch.full((1, 2, 2, 40, 32), -3.25, dtype=torch.float16)
    for codec in ("kivi-int4", "kivi-int2"):
        assert torch.equal(_round_trip(x, codec, key_rotation="none")[1], x)
        # Rotated, constant keys are constant per rotated channel too; only the fp16 rounding
        # of the inverse rotation remains.
        rotated = _round_trip(x, codec)[1]
        assert torch.equal(rotated[:, 1], x[:, 1])
        assert (rotated[:, 0].float() - x[:, 0].float()).abs().max() <= 2e-3


def test_kivi_key_rotation_is_the_default_and_changes_only_keys():
    """With an outlier key channel, both transforms decode within their bounds, they decode
    keys differently, and values identically. (What the rotation buys is on real KV:
    test_real_kv and `kvstore bench codecs`.)"""
    x = _kv(T=64, D=32, dtype=torch.float32, seed=8)
    x[:, 0, ..., 3] *= 30
    enc, rotated = _round_trip(x, "kivi-int4")
    assert enc.codec_params["key_rotation"] == "hadamard"
    _, plain = _round_trip(x, "kivi-int4", key_rotation="none")
    assert_kivi_within(rotated, x, 4, 32, "hadamard")
    assert_kivi_within(plain, x, 4, 32, "none")
    assert not torch.equal(rotated, plain)  # a different transform, not a no-op
    assert torch.equal(rotated[:, 1], plain[:, 1])  # values are not rotated


@pytest.mark.parametrize("bits, group_size, T, D", [(2, 64, 200, 128), (4, 32, 64, 64)])
def test_kivi_rotated_bound_catches_broken_decoders(bits, group_size, T, D):
    """The check the rotated round trips rely on can fail: zero keys, or keys left in the rotated
    basis (no inverse rotation), are far outside it while the real decode is inside."""
    x = _kv(T=T, D=D, dtype=torch.float32, seed=10)
    enc, out = _round_trip(x, f"kivi-int{bits}", group_size=group_size)
    assert_kivi_within(out, x, bits, group_size)
    zeros = out.clone()
    zeros[:, 0] = 0
    no_inverse = codecs.decode(enc.to_bytes(), enc.codec, {**enc.codec_params,
                                                            "key_rotation": "none"},
                               enc.dtype, enc.shape)
    for broken in (zeros, no_inverse):
        with pytest.raises(AssertionError, match="key vectors exceed the bound"):
            assert_kivi_within(broken, x, bits, group_size)


def test_kivi_chunk_stored_without_key_rotation_decodes_unrotated():
    """Chunks written before the param existed carry only group_size: they are unrotated."""
    x = _kv(T=32, D=32, dtype=torch.float16, seed=9)
    enc = codecs.encode(x, "kivi-int4", key_rotation="none")
    old = codecs.decode(enc.to_bytes(), "kivi-int4", {"group_size": "32"}, enc.dtype, enc.shape)
    new = codecs.decode(enc.to_bytes(), enc.codec, enc.codec_params, enc.dtype, enc.shape)
    assert torch.equal(old, new)


@pytest.mark.parametrize("params, message", [
    ({"group_size": 8, "key_rotation": "hadamard"}, "needs group_size >= 16"),
    ({"key_rotation": "random"}, "key_rotation must be one of"),
])
def test_kivi_bad_rotation_params_are_refused(params, message):
    with pytest.raises(InvalidArgument, match=message):
        codecs.encode(_kv(), "kivi-int4", **params)


def test_kivi_small_groups_default_to_no_rotation():
    enc = codecs.encode(_kv(), "kivi-int4", group_size=8)
    assert enc.codec_params == {"group_size": "8", "key_rotation": "none"}


def test_kivi_head_dims_above_256_are_stored_unrotated_and_say_so():
    x = _kv(L=1, H=1, T=32, D=320, dtype=torch.float16, seed=11)
    enc, out = _round_trip(x, "kivi-int4")
    assert enc.codec_params == {"group_size": "32", "key_rotation": "none"}
    assert_kivi_within(out, x, 4, 32, "none")
    with pytest.raises(InvalidArgument, match="head dims up to 256"):
        codecs.validate("kivi-int4", {"group_size": "32", "key_rotation": "hadamard"},
                        "float16", x.shape, enc.nbytes)


def test_kivi_non_ascii_digits_are_invalid_argument():
    with pytest.raises(InvalidArgument, match="group_size"):
        codecs.encode(_kv(), "kivi-int4", group_size="\u00b2")


def test_kivi_rotated_keys_must_fit_fp16_after_rotation():
    x = _kv(D=64, dtype=torch.float32)
    x[0, 0, 0, 0, 0] = 9000.0  # fine unrotated; rotated, up to 9000 * sqrt(64) > 65504
    with pytest.raises(InvalidArgument, match="at most 8188"):
        codecs.encode(x, "kivi-int4")
    codecs.encode(x, "kivi-int4", key_rotation="none")


def test_kivi_bigger_groups_give_smaller_payloads():
    x = _kv(T=128, D=64)
    sizes = [codecs.encode(x, "kivi-int4", group_size=g).nbytes for g in (16, 32, 64)]
    assert sizes[0] > sizes[1] > sizes[2]
    assert sizes[1] * 8 == x.numel() * 5  # 4 bits + 32/32 bits of scale and zero point


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_fp8_exact_on_e4m3_values_with_power_of_two_scale(dtype):
    g = torch.Generator().manual_seed(6)
    codes = torch.randint(0, 0x7F, (2, 2, 3, 16, 32), generator=g, dtype=torch.uint8)
    codes[..., 0] = 0x7E  # 448 in every row, so the row scale is 2**k exactly
    values = codes.view(torch.float8_e4m3fn).float() * torch.where(
        torch.rand(codes.shape, generator=g) < 0.5, -1.0, 1.0)
    values[..., 0] = 448.0
    x = (values * 2.0 ** torch.randint(-8, -2, (2, 2, 3, 16, 1), generator=g)).to(dtype)
    _, out = _round_trip(x, "fp8-e4m3")
    assert torch.equal(out, x)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_fp8_error_bound_across_magnitudes(dtype):
    g = torch.Generator().manual_seed(7)
    scale = torch.exp(torch.randn(2, 2, 3, 32, 1, generator=g) * 3)
    x = (torch.randn(2, 2, 3, 32, 64, generator=g) * scale).to(dtype)
    x[0, 0, 0, 0] = 0  # an all-zero row decodes to zeros
    enc, out = _round_trip(x, "fp8-e4m3")
    assert enc.nbytes == x.numel() + x.numel() // 64 * 4
    assert_within(out, x, fp8_bound(x))
    assert torch.equal(out[0, 0, 0, 0], x[0, 0, 0, 0])


@pytest.mark.parametrize("codec", LOSSY)
def test_lossy_payload_is_on_the_input_device_and_decodes_to_a_new_tensor(codec):
    x = _kv()
    enc = codecs.encode(x, codec)
    assert enc.payload.dtype == torch.uint8 and enc.payload.dim() == 1
    out = codecs.decode(enc.payload, enc.codec, enc.codec_params, enc.dtype, enc.shape,
                        device="cpu")
    assert out.data_ptr() != enc.payload.data_ptr() and out.is_contiguous()
