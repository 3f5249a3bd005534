"""KV chunk codecs: identity, shuffle-lz4, fp8-e4m3, kivi-int4, kivi-int2, and the per-tier policy.

Public API (see README.md in this directory):
    encode(tensor, codec, **params) -> EncodedChunk
    decode(payload, codec, codec_params, dtype, shape, device=None) -> torch.Tensor
    validate(codec, codec_params, dtype, shape, payload_bytes) -> None   (raises InvalidArgument)
    CODECS, get_codec, TierCodecPolicy, CodecChoice
Imports torch, numpy, lz4, kvstore.errors and kvstore_kernels (kernels on first use); never the
server, tiers, gRPC services or the client.
"""

from kvstore.codecs.base import Codec, EncodedChunk
from kvstore.codecs.policy import CodecChoice, TierCodecPolicy
from kvstore.codecs.registry import CODECS, IDENTITY, decode, encode, get_codec, validate

__all__ = [
    "CODECS", "IDENTITY", "Codec", "CodecChoice", "EncodedChunk", "TierCodecPolicy", "decode",
    "encode", "get_codec", "validate",
]
