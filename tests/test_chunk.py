"""ChunkInfo.validate and checksums (kvstore/chunk.py), and their protobuf round trip (wire.py)."""

from __future__ import annotations

import dataclasses

import pytest
import xxhash

from kvstore import wire
from kvstore.chunk import DTYPE_BYTES, ChunkInfo, checksum
from kvstore.errors import InvalidArgument
from kvstore.keys import KeyScheme

KEY = bytes(range(16))


def info(**kw) -> ChunkInfo:
    base = dict(key=KEY, payload_bytes=2 * 4 * 8, checksum=0, dtype="float16", shape=(4, 8))
    return ChunkInfo(**{**base, **kw})


def test_valid_chunk_passes():
    info().validate(1 << 20)
    info(dtype="uint8", shape=()).validate(1 << 20)            # raw bytes: no shape needed
    info(parent_key=bytes(16), num_tokens=256).validate(1 << 20)
    info(payload_bytes=64).validate(64)                         # exactly the limit


@pytest.mark.parametrize("kw,match", [
    (dict(key=b"k" * 15), "chunk key must be 16 bytes, got 15"),
    (dict(key=b""), "chunk key must be 16 bytes, got 0"),
    (dict(parent_key=b"p" * 15), "parent key"),
    (dict(payload_bytes=0, shape=()), "empty"),
    (dict(payload_bytes=65, shape=()), "exceeds"),
    (dict(dtype="float128"), "unknown dtype"),
    (dict(shape=(4, -8)), "negative dimension"),
    (dict(shape=(4, 9)), "shape"),
    (dict(dtype="float32"), "shape"),
])
def test_invalid_chunks(kw, match):
    with pytest.raises(InvalidArgument, match=match):
        info(**kw).validate(64)


def test_encoded_chunks_skip_the_shape_size_check():
    # a codec's payload is smaller than shape * dtype; the codec validates it, not ChunkInfo
    info(codec="lz4", payload_bytes=10).validate(64)


def test_dtype_sizes_match_torch():
    torch = pytest.importorskip("torch")
    for name, size in DTYPE_BYTES.items():
        assert getattr(torch, name).itemsize == size, name


def test_checksum_is_streamed_xxh3_64():
    data = bytes(range(256)) * 100
    expect = xxhash.xxh3_64_intdigest(data)
    assert checksum([data]) == expect
    views = [memoryview(data)[i:i + 999] for i in range(0, len(data), 999)]
    assert checksum(views) == expect                 # split anywhere, same digest
    assert checksum([bytearray(data)]) == expect
    flipped = bytearray(data)
    flipped[1234] ^= 1
    assert checksum([flipped]) != expect


def test_chunk_info_protobuf_round_trip():
    c = ChunkInfo(key=KEY, payload_bytes=64, checksum=2**64 - 1, dtype="bfloat16",
                  shape=(2, 16), codec="shuffle-lz4", codec_params={"level": "3"},
                  parent_key=bytes(16), num_tokens=256, start_pos=512)
    assert wire.info_from_pb(wire.info_to_pb(c)) == c
    bare = wire.info_from_pb(wire.info_to_pb(dataclasses.replace(c, dtype="", codec="")))
    assert bare.dtype == "uint8" and bare.codec == "identity"  # proto defaults -> domain defaults


def test_scheme_protobuf_round_trip():
    s = KeyScheme("m", "float16", kv_layout="LKHTD", chunk_tokens=64, tenant="t")
    assert wire.scheme_from_pb(wire.scheme_to_pb(s)) == s
