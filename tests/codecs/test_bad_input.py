"""A chunk whose metadata does not match its payload is rejected, never decoded into garbage."""

import pytest
import torch

from kvstore import codecs
from kvstore.errors import DataLoss, InvalidArgument

ALL = ("identity", "shuffle-lz4", "fp8-e4m3", "kivi-int4", "kivi-int2")
SHAPE = (2, 2, 3, 40, 32)


def _encoded(codec, dtype=torch.float16, **params):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(SHAPE, generator=g)).to(dtype)
    return codecs.encode(x, codec, backend="torch", **params)


def _decode(payload, enc, **overrides):
    meta = {"codec": enc.codec, "codec_params": enc.codec_params, "dtype": enc.dtype,
            "shape": enc.shape, **overrides}
    return codecs.decode(payload, meta["codec"], meta["codec_params"], meta["dtype"],
                         meta["shape"], backend="torch")


@pytest.mark.parametrize("codec", ALL)
@pytest.mark.parametrize("delta", [-1, 1])
def test_payload_one_byte_off_is_rejected(codec, delta):
    enc = _encoded(codec)
    data = enc.to_bytes()
    data = data[:delta] if delta < 0 else data + b"\0"
    with pytest.raises(InvalidArgument, match=f"must be {enc.nbytes} bytes, got {len(data)}"):
        codecs.validate(enc.codec, enc.codec_params, enc.dtype, enc.shape, len(data))
    with pytest.raises(InvalidArgument):
        _decode(data, enc)


WRONG_META = [{"shape": (2, 2, 3, 41, 32)}, {"shape": (2, 2, 3, 40, 16)}, {"dtype": "int8"}]


# Lossy payloads do not depend on the decoded float dtype (see the README), so declaring float32
# for a float16 chunk is a mismatch only for the lossless codecs.
@pytest.mark.parametrize("codec, wrong", [(c, w) for c in ALL for w in WRONG_META]
                         + [(c, {"dtype": "float32"}) for c in ("identity", "shuffle-lz4")])
def test_metadata_of_another_chunk_is_rejected(codec, wrong):
    enc = _encoded(codec)
    with pytest.raises(InvalidArgument):
        _decode(enc.to_bytes(), enc, **wrong)


@pytest.mark.parametrize("codec, other", [
    ("fp8-e4m3", "kivi-int4"), ("kivi-int4", "kivi-int2"), ("kivi-int2", "fp8-e4m3"),
    ("kivi-int4", "identity"), ("identity", "fp8-e4m3"),
])
def test_payload_of_another_codec_is_rejected(codec, other):
    enc = _encoded(codec)
    params = {"group_size": "32"} if other.startswith("kivi") else {}
    with pytest.raises(InvalidArgument):
        _decode(enc.to_bytes(), enc, codec=other, codec_params=params)


def test_kivi_payload_with_another_group_size_is_rejected():
    enc = _encoded("kivi-int4", group_size=16)
    with pytest.raises(InvalidArgument, match="must be"):
        _decode(enc.to_bytes(), enc, codec_params={"group_size": "32"})


@pytest.mark.parametrize("codec, params, match", [
    ("kivi-int4", {}, "needs codec_params\\['group_size'\\]"),
    ("kivi-int4", {"group_size": "abc"}, "non-negative integer"),
    ("kivi-int4", {"group_size": "24"}, "group_size must be one of"),
    ("kivi-int2", {"group_size": "32", "bits": "2"}, "does not take params \\['bits'\\]"),
    ("fp8-e4m3", {"scale": "x"}, "does not take params"),
    ("identity", {"group_size": "32"}, "does not take params"),
    ("shuffle-lz4", {"planes": "1,1"}, "raw_bytes"),
])
def test_bad_params_are_rejected(codec, params, match):
    with pytest.raises(InvalidArgument, match=match):
        codecs.validate(codec, params, "float16", SHAPE, 1)


@pytest.mark.parametrize("kwargs, match", [
    ({"codec": "zstd"}, "unknown codec 'zstd'"),
    ({"dtype": "float17"}, "unknown dtype"),
    ({"shape": (2, -2)}, "negative"),
    ({"shape": "abc"}, "integers"),
    ({"payload_bytes": -1}, "non-negative"),
    ({"codec_params": [("group_size", "32")]}, "mapping"),
    ({"codec_params": {"group_size": 32}}, "str to str"),
    ({"dtype": "int8"}, "encodes float16/bfloat16/float32"),
    ({"shape": (2, 3, 40, 32)}, "LKHTD"),
    ({"shape": (2, 3, 3, 40, 32)}, "LKHTD"),
])
def test_bad_metadata_is_rejected(kwargs, match):
    meta = {"codec": "kivi-int4", "codec_params": {"group_size": "32"}, "dtype": "float16",
            "shape": SHAPE, "payload_bytes": 1, **kwargs}
    with pytest.raises(InvalidArgument, match=match):
        codecs.validate(**meta)


def test_empty_codec_name_means_identity():
    codecs.validate("", {}, "float16", (4, 8), 64)


def test_shuffle_lz4_plane_sizes_must_add_up_and_fit():
    enc = _encoded("shuffle-lz4", torch.bfloat16)
    low, high = (int(s) for s in enc.codec_params["planes"].split(","))
    assert high < low  # the exponent plane compressed
    swapped = dict(enc.codec_params, planes=f"{high + 1},{low - 1}")
    with pytest.raises(DataLoss):  # same total size: the lz4 blocks are cut in the wrong place
        _decode(enc.to_bytes(), enc, codec_params=swapped)
    n = enc.codec_params["raw_bytes"]
    with pytest.raises(InvalidArgument, match="never stored larger"):
        codecs.validate("shuffle-lz4", {"raw_bytes": n, "planes": f"{int(n)},0"}, "bfloat16",
                        SHAPE, int(n))
    with pytest.raises(InvalidArgument, match="needs 2 planes"):
        codecs.validate("shuffle-lz4", {"raw_bytes": n, "planes": str(low)}, "bfloat16", SHAPE,
                        low)


def test_shuffle_lz4_corrupt_or_short_block_is_data_loss():
    enc = _encoded("shuffle-lz4", torch.bfloat16)
    low = int(enc.codec_params["planes"].split(",")[0])
    data = bytearray(enc.to_bytes())
    data[low + 5 :] = bytes(len(data) - low - 5)  # zero the compressed exponent plane's tail
    with pytest.raises(DataLoss, match="plane 1"):
        _decode(bytes(data), enc)
    # A valid lz4 block that decompresses to fewer bytes than the plane must hold.
    import lz4.block

    n = int(enc.codec_params["raw_bytes"]) // 2
    short = lz4.block.compress(bytes(n - 1), store_size=False)
    params = {"raw_bytes": enc.codec_params["raw_bytes"], "planes": f"{n},{len(short)}"}
    with pytest.raises(DataLoss, match="decompressed to"):
        codecs.decode(bytes(n) + short, "shuffle-lz4", params, "bfloat16", SHAPE)


@pytest.mark.parametrize("codec, offset", [
    ("kivi-int4", 1), ("kivi-int2", 2 * 3 * 2 * 32 * 2 + 1), ("fp8-e4m3", 3),
])
def test_lossy_payload_with_garbage_scales_is_data_loss(codec, offset):
    enc = _encoded(codec)
    data = bytearray(enc.to_bytes())
    data[offset] = 0xFF  # high byte of an fp16 scale / fp32 scale: NaN or negative
    with pytest.raises(DataLoss, match="scales"):
        _decode(bytes(data), enc)


@pytest.mark.parametrize("codec", ["fp8-e4m3", "kivi-int4", "kivi-int2"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_lossy_codecs_refuse_non_finite_input(codec, bad):
    x = torch.zeros(SHAPE, dtype=torch.float16)
    x[1, 1, 2, 3, 4] = bad
    with pytest.raises(InvalidArgument, match="must be finite"):
        codecs.encode(x, codec)


def test_kivi_refuses_values_beyond_fp16_range():
    x = torch.zeros(SHAPE, dtype=torch.bfloat16)
    x[0, 0, 0, 0, 0] = 1e6
    with pytest.raises(InvalidArgument, match="at most 65504"):
        codecs.encode(x, "kivi-int4")
    codecs.encode(x, "fp8-e4m3")  # fp32 scales: fine


@pytest.mark.parametrize("call, match", [
    (lambda: codecs.encode(torch.zeros(SHAPE), "kivi-int4", group_size=24), "group_size"),
    (lambda: codecs.encode(torch.zeros(SHAPE), "kivi-int4", bits=4), "only group_size"),
    (lambda: codecs.encode(torch.zeros(SHAPE), "fp8-e4m3", group_size=32), "takes no params"),
    (lambda: codecs.encode(torch.zeros(4, 8), "kivi-int4"), "LKHTD"),
    (lambda: codecs.encode(torch.zeros(SHAPE, dtype=torch.int32), "fp8-e4m3"), "float16"),
    (lambda: codecs.encode(torch.zeros(2, dtype=torch.complex64), "identity"), "complex64"),
    (lambda: codecs.encode([1.0, 2.0], "identity"), "torch.Tensor"),
    (lambda: codecs.decode([1, 2], "identity", {}, "uint8", (2,)), "bytes-like"),
    (lambda: codecs.decode(torch.zeros(2), "identity", {}, "uint8", (8,)), "uint8"),
])
def test_bad_encode_and_decode_arguments(call, match):
    with pytest.raises(InvalidArgument, match=match):
        call()
