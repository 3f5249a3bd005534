"""TierCodecPolicy: parsing, and the demotion rule (quantize at most once, from exact values)."""

import pytest
import torch

from kvstore import codecs
from kvstore.codecs import CodecChoice, TierCodecPolicy
from kvstore.errors import ConfigError

KV_SHAPE = (2, 2, 3, 64, 64)
POLICY = {"gpu": "identity", "cpu": "fp8-e4m3", "disk": {"codec": "kivi-int4", "group_size": 64},
          "redis": "shuffle-lz4"}


def test_from_dict_canonicalizes_choices():
    policy = TierCodecPolicy.from_dict(POLICY)
    assert policy.codec_for("disk") == CodecChoice("kivi-int4", (("group_size", "64"),
                                                                ("key_rotation", "hadamard")))
    assert policy.codec_for("cpu") == CodecChoice("fp8-e4m3")
    assert policy.codec_for("nvme") is None
    assert TierCodecPolicy.from_dict({"disk": "kivi-int2"}).codec_for("disk").params == (
        ("group_size", "32"), ("key_rotation", "hadamard"))  # defaults recorded, not implied
    assert policy == TierCodecPolicy.from_dict(dict(reversed(POLICY.items())))


@pytest.mark.parametrize("spec, match", [
    ({"disk": "zstd"}, "unknown codec"),
    ({"disk": {"codec": "kivi-int4", "group_size": 24}}, "group_size"),
    ({"disk": {"codec": "fp8-e4m3", "group_size": 32}}, "takes no params"),
    ({"disk": {"group_size": 32}}, "must map to a codec name"),
    ({"disk": 4}, "must map to a codec name"),
    ({"": "identity"}, "non-empty"),
    (["disk", "identity"], "mapping"),
])
def test_bad_policies_raise_config_error(spec, match):
    with pytest.raises(ConfigError, match=match):
        TierCodecPolicy.from_dict(spec)


# (tier, current codec, current user params) -> expected target codec (None: keep as is)
RULES = [
    ("disk", "identity", {}, "kivi-int4"),          # first loss: from exact values
    ("disk", "shuffle-lz4", None, "kivi-int4"),     # lossless -> lossy
    ("disk", "kivi-int4", {"group_size": "64", "key_rotation": "hadamard"}, None),  # already
    ("disk", "kivi-int4", {"group_size": "32"}, None),  # lossy: never re-quantized
    ("disk", "fp8-e4m3", {}, None),                 # lossy -> lossy would compound errors
    ("gpu", "fp8-e4m3", {}, None),                  # lossy -> lossless would only grow
    ("redis", "identity", {}, "shuffle-lz4"),       # lossless -> lossless
    ("gpu", "shuffle-lz4", None, "identity"),
    ("gpu", "identity", {}, None),
    ("redis", "shuffle-lz4", None, None),
    ("nvme", "identity", {}, None),                 # tier without a codec keeps chunks as is
]


@pytest.mark.parametrize("tier, codec, params, expected", RULES)
def test_demotion_rule(tier, codec, params, expected):
    policy = TierCodecPolicy.from_dict(POLICY)
    if params is None:  # shuffle-lz4's params are computed: take real ones
        params = codecs.encode(torch.zeros(KV_SHAPE, dtype=torch.float16), codec).codec_params
    target = policy.target_for_demotion(tier, codec, params, "float16", KV_SHAPE)
    assert (target.codec if target else None) == expected


@pytest.mark.parametrize("dtype, shape", [("float16", (64, 32)), ("int8", KV_SHAPE),
                                          ("uint8", (4096,))])
def test_chunks_a_lossy_codec_cannot_encode_are_kept(dtype, shape):
    policy = TierCodecPolicy.from_dict(POLICY)
    assert policy.target_for_demotion("disk", "identity", {}, dtype, shape) is None


def test_transcode_for_demotion_round_trip():
    policy = TierCodecPolicy.from_dict(POLICY)
    x = torch.randn(KV_SHAPE).to(torch.float16)
    raw = codecs.encode(x, "identity")
    disk = policy.transcode_for_demotion("disk", raw.to_bytes(), "identity", {}, "float16",
                                         KV_SHAPE, backend="torch")
    assert disk.codec == "kivi-int4" and disk.codec_params == {"group_size": "64",
                                                               "key_rotation": "hadamard"}
    assert disk.nbytes * 3 < raw.nbytes
    decoded = codecs.decode(disk.payload, disk.codec, disk.codec_params, disk.dtype, disk.shape)
    assert (decoded.float() - x.float()).abs().max() < 0.1 * x.float().abs().max()
    # Demoting the quantized chunk again (into any tier) keeps it as it is.
    for tier in ("gpu", "cpu", "disk", "redis"):
        assert policy.transcode_for_demotion(tier, disk.payload, disk.codec, disk.codec_params,
                                             disk.dtype, disk.shape) is None
