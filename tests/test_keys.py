"""Chunk keys (kvstore/keys.py): golden vectors, the chain property, namespaces, content keys."""

from __future__ import annotations

import dataclasses
import struct

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.errors import KeySchemeError
from kvstore.keys import (
    KEY_BYTES,
    KeyScheme,
    content_key,
    content_keys,
    key_hex,
    parse_key_hex,
    prefix_keys,
    split_chunks,
    validate_key,
)

# Every field spelled out so the vectors pin the hashing, not today's defaults (those are pinned
# separately by test_scheme_defaults_are_pinned).
GOLDEN = dict(model_id="golden/llama-3-8b", kv_dtype="float16", kv_layout="LKHTD",
              chunk_tokens=256)
TOKENS = list(range(600))  # two full chunks and a partial tail of 88 tokens

# Computed once from the xxh3-128/v1 implementation. If one of these changes, the key scheme
# changed: every cached chunk in every deployment becomes unreachable. Bump SCHEME_VERSION and
# update these deliberately.
GOLDEN_NAMESPACE = "4794b04ce60a102e6ae0e1d0ef802b60"
GOLDEN_PREFIX = ["a8efe0fa6824bed89e2eca6a57a8730f", "aee57339c6ca88966cb805b0e0ccc993"]
GOLDEN_PARTIAL_TAIL = "7a90d8aa1f046c9258ab09271547ae14"
GOLDEN_CONTENT = ["1827c219ab1b96d90235ea7b81687e72", "77e494f5cb262deb1d76d34614c36ae0",
                  "e65675ffb192ec5749262c3face0346b"]
GOLDEN_TENANTS = {
    "tenant-a": (["379456524eba1ee23337255439452b3b", "d9a7fc36efb79fb983047a780d6ede62",
                  "30f0975b5b5c7b7911030391fbe6d350"], "26a05836b727a99810f965acd6fa5f88"),
    "tenant-b": (["3cfbe621c235d272f7ff17f0e9a53328", "7d03e9323b873505090904ab915e7547",
                  "dce3661c17a5e863980bba506a68d75c"], "dd75a6eb2ef714a8532204988fa2ec80"),
}


@pytest.fixture
def scheme() -> KeyScheme:
    return KeyScheme(**GOLDEN)


def hexes(keys: list[bytes]) -> list[str]:
    return [k.hex() for k in keys]


# ---- golden vectors -------------------------------------------------------------------------
def test_golden_namespace(scheme):
    assert scheme.namespace_digest().hex() == GOLDEN_NAMESPACE
    assert scheme.namespace_id() == GOLDEN_NAMESPACE[:16]


def test_golden_prefix_keys_full_chunks_only(scheme):
    assert hexes(prefix_keys(scheme, TOKENS)) == GOLDEN_PREFIX


def test_golden_prefix_keys_with_partial_tail(scheme):
    assert hexes(prefix_keys(scheme, TOKENS, include_partial=True)) == \
        GOLDEN_PREFIX + [GOLDEN_PARTIAL_TAIL]


def test_golden_content_keys(scheme):
    assert hexes(content_keys(scheme, TOKENS)) == GOLDEN_CONTENT
    assert hexes(content_keys(scheme, TOKENS, include_partial=False)) == GOLDEN_CONTENT[:2]


@pytest.mark.parametrize("tenant", sorted(GOLDEN_TENANTS))
def test_golden_tenant_keys(tenant):
    s = KeyScheme(**GOLDEN, tenant=tenant)
    prefix, content = GOLDEN_TENANTS[tenant]
    assert hexes(prefix_keys(s, TOKENS, include_partial=True)) == prefix
    assert content_key(s, TOKENS[:256]).hex() == content


def test_golden_vectors_follow_the_documented_byte_layout(scheme):
    """An independent implementation of the docstring's formulas gives the same keys."""
    fields = ["xxh3-128", "1", GOLDEN["model_id"], GOLDEN["kv_dtype"], GOLDEN["kv_layout"],
              "256", ""]
    ns = xxhash.xxh3_128_digest(b"kvstore-ns\0" + "\0".join(fields).encode())
    assert ns.hex() == GOLDEN_NAMESPACE

    def tok(ts: list[int]) -> bytes:
        return struct.pack(f"<I{len(ts)}I", len(ts), *ts)

    h, expect = ns, []
    for lo, hi in ((0, 256), (256, 512), (512, 600)):
        h = xxhash.xxh3_128_digest(b"P" + h + tok(TOKENS[lo:hi]))
        expect.append(h.hex())
    assert expect == GOLDEN_PREFIX + [GOLDEN_PARTIAL_TAIL]
    assert xxhash.xxh3_128_digest(b"C" + ns + tok(TOKENS[256:512])).hex() == GOLDEN_CONTENT[1]


def test_scheme_defaults_are_pinned():
    """Defaults are part of the key space: a worker relying on them must keep its keys."""
    assert KeyScheme("golden/llama-3-8b", "float16") == KeyScheme(**GOLDEN)
    assert KeyScheme("m", "float16").namespace_digest() == KeyScheme(
        "m", "float16", kv_layout="LKHTD", chunk_tokens=256, tenant="",
        hash_algorithm="xxh3-128", version=1).namespace_digest()


# ---- chain property -------------------------------------------------------------------------
def test_prefix_of_tokens_gives_prefix_of_keys(scheme):
    full = prefix_keys(scheme, TOKENS * 3)
    for n in (0, 255, 256, 511, 512, 1000, 1800):
        assert prefix_keys(scheme, (TOKENS * 3)[:n]) == full[:n // 256]


@pytest.mark.parametrize("chunk", [0, 1, 2])
def test_changing_one_token_changes_keys_from_its_chunk_on(scheme, chunk):
    tokens = list(range(1000, 1000 + 4 * 256))
    base = prefix_keys(scheme, tokens)
    changed = list(tokens)
    changed[chunk * 256 + 17] += 1
    keys = prefix_keys(scheme, changed)
    assert keys[:chunk] == base[:chunk]
    assert all(a != b for a, b in zip(keys[chunk:], base[chunk:], strict=True))


@settings(max_examples=60, deadline=None, database=None)
@given(tokens=st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=40),
       cut=st.integers(0, 40), partial=st.booleans())
def test_chain_property_holds_for_any_tokens(tokens, cut, partial):
    s = KeyScheme("prop", "bfloat16", chunk_tokens=4)
    keys = prefix_keys(s, tokens, include_partial=partial)
    head = prefix_keys(s, tokens[:cut])  # full chunks of a prefix are always a prefix of keys
    assert keys[:len(head)] == head
    assert len(keys) == len(tokens) // 4 + (partial and len(tokens) % 4 != 0)
    assert len(set(keys)) == len(keys)


# ---- namespaces -----------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("model_id", "golden/llama-3-70b"),
    ("kv_dtype", "bfloat16"),
    ("kv_layout", "LKTHD"),
    ("chunk_tokens", 128),
    ("tenant", "tenant-a"),
])
def test_every_namespace_field_changes_every_key(scheme, field, value):
    other = dataclasses.replace(scheme, **{field: value})
    assert other.namespace_digest() != scheme.namespace_digest()
    tokens = list(range(512))
    mine = prefix_keys(scheme, tokens) + content_keys(scheme, tokens[:128])
    theirs = prefix_keys(other, tokens) + content_keys(other, tokens[:128])
    assert not set(mine) & set(theirs)


def test_namespace_fields_do_not_run_together():
    """Fields are NUL separated, so moving a character between fields changes the namespace."""
    a = KeyScheme("ab", "c", kv_layout="x")
    b = KeyScheme("a", "bc", kv_layout="x")
    assert a.namespace_digest() != b.namespace_digest()


# ---- content keys ---------------------------------------------------------------------------
def test_content_keys_are_position_independent(scheme):
    doc = list(range(5000, 5000 + 300))
    alone = content_keys(scheme, doc)
    for preamble in ([], [1] * 256, list(range(512))):
        prompt = preamble + doc
        # the same document, chunked from its own start, gets the same keys wherever it sits
        assert content_keys(scheme, prompt[len(preamble):]) == alone
    # while prefix keys of the same document depend on what came before it
    assert prefix_keys(scheme, [1] * 256 + doc)[1] != prefix_keys(scheme, doc)[0]


def test_content_key_differs_from_prefix_key_of_same_tokens(scheme):
    chunk = TOKENS[:256]
    assert content_key(scheme, chunk) != prefix_keys(scheme, chunk)[0]


@pytest.mark.parametrize("n", [0, 257])
def test_content_key_length_limits(scheme, n):
    with pytest.raises(KeySchemeError, match="1..256"):
        content_key(scheme, list(range(n)))


# ---- partial tails --------------------------------------------------------------------------
def test_partial_tail_is_keyed_only_when_asked(scheme):
    assert len(prefix_keys(scheme, TOKENS[:255])) == 0
    assert len(prefix_keys(scheme, TOKENS[:255], include_partial=True)) == 1
    assert len(prefix_keys(scheme, TOKENS[:512], include_partial=True)) == 2  # no empty tail


def test_partial_tail_never_collides_with_full_chunk(scheme):
    """The length prefix keeps [t0..t87] apart from a full chunk that starts the same way."""
    tail = prefix_keys(scheme, TOKENS[:88], include_partial=True)[0]
    tail_padded = prefix_keys(scheme, TOKENS[:88] + [0] * 168)[0]
    assert tail != tail_padded
    # growing the tail by one token changes its key, the full keys before it do not change
    k1 = prefix_keys(scheme, TOKENS[:300], include_partial=True)
    k2 = prefix_keys(scheme, TOKENS[:301], include_partial=True)
    assert k1[0] == k2[0] and k1[1] != k2[1]


def test_split_chunks():
    assert [list(c) for c in split_chunks(list(range(7)), 3)] == [[0, 1, 2], [3, 4, 5]]
    assert [list(c) for c in split_chunks(list(range(7)), 3, include_partial=True)] == \
        [[0, 1, 2], [3, 4, 5], [6]]
    assert list(split_chunks([], 3, include_partial=True)) == []


# ---- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "7", None, b"\x01"])
def test_bad_token_ids_raise_key_scheme_error(scheme, bad):
    tokens = list(range(256))
    tokens[100] = bad
    with pytest.raises(KeySchemeError, match="token ids") as exc:
        prefix_keys(scheme, tokens)
    assert repr(bad) in str(exc.value)  # names the offending token
    with pytest.raises(KeySchemeError, match="token ids"):
        content_key(scheme, tokens)


def test_largest_token_id_is_accepted(scheme):
    assert len(prefix_keys(scheme, [2**32 - 1] * 256)) == 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(model_id="", kv_dtype="float16"), "model_id"),
    (dict(model_id="m", kv_dtype=""), "kv_dtype"),
    (dict(model_id="m", kv_dtype="float16", chunk_tokens=0), "chunk_tokens"),
    (dict(model_id="m", kv_dtype="float16", chunk_tokens=-4), "chunk_tokens"),
    (dict(model_id="m\0x", kv_dtype="float16"), "NUL"),
    (dict(model_id="m", kv_dtype="float16", tenant="a\0"), "NUL"),
    (dict(model_id="m", kv_dtype="float16", version=2), "unsupported key scheme"),
    (dict(model_id="m", kv_dtype="float16", hash_algorithm="sha256"), "unsupported key scheme"),
])
def test_bad_scheme_fields(kwargs, match):
    with pytest.raises(KeySchemeError, match=match):
        KeyScheme(**kwargs)


def test_key_hex_round_trip(scheme):
    key = prefix_keys(scheme, TOKENS)[0]
    assert parse_key_hex(key_hex(key)) == key
    validate_key(key)
    assert len(key) == KEY_BYTES


@pytest.mark.parametrize("text", ["zz" * 16, "ab" * 15, "ab" * 17, ""])
def test_parse_key_hex_rejects_bad_text(text):
    with pytest.raises(KeySchemeError):
        parse_key_hex(text)


@pytest.mark.parametrize("key", [b"x" * 15, b"x" * 17, b"", "x" * 16, None])
def test_validate_key_rejects_wrong_length_or_type(key):
    with pytest.raises(KeySchemeError, match="16 bytes"):
        validate_key(key)
