"""Property-based fuzzing of every KVStore RPC over raw gRPC calls (serialized bytes, no client
library), against one real node in its own process.

Every case: the status is the one tests/fuzz/oracle.py derives from the spec (never INTERNAL or
UNKNOWN), errors name their kvstore class in trailing metadata, what the call stored is exactly
what the spec says (chunks committed before a failure stay, a partial one never appears), and
``target.after_case`` finds the node serving, the canaries byte-exact and no page leaked. Each
property ends by checking the node's RSS growth against conftest.RSS_BOUND_BYTES.
"""

from __future__ import annotations

import string

import grpc
from hypothesis import given
from hypothesis import strategies as st

from kvstore.errors import ERROR_METADATA, KVStoreError
from kvstore.v1 import kvstore_pb2 as pb

from . import oracle
from . import strategies as fs
from .budget import fuzz_settings
from .harness import MAX_CHUNK, record, rpc_status

OK = grpc.StatusCode.OK


def _classes(cls: type[KVStoreError] = KVStoreError) -> dict[str, type[KVStoreError]]:
    out = {cls.__name__: cls}
    for sub in cls.__subclasses__():
        out.update(_classes(sub))
    return out


def assert_error_named(code: grpc.StatusCode, trailing: dict[str, str]) -> None:
    """Errors the node raises on purpose name a kvstore class with that very code."""
    if code in (OK, grpc.StatusCode.RESOURCE_EXHAUSTED):  # gRPC's own message-size refusal
        return
    cls = _classes().get(trailing.get(ERROR_METADATA, ""))
    assert cls is not None and cls.code == code, f"{code} came with trailing {trailing}"


def metas_in(msgs: list[bytes]) -> list[pb.ChunkMeta]:
    out = []
    for raw in msgs:
        try:
            m = pb.PutRequest.FromString(raw)
        except Exception:  # DecodeError
            continue
        if m.HasField("meta"):
            out.append(m.meta)
    return out


def check_put_case(target, msgs: list[bytes], rpc: str) -> None:
    touched = sorted({bytes(m.key) for m in metas_in(msgs) if len(m.key) == 16})
    with target.case() as cleanup:
        cleanup.update(touched)
        _check_put(target, msgs, rpc, touched)


def _check_put(target, msgs: list[bytes], rpc: str, touched: list[bytes]) -> None:
    want = oracle.expect_put(msgs, MAX_CHUNK, target.verdicts)
    put = target.raw("stream_unary", "Put")
    code, result, trailing = rpc_status(lambda: put(iter(msgs), metadata=target.md, timeout=30))
    record(rpc, code)
    assert code == want.code, (code, result)
    assert_error_named(code, trailing)
    if code == OK:
        resp = pb.PutResponse.FromString(result)
        assert [r.key for r in resp.results] == want.results
        assert all(r.stored and r.tier == "cpu" for r in resp.results)
    if touched:
        got = target.get_all(touched)
        assert got == {k: want.committed.get(k) for k in touched}


def test_put_streams(target):
    @fuzz_settings("put")
    @given(fs.put_streams(target.verdicts))
    def prop(msgs):
        check_put_case(target, msgs, "Put")

    prop()
    target.check_rss()


def test_put_streams_with_encoded_chunks(target):
    @fuzz_settings("put_codec")
    @given(fs.put_streams(target.verdicts, codec_share=70))
    def prop(msgs):
        check_put_case(target, msgs, "Put (codecs)")

    prop()
    target.check_rss()


def test_handshake(target):
    handshake = target.raw("unary_unary", "Handshake")

    @fuzz_settings("handshake")
    @given(fs.key_schemes(), st.text(max_size=40))
    def prop(scheme, client_name):
        req = pb.HandshakeRequest(scheme=scheme, client_name=client_name)
        code, result, trailing = rpc_status(lambda: handshake(req.SerializeToString(),
                                                              timeout=10))
        record("Handshake", code)
        assert code == oracle.expect_handshake(scheme), (scheme, result)
        assert_error_named(code, trailing)
        if code == OK:
            resp = pb.HandshakeResponse.FromString(result)
            assert resp.session_id and resp.max_chunk_bytes == MAX_CHUNK
        target.after_case(())

    prop()
    target.check_rss()


SESSION_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "-_./:", max_size=40)


@st.composite
def session_metadata(draw, valid: str):
    """Call metadata with the session missing, empty, garbled, duplicated or in the -bin form."""
    kind = draw(st.sampled_from(["none", "empty", "random", "garbled", "valid", "twice-valid",
                                 "twice-bad", "bin", "other-key"]))
    garbled = valid[:-1] + ("0" if valid[-1] != "0" else "1")
    md = {"none": (), "empty": (("kvstore-session", ""),),
          "random": (("kvstore-session", draw(SESSION_TEXT)),),
          "garbled": (("kvstore-session", garbled),),
          "valid": (("kvstore-session", valid),),
          "twice-valid": (("kvstore-session", valid),) * 2,
          "twice-bad": (("kvstore-session", garbled), ("kvstore-session", "")),
          "bin": (("kvstore-session-bin", valid.encode()),),
          "other-key": (("kvstore-sessions", valid),)}[kind]
    ok = kind in ("valid", "twice-valid") or (kind == "random" and md[0][1] == valid)
    return md, ok


def test_session_metadata(target):
    calls = {
        "Lookup": lambda md: target.stub.Lookup(pb.LookupRequest(keys=[fs.key_for("x")]),
                                                metadata=md, timeout=10),
        "Delete": lambda md: target.stub.Delete(pb.DeleteRequest(keys=[fs.key_for("x")]),
                                                metadata=md, timeout=10),
        "Get": lambda md: list(target.stub.Get(pb.GetRequest(keys=list(target.canaries)[:1]),
                                               metadata=md, timeout=10)),
        "Put": lambda md: target.stub.Put(iter([pb.PutRequest(
            meta=pb.ChunkMeta(key=fs.key_for("x"), payload_bytes=1, checksum=oracle.xxh(b"y"))),
            pb.PutRequest(data=b"y")]), metadata=md, timeout=10),
    }

    @fuzz_settings("session")
    @given(st.sampled_from(sorted(calls)), session_metadata(target.session_id))
    def prop(rpc, md_ok):
        md, ok = md_ok
        with target.case() as touched:
            touched.add(fs.key_for("x"))
            code, result, trailing = rpc_status(lambda: calls[rpc](md))
            record(f"{rpc} (session)", code)
            assert code == (OK if ok else oracle.PRECONDITION), (md, result)
            if not ok:
                assert trailing.get(ERROR_METADATA) == "SessionRequired"

    prop()
    target.check_rss()


def _check_get(target, keys: list[bytes], frame_bytes: int) -> None:
    req = pb.GetRequest(keys=keys, frame_bytes=frame_bytes)
    items: list[pb.GetResponse] = []
    get = target.raw("unary_stream", "Get")

    def call() -> None:
        for raw in get(req.SerializeToString(), metadata=target.md, timeout=30):
            items.append(pb.GetResponse.FromString(raw))

    code, result, trailing = rpc_status(call)
    record("Get", code)
    want = oracle.keys_status(keys)
    assert code == want, result
    assert_error_named(code, trailing)
    if code != OK:
        assert items == [], "a refused Get streamed chunks before its refusal"
        return
    got: list[tuple[bytes, bytes | None]] = []
    for it in items:
        if it.HasField("header"):
            h = it.header
            assert not h.found or (h.meta.key == h.key and h.tier in ("cpu", "disk"))
            got.append((h.key, b"" if h.found else None))
        else:
            assert got and got[-1][1] is not None and 0 < len(it.data) <= 64 << 10
            got[-1] = (got[-1][0], got[-1][1] + it.data)
    assert got == [(k, target.canaries.get(k)) for k in keys]


def test_get(target):
    canary = st.sampled_from(sorted(target.canaries))

    @fuzz_settings("get")
    @given(st.lists(canary | fs.ANY_KEY, max_size=6),
           st.one_of(st.just(0), st.sampled_from([1, 4095, 4096, 65537]), fs.UINT32))
    def prop(keys, frame_bytes):
        _check_get(target, keys, frame_bytes)
        target.after_case(())

    prop()
    target.check_rss()


def _put_ok(target, chunks: dict[bytes, bytes]) -> None:
    msgs = []
    for k, d in chunks.items():
        msgs += [pb.PutRequest(meta=pb.ChunkMeta(key=k, payload_bytes=len(d),
                                                 checksum=oracle.xxh(d))),
                 pb.PutRequest(data=d)]
    target.stub.Put(iter(msgs), metadata=target.md, timeout=10)


def test_lookup_and_delete(target):
    canary = st.sampled_from(sorted(target.canaries))

    @fuzz_settings("lookup_delete")
    @given(st.lists(fs.KEY, max_size=3, unique=True), st.data())
    def prop(fresh, data):
        with target.case() as touched:
            touched.update(fresh)
            fresh = [k for k in fresh if k not in target.canaries]
            chunks = {k: fs.blob(i, 1 + i * 1000) for i, k in enumerate(fresh)}
            _put_ok(target, chunks)
            mine = st.sampled_from(fresh) if fresh else fs.KEY
            keys = data.draw(st.lists(canary | mine | fs.ANY_KEY, max_size=6))
            prefetch, nxt = data.draw(st.booleans()), data.draw(fs.UINT32)
            req = pb.LookupRequest(keys=keys, prefetch=prefetch, prefetch_next=nxt)
            code, result, trailing = rpc_status(lambda: target.stub.Lookup(
                req, metadata=target.md, timeout=10))
            record("Lookup", code)
            assert code == oracle.keys_status(keys), result
            assert_error_named(code, trailing)
            present = {**target.canaries, **chunks}
            if code == OK:
                found = [k in present for k in keys]
                assert [loc.found for loc in result.locations] == found
                assert [loc.payload_bytes for loc in result.locations] == [
                    len(present.get(k, b"")) for k in keys]
                lead = next((i for i, f in enumerate(found) if not f), len(found))
                assert result.prefix_hits == lead
            doomed = data.draw(st.lists(mine | fs.ANY_KEY, max_size=6))
            doomed = [k for k in doomed if k not in target.canaries]
            code, result, trailing = rpc_status(lambda: target.stub.Delete(
                pb.DeleteRequest(keys=doomed), metadata=target.md, timeout=10))
            record("Delete", code)
            assert code == oracle.keys_status(doomed), result
            assert_error_named(code, trailing)
            gone = set(doomed) & set(chunks) if code == OK else set()
            if code == OK:
                assert result.deleted == len(gone)
            left = target.stub.Lookup(pb.LookupRequest(keys=fresh), metadata=target.md,
                                      timeout=10)
            assert [loc.found for loc in left.locations] == [k not in gone for k in fresh]

    prop()
    target.check_rss()


REQUEST_TYPES = {"Handshake": pb.HandshakeRequest, "Lookup": pb.LookupRequest,
                 "Delete": pb.DeleteRequest, "Stats": pb.StatsRequest, "Get": pb.GetRequest}


def test_raw_request_bytes(target):
    """Bytes that may or may not parse as the method's request message."""

    @fuzz_settings("raw_messages")
    @given(st.sampled_from(sorted(REQUEST_TYPES)), st.binary(max_size=80))
    def prop(method, raw):
        try:
            req = REQUEST_TYPES[method].FromString(raw)
        except Exception:  # DecodeError
            want, req = oracle.INVALID, None
        else:
            want = {"Handshake": lambda: oracle.expect_handshake(req.scheme),
                    "Stats": lambda: OK}.get(method, lambda: oracle.keys_status(req.keys))()
        kind = "unary_stream" if method == "Get" else "unary_unary"
        call = target.raw(kind, method)
        code, result, trailing = rpc_status(
            lambda: list(call(raw, metadata=target.md, timeout=10)) if method == "Get"
            else call(raw, metadata=target.md, timeout=10))
        record(f"{method} (raw bytes)", code)
        assert code == want, (method, raw, result)
        assert_error_named(code, trailing)
        target.after_case(())

    prop()
    target.check_rss()


def test_huge_requests(target):
    """Key lists at and past the 65536 limit, messages past gRPC's 8 MiB limit, and endless
    streams of tiny frames."""
    put = target.raw("stream_unary", "Put")

    @fuzz_settings("huge")
    @given(st.sampled_from(["lookup", "delete", "get", "big-frame", "big-meta", "many-frames"]),
           st.sampled_from([65536, 65537, 200_000]), st.integers(0, 2**16))
    def prop(kind, n, seed):
        keys = fs.many_keys(n, seed)
        with target.case() as touched:
            touched.add(keys[0])
            if kind in ("lookup", "delete"):
                rpc = target.stub.Lookup if kind == "lookup" else target.stub.Delete
                req = (pb.LookupRequest if kind == "lookup" else pb.DeleteRequest)(keys=keys)
                code, _, _ = rpc_status(lambda: rpc(req, metadata=target.md, timeout=60))
                want = oracle.keys_status(keys)
            elif kind == "get":
                keys.append(keys[0])  # always over the limit: 65536 misses stream for seconds
                _check_get(target, keys, 0)
                code = want = oracle.keys_status(keys)
            elif kind in ("big-frame", "big-meta"):
                key = keys[0]
                big = fs.blob(seed, (8 << 20) + n)
                msgs = ([fs.put_msg(pb.ChunkMeta(key=key, payload_bytes=MAX_CHUNK, checksum=0)),
                         fs.put_msg(data=big)] if kind == "big-frame" else
                        [fs.put_msg(pb.ChunkMeta(key=key, payload_bytes=1, dtype="uint8",
                                                 checksum=0, parent_key=big))])
                code, _, _ = rpc_status(lambda: put(iter(msgs), metadata=target.md, timeout=60))
                want = grpc.StatusCode.RESOURCE_EXHAUSTED  # over grpc.max_receive_message_length
            else:  # a valid chunk in n one-byte frames
                data = fs.blob(seed, n // 16)
                msgs = [fs.put_msg(pb.ChunkMeta(key=keys[0], payload_bytes=len(data),
                                                checksum=oracle.xxh(data)))]
                msgs += [fs.put_msg(data=data[i:i + 1]) for i in range(len(data))]
                code, _, _ = rpc_status(lambda: put(iter(msgs), metadata=target.md, timeout=120))
                want = OK
                assert target.get_all([keys[0]]) == {keys[0]: data}
            record(f"huge {kind}", code)
            assert code == want

    prop()
    target.check_rss()
