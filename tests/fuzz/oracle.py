"""The expected outcome of a request, written from docs/PROTOCOL.md (not from the node's code).

Codes: INVALID_ARGUMENT for malformed input (key not 16 bytes, chunk over max_chunk_bytes, empty
chunk, unknown dtype, dtype other than the session's or uint8, shape x dtype != payload, identity
chunks with codec params, truncated chunks, more data than declared, data before meta, empty
messages, too many keys, unparseable messages); FAILED_PRECONDITION for a scheme the node does not
serve and for a missing or unknown session; DATA_LOSS for a checksum mismatch (nothing stored).
Codec metadata of encoded chunks is the one thing this module cannot judge from the spec alone:
the strategies that build encoded chunks say what they expect (``CodecVerdicts``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import xxhash

from kvstore import dataplane as dp
from kvstore.v1 import kvstore_pb2 as pb

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
DATA_LOSS = grpc.StatusCode.DATA_LOSS
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "float8_e4m3fn": 1,
               "float8_e5m2": 1, "int8": 1, "uint8": 1, "int16": 2, "int32": 4}
KNOWN_CODECS = ("shuffle-lz4", "fp8-e4m3", "kivi-int4", "kivi-int2")
MAX_KEYS = 65536
# the node under fuzz (conftest.NODE) serves exactly this scheme
SERVED = dict(hash_algorithm="xxh3-128", version=1, model_id="fuzz/model", kv_dtype="float16",
              kv_layout="LKHTD", chunk_tokens=256)


class CodecVerdicts(dict):
    """Serialized ChunkMeta of an encoded chunk -> the status its codec metadata deserves."""


def xxh(data: bytes) -> int:
    return xxhash.xxh3_64_intdigest(data)


def meta_status(m: pb.ChunkMeta, max_chunk: int, verdicts: CodecVerdicts) -> grpc.StatusCode:
    """OK if the node must accept this meta (reserve room), else the refusal's code."""
    dtype, codec = m.dtype or "uint8", m.codec or "identity"
    bad = (len(m.key) != 16 or (m.parent_key and len(m.parent_key) != 16)
           or not 0 < m.payload_bytes <= max_chunk or dtype not in DTYPE_BYTES
           or any(d < 0 for d in m.shape) or dtype not in (SERVED["kv_dtype"], "uint8"))
    if bad:
        return INVALID
    if codec == "identity":
        if m.codec_params:
            return INVALID
        n = DTYPE_BYTES[dtype]
        for d in m.shape:
            n *= d
        return INVALID if m.shape and n != m.payload_bytes else OK
    if codec not in KNOWN_CODECS:
        return INVALID
    verdict = verdicts.get(m.SerializeToString(deterministic=True))
    if verdict is None:
        raise AssertionError(f"oracle cannot judge codec metadata it did not build: {m}")
    return verdict


@dataclass
class PutOutcome:
    code: grpc.StatusCode
    committed: dict[bytes, bytes] = field(default_factory=dict)  # key -> bytes, last wins
    results: list[bytes] = field(default_factory=list)           # keys in PutResponse order


def expect_put(msgs: list[bytes], max_chunk: int, verdicts: CodecVerdicts) -> PutOutcome:
    """A Put stream of serialized PutRequests (or garbage) from a client with a valid session."""
    out = PutOutcome(OK)
    meta: pb.ChunkMeta | None = None
    buf = bytearray()
    for raw in msgs:
        try:
            msg = pb.PutRequest.FromString(raw)
        except Exception:  # DecodeError: protobuf gives it no stable import path
            return _fail(out, INVALID)
        if msg.HasField("meta"):
            if meta is not None:
                return _fail(out, INVALID)              # previous chunk truncated
            code = meta_status(msg.meta, max_chunk, verdicts)
            if code != OK:
                return _fail(out, code)
            meta, buf = msg.meta, bytearray()
        elif msg.HasField("data"):
            if meta is None or len(buf) + len(msg.data) > meta.payload_bytes:
                return _fail(out, INVALID)              # data before meta / more than declared
            buf += msg.data
            if len(buf) == meta.payload_bytes:
                if xxh(bytes(buf)) != meta.checksum:
                    return _fail(out, DATA_LOSS)
                out.committed[bytes(meta.key)] = bytes(buf)
                out.results.append(bytes(meta.key))
                meta = None
        else:
            return _fail(out, INVALID)                  # empty message
    return _fail(out, INVALID) if meta is not None else out


def _fail(out: PutOutcome, code: grpc.StatusCode) -> PutOutcome:
    out.code = code
    return out


def expect_handshake(s: pb.KeyScheme) -> grpc.StatusCode:
    if s.hash_algorithm != SERVED["hash_algorithm"] or s.version != SERVED["version"]:
        return PRECONDITION
    if not s.model_id or not s.kv_dtype or s.chunk_tokens <= 0 or any(
            "\0" in v for v in (s.model_id, s.kv_dtype, s.kv_layout, s.tenant)):
        return INVALID
    for name in ("model_id", "kv_dtype", "kv_layout", "chunk_tokens"):
        if getattr(s, name) != SERVED[name]:
            return PRECONDITION
    return OK


def keys_status(keys: list[bytes]) -> grpc.StatusCode:
    bad = len(keys) > MAX_KEYS or any(len(k) != 16 for k in keys)
    return INVALID if bad else OK


# ---- data plane -----------------------------------------------------------------------------
# What the node answers to the bytes a client sent and then half-closed: a list of
#   ("status", code)            a STATUS frame
#   ("get", (key, bytes|None))  a GET answer for one key: its payload, or not found
# and then the connection ends.
Expect = tuple[str, object]


class DataPlaneModel:
    def __init__(self, stored: dict[bytes, bytes], max_chunk: int, verdicts: CodecVerdicts,
                 valid_sessions: set[str]) -> None:
        self.stored = stored              # updated by PUTs the model accepts
        self.max_chunk = max_chunk
        self.verdicts = verdicts
        self.valid_sessions = valid_sessions
        self.unread = False

    def run(self, wire: bytes) -> list[Expect]:
        """The answers, in order. Afterwards ``unread`` says whether the node hangs up before
        reading everything sent: its TCP stack then resets the connection, which may discard
        answers the client has not read yet (so a reset is no error then)."""
        r = _Reader(wire)
        out = self._run(r)
        self.unread = r.pos < len(wire)
        return out

    def _run(self, r: _Reader) -> list[Expect]:
        out: list[Expect] = []
        head = r.take(dp.HELLO.size)
        if head is None:
            return out
        magic, version, n = dp.HELLO.unpack(head)
        if magic != dp.MAGIC or version != dp.VERSION:
            return out + [("status", PRECONDITION)]
        sid = r.take(n)
        if sid is None:
            return out
        if sid.decode(errors="replace") not in self.valid_sessions:
            return out + [("status", PRECONDITION)]
        out.append(("status", OK))
        while (op := r.take(1)) is not None:
            if not self._request(op[0], r, out):
                break
        return out

    def _request(self, op: int, r: _Reader, out: list[Expect]) -> bool:
        """Append what one request is answered with; False when the node hangs up after it."""
        if op in (dp.OP_GET, dp.OP_RELEASE, dp.OP_PUT):
            head = r.take(4)
            if head is None:
                return False
            (n,) = dp.U32.unpack(head)
        else:  # GET_SHM included: the node under fuzz has no shared memory
            out.append(("status", INVALID))
            return False
        if op == dp.OP_GET:
            raw = r.take(16 * n) if n <= dp.MAX_KEYS else None
            if raw is None:
                return False
            keys = [raw[16 * i:16 * i + 16] for i in range(n)]
            out.extend(("get", (k, self.stored.get(k))) for k in keys)
            return True
        if op == dp.OP_RELEASE:
            if n > dp.MAX_LEASES or r.take(8 * n) is None:
                return False
            out.append(("status", OK))
            return True
        raw = r.take(n) if n <= dp.MAX_META_BYTES else None
        if raw is None:
            return False
        try:
            meta = pb.ChunkMeta.FromString(raw)
        except Exception:  # DecodeError
            out.append(("status", INVALID))
            return True
        code = meta_status(meta, self.max_chunk, self.verdicts)
        out.append(("status", code))
        if code != OK:
            return True
        payload = r.take(meta.payload_bytes)
        if payload is None:
            return False
        if xxh(payload) != meta.checksum:
            out.append(("status", DATA_LOSS))
        else:
            self.stored[bytes(meta.key)] = payload
            out.append(("status", OK))
        return True


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes | None:
        if self.pos + n > len(self.data):
            self.pos = len(self.data)
            return None
        self.pos += n
        return self.data[self.pos - n:self.pos]
