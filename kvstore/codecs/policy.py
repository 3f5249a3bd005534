"""Which codec each tier stores, and whether a chunk demoted into a tier is re-encoded.

Config (one dict, tier name -> codec name, or -> {"codec": name, **params}):
    {"gpu": "identity", "cpu": "fp8-e4m3", "disk": {"codec": "kivi-int4", "group_size": 32}}
Tiers not named keep chunks as they arrive.

The demotion rule (target_for_demotion) quantizes a chunk at most once, from exact values:
  - a chunk already in a lossy codec is never re-encoded. Into another lossy codec its errors
    would compound silently (fp8 then int4 is worse than int4 alone); into a lossless codec it
    would only grow without getting its precision back. So with {"cpu": "fp8-e4m3",
    "disk": "kivi-int4"} a chunk demoted cpu -> disk stays fp8 on disk; choose the memory tiers'
    codecs with that in mind.
  - a lossless chunk (identity, shuffle-lz4) is re-encoded into the tier's codec unless it is
    already in it (same name and same user params, e.g. group_size).
  - a chunk the tier's codec cannot encode (a lossy codec and a chunk that is not float LKHTD KV)
    is kept as it is.
Re-encoding happens off the request path, in the tier manager's demotion (the caller's thread).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from kvstore.codecs.base import EncodedChunk, dtype_from_name, normalize_shape
from kvstore.codecs.registry import decode, encode, get_codec
from kvstore.errors import ConfigError, InvalidArgument


@dataclass(frozen=True)
class CodecChoice:
    """A codec name and its canonical user params (sorted (key, value) pairs, hashable)."""

    codec: str
    params: tuple[tuple[str, str], ...] = ()

    def params_dict(self) -> dict[str, str]:
        return dict(self.params)


@dataclass(frozen=True)
class TierCodecPolicy:
    """tier name -> CodecChoice. Build with from_dict; construct directly only with valid
    choices (from_dict checks names and params)."""

    tiers: tuple[tuple[str, CodecChoice], ...] = ()

    @classmethod
    def from_dict(cls, spec: Mapping[str, object]) -> TierCodecPolicy:
        """Parse {"tier": "codec"} / {"tier": {"codec": "name", **params}}; ConfigError if bad."""
        if not isinstance(spec, Mapping):
            raise ConfigError(f"tier codec policy must be a mapping, got {type(spec).__name__}")
        tiers = []
        for tier, entry in spec.items():
            if not isinstance(tier, str) or not tier:
                raise ConfigError(f"tier codec policy: tier names must be non-empty strings, "
                                  f"got {tier!r}")
            tiers.append((tier, _parse_choice(tier, entry)))
        return cls(tuple(sorted(tiers)))

    def codec_for(self, tier: str) -> CodecChoice | None:
        """The tier's codec, or None for a tier that keeps chunks as they arrive."""
        return dict(self.tiers).get(tier)

    def target_for_demotion(self, tier: str, codec: str, codec_params: Mapping[str, str],
                            dtype: str, shape: Sequence[int]) -> CodecChoice | None:
        """The codec to re-encode a chunk into as it is demoted into `tier`, or None to store it
        as it is (rules in the module docstring). The metadata must already be valid."""
        target = self.codec_for(tier)
        if target is None:
            return None
        current, wanted = get_codec(codec), get_codec(target.codec)
        if current.lossy:
            return None
        if current.name == wanted.name and current.user_params(codec_params) == dict(target.params):
            return None
        try:
            wanted.check_encodable(dtype_from_name(dtype), normalize_shape(shape))
        except InvalidArgument:
            return None
        return target

    def transcode_for_demotion(
        self, tier: str, payload: object, codec: str, codec_params: Mapping[str, str],
        dtype: str, shape: Sequence[int], *, backend: str = "auto",
    ) -> EncodedChunk | None:
        """The chunk re-encoded for `tier`, or None when it is to be stored as it is.

        Decodes on the payload's device (CPU for bytes) and encodes there. Raises what decode and
        encode raise (InvalidArgument / DataLoss for a bad chunk, InvalidArgument for KV values a
        lossy codec cannot hold, e.g. NaN).
        """
        target = self.target_for_demotion(tier, codec, codec_params, dtype, shape)
        if target is None:
            return None
        tensor: torch.Tensor = decode(payload, codec, codec_params, dtype, shape, backend=backend)
        return encode(tensor, target.codec, backend=backend, **target.params_dict())


def _parse_choice(tier: str, entry: object) -> CodecChoice:
    if isinstance(entry, str):
        name, kwargs = entry, {}
    elif (isinstance(entry, Mapping) and isinstance(entry.get("codec"), str)
          and all(isinstance(k, str) for k in entry)):
        name, kwargs = entry["codec"], {k: v for k, v in entry.items() if k != "codec"}
    else:
        raise ConfigError(f"tier codec policy: tier {tier!r} must map to a codec name or "
                          f"{{'codec': name, **params}}, got {entry!r}")
    try:
        codec = get_codec(name)
        params = codec.make_params(**kwargs)
    except InvalidArgument as e:
        raise ConfigError(f"tier codec policy: tier {tier!r}: {e}") from e
    return CodecChoice(codec.name, tuple(sorted(params.items())))
