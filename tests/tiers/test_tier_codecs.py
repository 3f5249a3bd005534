"""tier_codecs: chunks re-encoded as they are demoted into a tier (kvstore/tiers/manager.py with
kvstore/codecs/policy.py), and the setting's validation (kvstore/config.py, kvstore serve flags).

Chunks are synthetic LKHTD float16 KV [1, 2, 2, 32, 64] (16 KiB = 4 pages): keys with a large
per-channel offset (outlier channels, as in real K), values standard normal. The decoded result
must be within the codec's documented bound (tests/codecs/codec_bounds.py) of the original.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

import pytest
import torch
import xxhash

from kvstore.chunk import ChunkInfo, checksum
from kvstore.codecs import decode, encode
from kvstore.config import NodeConfig, load_config
from kvstore.errors import ConfigError

_spec = importlib.util.spec_from_file_location(
    "codec_bounds", Path(__file__).parents[1] / "codecs" / "codec_bounds.py")
assert _spec and _spec.loader
bounds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bounds)

PAGE = 4096
NS = "ns"
SHAPE = (1, 2, 2, 32, 64)
RAW = 16384  # bytes of SHAPE in float16


def kv(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g)
    x[:, 0] += torch.linspace(-8, 8, SHAPE[-1])      # per-channel key offsets
    return x.to(torch.float16)


def chunk_of(seed: int, x: torch.Tensor) -> tuple[ChunkInfo, bytes]:
    data = x.contiguous().view(torch.uint8).numpy().tobytes()
    info = ChunkInfo(key=xxhash.xxh3_128_digest(f"kv-{seed}".encode()), payload_bytes=len(data),
                     checksum=checksum([data]), dtype="float16", shape=tuple(x.shape))
    return info, data


def put_kv(m, seed: int, x: torch.Tensor | None = None) -> tuple[bytes, torch.Tensor]:
    x = kv(seed) if x is None else x
    info, data = chunk_of(seed, x)
    m.put(info, NS, data)
    return info.key, x


def fetch(m, key: bytes) -> tuple[ChunkInfo, bytes, str]:
    lease = m.get(key)
    assert lease is not None
    with lease:
        return lease.info, b"".join(bytes(v) for v in lease.views), lease.tier


def tier_of(m, key: bytes) -> str:
    return m.lookup([key])[0].tier


def disk_usage(m) -> tuple[int, int]:
    return next((used, n) for name, _, used, n in m.tier_usage() if name == "disk")


def make(tier_manager, **kw):
    base = dict(cpu_capacity_bytes=4 * PAGE, max_chunk_bytes=4 * PAGE,
                disk_capacity_bytes=1 << 20)
    base.update(kw)
    return tier_manager(**base)


# ---- demotion into disk ---------------------------------------------------------------------
def test_demotion_to_disk_encodes_and_shrinks(tier_manager):
    m = make(tier_manager, tier_codecs={"disk": "kivi-int4"})
    key, x = put_kv(m, 1)
    put_kv(m, 2)                                   # CPU holds one chunk: the first goes to disk
    assert tier_of(m, key) == "disk"
    assert m.counters["disk"].encoded_in == 1 and m.counters["disk"].demotions_in == 1
    used, n = disk_usage(m)
    assert n == 1 and used < RAW // 3              # kivi-int4 at G=32 is ~1/3.2 of fp16

    info, payload, tier = fetch(m, key)
    assert tier == "disk"
    assert (info.codec, info.codec_params) == ("kivi-int4", {"group_size": "32",
                                                   "key_rotation": "hadamard"})
    assert (info.dtype, info.shape) == ("float16", SHAPE)     # the decoded dtype and shape
    assert info.payload_bytes == len(payload) < RAW and info.checksum == checksum([payload])
    y = decode(payload, info.codec, info.codec_params, info.dtype, info.shape)
    assert y.dtype == torch.float16 and tuple(y.shape) == SHAPE
    bounds.assert_kivi_within(y, x, 4, 32)
    assert not torch.equal(y, x)                   # it really went through the codec

    # the hit promoted the encoded bytes as they are: same meta in the CPU tier
    info2, payload2, tier2 = fetch(m, key)
    assert tier2 == "cpu" and info2 == info and payload2 == payload


def test_without_tier_codecs_disk_keeps_raw_bytes(tier_manager):
    m = make(tier_manager)
    key, x = put_kv(m, 1)
    put_kv(m, 2)
    info, payload, _ = fetch(m, key)
    assert info.codec == "identity" and len(payload) == RAW
    assert payload == x.view(torch.uint8).numpy().tobytes()
    assert m.counters["disk"].encoded_in == 0


def test_warm_restart_keeps_encoded_chunk_readable(tier_manager):
    cfg = dict(tier_codecs={"disk": {"codec": "kivi-int4", "group_size": 16}})
    m = make(tier_manager, **cfg)
    key, x = put_kv(m, 1)
    put_kv(m, 2)
    before, _, _ = fetch(m, key)  # promoted to cpu, still on disk
    m.close()

    m2 = make(tier_manager, **cfg)                 # same data_dir: index rebuilt from disk
    assert tier_of(m2, key) == "disk"
    info, payload, tier = fetch(m2, key)
    assert tier == "disk" and info == before
    assert (info.codec, info.codec_params["group_size"]) == ("kivi-int4", "16")
    y = decode(payload, info.codec, info.codec_params, info.dtype, info.shape)
    bounds.assert_kivi_within(y, x, 4, 16)


def test_lossy_chunk_is_never_reencoded(tier_manager):
    m = make(tier_manager, tier_codecs={"disk": "kivi-int4"})
    x = kv(1)
    enc = encode(x, "fp8-e4m3")
    data = enc.payload.numpy().tobytes()
    info = ChunkInfo(key=xxhash.xxh3_128_digest(b"fp8"), payload_bytes=len(data),
                     checksum=checksum([data]), dtype="float16", shape=SHAPE,
                     codec="fp8-e4m3", codec_params=dict(enc.codec_params))
    m.put(info, NS, data)
    put_kv(m, 2)
    put_kv(m, 3)                                   # both earlier chunks are on disk now
    assert tier_of(m, info.key) == "disk"
    assert m.counters["disk"].encoded_in == 1      # only the identity chunk 2 was encoded
    assert disk_usage(m)[1] == 2
    got, payload, _ = fetch(m, info.key)
    assert got == info and payload == data         # stored as it came: fp8, byte for byte


def test_chunk_the_codec_cannot_hold_is_kept_as_is(tier_manager, caplog):
    m = make(tier_manager, tier_codecs={"disk": "kivi-int4"})
    x = kv(1)
    x[0, 0, 0, 0, 0] = float("nan")                # kivi refuses non-finite values
    with caplog.at_level(logging.WARNING, logger="kvstore.tiers.manager"):
        key, _ = put_kv(m, 1, x)
        put_kv(m, 2)
    assert m.counters["disk"].encoded_in == 0 and "kept as identity" in caplog.text
    info, payload, _ = fetch(m, key)
    assert info.codec == "identity" and payload == x.view(torch.uint8).numpy().tobytes()


# ---- demotion between memory tiers ----------------------------------------------------------
def test_demotion_gpu_to_cpu_encodes_fp8(tier_manager):
    m = make(tier_manager, gpu_device="sim", gpu_capacity_bytes=4 * PAGE,
             cpu_capacity_bytes=4 * PAGE, disk_capacity_bytes=0,
             tier_codecs={"cpu": "fp8-e4m3"})
    key, x = put_kv(m, 1)
    put_kv(m, 2)
    assert tier_of(m, key) == "cpu" and m.counters["cpu"].encoded_in == 1
    cpu_used = next(used for name, _, used, _ in m.tier_usage() if name == "cpu")
    assert cpu_used < RAW                          # fp8 takes fewer pages than fp16
    info, payload, tier = fetch(m, key)
    assert tier == "cpu" and info.codec == "fp8-e4m3" and len(payload) < RAW
    y = decode(payload, info.codec, info.codec_params, info.dtype, info.shape)
    bounds.assert_within(y, x, bounds.fp8_bound(x))


# ---- config ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, match", [
    ({"disk": "zstd"}, "unknown codec 'zstd'"),
    ({"ssd": "kivi-int4"}, "unknown tier"),
    ({"disk": {"codec": "kivi-int4", "group_size": 3}}, "group_size"),
    ({"disk": {"codec": "fp8-e4m3", "group_size": 32}}, "takes no params"),
    ({"disk": 4}, "must map to a codec name"),
    ("kivi-int4", "expected a mapping"),
])
def test_bad_tier_codecs_raise_config_error_naming_the_setting(tmp_path, bad, match):
    with pytest.raises(ConfigError, match=match) as exc:
        NodeConfig(data_dir=str(tmp_path), tier_codecs=bad)
    assert "tier_codecs" in str(exc.value)


def test_tier_codecs_from_environment_file_and_flags(tmp_path):
    from kvstore.cli.serve import add_arguments, config_from_args

    env = {"KVSTORE_TIER_CODECS": '{"disk": "kivi-int4", "cpu": "fp8-e4m3"}'}
    cfg = load_config(env=env)
    assert dict(cfg.tier_codecs) == {"disk": "kivi-int4", "cpu": "fp8-e4m3"}
    assert cfg.tier_codec_policy().codec_for("disk").codec == "kivi-int4"
    with pytest.raises(ConfigError, match="KVSTORE_TIER_CODECS"):
        load_config(env={"KVSTORE_TIER_CODECS": "disk=kivi-int4"})
    with pytest.raises(ConfigError, match="tier_codecs"):
        load_config(env={"KVSTORE_TIER_CODECS": '{"disk": "nope"}'})
    f = tmp_path / "node.yaml"
    f.write_text("tier_codecs:\n  disk: {codec: kivi-int2, group_size: 64}\n")
    assert load_config(f, env={}).tier_codecs == {"disk": {"codec": "kivi-int2",
                                                           "group_size": 64}}
    assert NodeConfig().tier_codecs == {}

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--tier-codec", "disk=kivi-int4", "--tier-codec", "cpu=fp8-e4m3"])
    assert dict(config_from_args(args).tier_codecs) == {"disk": "kivi-int4", "cpu": "fp8-e4m3"}
    for bad in (["--tier-codec", "disk"], ["--tier-codec", "disk=a", "--tier-codec", "disk=b"]):
        with pytest.raises(ConfigError, match="--tier-codec"):
            config_from_args(p.parse_args(bad))
    with pytest.raises(ConfigError, match="tier_codecs"):
        config_from_args(p.parse_args(["--tier-codec", "tape=kivi-int4"]))
