"""The one place that converts between protobuf messages and domain types (both sides use it)."""

from __future__ import annotations

from kvstore.chunk import IDENTITY, ChunkInfo
from kvstore.keys import KeyScheme
from kvstore.v1 import kvstore_pb2 as pb


def scheme_to_pb(s: KeyScheme) -> pb.KeyScheme:
    return pb.KeyScheme(
        hash_algorithm=s.hash_algorithm, version=s.version, model_id=s.model_id,
        kv_dtype=s.kv_dtype, kv_layout=s.kv_layout, chunk_tokens=s.chunk_tokens, tenant=s.tenant,
    )


def scheme_from_pb(m: pb.KeyScheme) -> KeyScheme:
    """Raises KeySchemeError (INVALID_ARGUMENT) for fields no scheme can have."""
    return KeyScheme(
        model_id=m.model_id, kv_dtype=m.kv_dtype, kv_layout=m.kv_layout,
        chunk_tokens=m.chunk_tokens, tenant=m.tenant,
        hash_algorithm=m.hash_algorithm, version=m.version,
    )


def info_to_pb(c: ChunkInfo) -> pb.ChunkMeta:
    return pb.ChunkMeta(
        key=c.key, dtype=c.dtype, shape=list(c.shape), payload_bytes=c.payload_bytes,
        checksum=c.checksum, codec=c.codec, codec_params=c.codec_params,
        parent_key=c.parent_key, num_tokens=c.num_tokens, start_pos=c.start_pos,
    )


def info_from_pb(m: pb.ChunkMeta) -> ChunkInfo:
    return ChunkInfo(
        key=bytes(m.key), payload_bytes=m.payload_bytes, checksum=m.checksum,
        dtype=m.dtype or "uint8", shape=tuple(m.shape), codec=m.codec or IDENTITY,
        codec_params=dict(m.codec_params), parent_key=bytes(m.parent_key),
        num_tokens=m.num_tokens, start_pos=m.start_pos,
    )
