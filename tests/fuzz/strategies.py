"""Hypothesis strategies for hostile requests: keys, chunk metadata, Put streams, data-plane
frames. Each builds what a careless or malicious client could send; none consults the node.

Large payloads are made from a drawn seed and size (random.Random(seed).randbytes), not drawn
byte by byte: hypothesis draws of 1 MiB would dominate the run time.
"""

from __future__ import annotations

import functools
import random
import struct

import xxhash
from hypothesis import strategies as st

from kvstore import dataplane as dp
from kvstore.v1 import kvstore_pb2 as pb

from . import oracle
from .harness import MAX_CHUNK, PAGE

KEY = st.binary(min_size=16, max_size=16)
ANY_KEY = st.one_of(KEY, KEY, KEY, st.binary(min_size=0, max_size=64))
UINT32 = st.integers(0, 2**32 - 1)
INT64 = st.integers(-2**63, 2**63 - 1)
TEXT = st.text(max_size=24)
SIZES = st.one_of(st.sampled_from([1, 2, 3, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE + 7,
                                   MAX_CHUNK - 1, MAX_CHUNK]),
                  st.integers(1, 4 * PAGE))


def blob(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


@st.composite
def payloads(draw: st.DrawFn, sizes: st.SearchStrategy[int] = SIZES) -> bytes:
    return blob(draw(st.integers(0, 2**32)), draw(sizes))


@st.composite
def chunk_metas(draw: st.DrawFn, data: bytes) -> pb.ChunkMeta:
    """Metadata for ``data``: right, with each field wrong one time in 16 in the ways the spec
    names (malformed keys, dtype/shape vs size, sizes of 0 or over max_chunk_bytes, bad
    checksums, unknown codecs, identity with params, malformed parent keys)."""
    n = len(data)

    def wrong() -> bool:
        return draw(st.integers(0, 15)) == 0

    m = pb.ChunkMeta(key=draw(st.binary(min_size=0, max_size=64) if wrong() else KEY),
                     payload_bytes=n, checksum=oracle.xxh(data))
    m.dtype = draw(st.sampled_from(["float32", "bfloat16", "float128", "int4"]) | TEXT
                   if wrong() else st.sampled_from(["uint8", "", "float16"]))
    elem = oracle.DTYPE_BYTES.get(m.dtype or "uint8", 1)
    m.shape.extend(draw(
        st.lists(INT64, max_size=6) | st.lists(st.integers(-3, 2**40), max_size=4) if wrong()
        else st.sampled_from([[], [n // elem], [2, n // elem // 2]])))
    if wrong():
        m.payload_bytes = draw(st.sampled_from([0, MAX_CHUNK + 1, 2**40, 2**64 - 1])
                               | st.integers(max(0, n - 2), n + 2))
    if wrong():
        m.checksum = draw(st.integers(0, 2**64 - 1))
    if wrong():
        codec = draw(st.sampled_from(["zstd", "kivi-int8", "IDENTITY"]) | TEXT)
        if codec not in oracle.KNOWN_CODECS:  # known codecs come with a verdict (codec_chunks)
            m.codec = codec
    else:
        m.codec = draw(st.sampled_from(["", "identity"]))
    if wrong():
        m.codec_params.update(draw(st.dictionaries(TEXT, TEXT, max_size=3)))
    m.parent_key = draw(st.binary(min_size=1, max_size=40) if wrong()
                        else st.sampled_from([b""]) | KEY)
    m.num_tokens, m.start_pos = draw(UINT32), draw(UINT32)
    return m


@functools.cache
def encoded_chunks() -> tuple[tuple[str, dict[str, str], str, tuple[int, ...], bytes], ...]:
    """Real encoded chunks (codec, params, dtype, shape, payload), built on first use."""
    import torch

    from kvstore import codecs

    g = torch.Generator().manual_seed(0)
    out = []
    for codec, params in (("fp8-e4m3", {}), ("kivi-int4", {"group_size": 32}),
                          ("kivi-int2", {"group_size": 16}), ("shuffle-lz4", {})):
        x = torch.randn((2, 2, 2, 16, 32), generator=g).half()
        enc = codecs.encode(x, codec, backend="torch", **params)
        out.append((enc.codec, dict(enc.codec_params), enc.dtype, tuple(enc.shape),
                    bytes(enc.to_bytes())))
    return tuple(out)


MUTATIONS = ("none", "none", "none", "none", "payload+", "payload-", "layers+1", "dtype-int8",
             "extra-param", "group-size-24", "other-codec")


@st.composite
def codec_chunks(draw: st.DrawFn, verdicts: oracle.CodecVerdicts) -> tuple[pb.ChunkMeta, bytes]:
    """An encoded chunk's meta and payload, correct or changed in a way that makes its codec
    metadata certainly wrong; the verdict is recorded for the oracle."""
    codec, params, dtype, shape, payload = draw(st.sampled_from(encoded_chunks()))
    mutation = draw(st.sampled_from(MUTATIONS))
    key = draw(KEY)
    params, shape_l = dict(params), list(shape)
    if mutation == "payload+":
        payload += blob(draw(st.integers(0, 99)), draw(st.integers(1, 64)))
    elif mutation == "payload-":
        payload = payload[:-draw(st.integers(1, 64))]
    elif mutation == "layers+1":
        shape_l[0] += 1                      # every codec's size grows with the layer count
    elif mutation == "dtype-int8":
        dtype = "uint8"                      # no codec encodes integer chunks
    elif mutation == "extra-param":
        params["bogus"] = "1"
    elif mutation == "group-size-24":
        params["group_size"] = "24"          # not a KIVI group size; other codecs take none
    elif mutation == "other-codec":
        # each swap changes the params a codec takes or the size it makes
        codec = {"fp8-e4m3": "kivi-int4", "kivi-int4": "kivi-int2", "kivi-int2": "fp8-e4m3",
                 "shuffle-lz4": "fp8-e4m3"}[codec]
    meta = pb.ChunkMeta(key=key, dtype=dtype, shape=shape_l, payload_bytes=len(payload),
                        checksum=oracle.xxh(payload), codec=codec, codec_params=params)
    if draw(st.integers(0, 4)) == 0:
        meta.checksum ^= 1 << draw(st.integers(0, 63))
    verdicts[meta.SerializeToString(deterministic=True)] = (
        oracle.OK if mutation == "none" else oracle.INVALID)
    return meta, payload


@st.composite
def frames_of(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut into data frames at drawn points, sometimes cut short or overlong."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    bounds = [0, *cuts, len(data)]
    frames = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    tail = draw(st.sampled_from(["exact"] * 12 + ["truncate", "extra", "empty-frame"]))
    if tail == "truncate" and data:
        frames[-1] = frames[-1][:-1] if frames[-1] else frames[-1]
        if len(frames) > 1 and draw(st.booleans()):
            frames.pop()
    elif tail == "extra":
        frames.append(draw(st.binary(min_size=1, max_size=32)))
    elif tail == "empty-frame":
        frames.insert(draw(st.integers(0, len(frames))), b"")
    return frames


def put_msg(meta: pb.ChunkMeta | None = None, data: bytes | None = None) -> bytes:
    if meta is not None:
        return pb.PutRequest(meta=meta).SerializeToString()
    if data is not None:
        return pb.PutRequest(data=data).SerializeToString()
    return pb.PutRequest().SerializeToString()  # empty: neither meta nor data


@st.composite
def put_streams(draw: st.DrawFn, verdicts: oracle.CodecVerdicts,
                codec_share: int = 0) -> list[bytes]:
    """Serialized PutRequests: 0-3 chunks (metadata and framing fuzzed), with stray data
    before a meta, empty messages and undecodable bytes sometimes mixed in."""
    msgs: list[bytes] = []
    for _ in range(draw(st.integers(0, 3))):
        if codec_share and draw(st.integers(0, 99)) < codec_share:
            meta, data = draw(codec_chunks(verdicts))
        else:
            data = draw(payloads())
            meta = draw(chunk_metas(data))
        msgs.append(put_msg(meta))
        msgs.extend(put_msg(data=f) for f in draw(frames_of(data)))
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 2]))):
        junk = draw(st.one_of(
            st.just(put_msg()), st.builds(put_msg, data=st.binary(max_size=64)),
            st.binary(min_size=1, max_size=48)))
        msgs.insert(draw(st.integers(0, len(msgs))), junk)
    return msgs


# ---- handshake ------------------------------------------------------------------------------
@st.composite
def key_schemes(draw: st.DrawFn) -> pb.KeyScheme:
    """The served scheme with each field sometimes replaced by garbage or a near miss."""
    s = dict(oracle.SERVED)
    alt = {"hash_algorithm": st.sampled_from(["", "xxh3-64", "sha256", "xxh3-128\0"]) | TEXT,
           "version": st.sampled_from([0, 2, 2**32 - 1]), "model_id": st.sampled_from(
               ["", "fuzz/model\0", "fuzz/Model", "other"]) | TEXT,
           "kv_dtype": st.sampled_from(["", "bfloat16", "float16\0", "uint8"]) | TEXT,
           "kv_layout": st.sampled_from(["", "LHKTD", "LKHTD\0"]) | TEXT,
           "chunk_tokens": st.sampled_from([0, 1, 255, 257, 2**32 - 1])}
    for name, strat in alt.items():
        if draw(st.integers(0, 5)) == 0:
            s[name] = draw(strat)
    s["tenant"] = draw(st.sampled_from(["", "", "t1", "t\0"]) | TEXT)
    return pb.KeyScheme(**s)


# ---- data plane -----------------------------------------------------------------------------
@st.composite
def dp_requests(draw: st.DrawFn, verdicts: oracle.CodecVerdicts,
                known_keys: list[bytes]) -> bytes:
    """One data-plane request, well-formed or not: GETs of known, unknown and short key lists,
    PUTs with fuzzed metadata and short or overlong payloads, RELEASEs, bad ops, huge declared
    lengths, and plain garbage."""
    kind = draw(st.sampled_from(["get", "put", "put", "put-codec", "release", "bad-op",
                                 "huge-length", "garbage"]))
    if kind == "get":
        keys = draw(st.lists(st.sampled_from(known_keys) | KEY, max_size=4))
        raw = b"".join(keys)
        n = len(keys) if draw(st.integers(0, 4)) else draw(UINT32)
        return dp.OP.pack(dp.OP_GET) + dp.U32.pack(n) + raw
    if kind in ("put", "put-codec"):
        if kind == "put":
            data = draw(payloads(st.integers(1, 3 * PAGE)))
            meta = draw(chunk_metas(data))
        else:
            meta, data = draw(codec_chunks(verdicts))
        raw = meta.SerializeToString()
        wire = dp.OP.pack(dp.OP_PUT) + dp.U32.pack(len(raw)) + raw
        if meta.payload_bytes == len(data):
            return wire + data
        return wire + data[:meta.payload_bytes]  # what a client that believed its meta sends
    if kind == "release":
        ids = draw(st.lists(st.integers(0, 2**64 - 1), max_size=4))
        return dp.OP.pack(dp.OP_RELEASE) + dp.U32.pack(len(ids)) + b"".join(
            dp.U64.pack(i) for i in ids)
    if kind == "bad-op":
        return bytes([draw(st.integers(0, 255).filter(
            lambda o: o not in (dp.OP_GET, dp.OP_PUT, dp.OP_RELEASE)))])
    if kind == "huge-length":
        op = draw(st.sampled_from([dp.OP_GET, dp.OP_PUT, dp.OP_RELEASE]))
        return dp.OP.pack(op) + dp.U32.pack(draw(st.integers(2**16 + 1, 2**32 - 1)))
    return draw(st.binary(min_size=1, max_size=64))


@st.composite
def dp_sessions(draw: st.DrawFn, session_id: str) -> bytes:
    """HELLO frames: right, wrong magic or version, unknown, empty, non-UTF-8 or cut short."""
    sid = draw(st.one_of(st.just(session_id.encode()), st.just(session_id.encode()),
                         st.just(b""), st.binary(max_size=40),
                         st.just(session_id.encode()[:-1] + b"x")))
    magic = draw(st.sampled_from([dp.MAGIC] * 4 + [b"KVDQ", b"GET "]))
    version = draw(st.sampled_from([dp.VERSION] * 4 + [0, 2, 255]))
    n = len(sid) if draw(st.integers(0, 5)) else draw(st.integers(0, 2**16 - 1))
    return dp.HELLO.pack(magic, version, n) + sid


def many_keys(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [struct.pack("<QQ", rng.getrandbits(64), i) for i in range(n)]


def key_for(text: str) -> bytes:
    return xxhash.xxh3_128_digest(text.encode())
