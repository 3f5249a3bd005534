"""Chunk keys: the one place that turns token ids into store keys.

Shared by the server (handshake checks) and the client (key computation). Pure Python + xxhash,
no torch, no gRPC.

Scheme ``xxh3-128/v1`` (see shared/PAPERS.md section 1):

* Every key lives in a *namespace*: model id, KV dtype, KV layout, chunk size, tenant salt and
  scheme version. ``namespace_digest = xxh3_128(b"kvstore-ns\\0" + canonical fields)``. Two
  workers that differ in any field get disjoint keys, so a mismatch shows up as a refused
  handshake, never as silently wrong KV.
* Prefix (chained) key of chunk i: ``h_i = xxh3_128(b"P" + h_{i-1} + len_i + tokens_i)`` with
  ``h_{-1} = namespace_digest``. A hit on h_i implies the whole prefix up to chunk i matched.
* Content key: ``xxh3_128(b"C" + namespace_digest + len + tokens)``; no parent, so the same
  document hits at any position (CacheBlend reuse).
* Tokens are encoded as little-endian uint32; ``len`` is a little-endian uint32 token count so a
  partial chunk never collides with a full one.
* Partial trailing chunks: by default only full chunks get keys (like nano-vllm and LMCache).
  ``include_partial=True`` also keys the trailing partial chunk, so prompts shorter than one
  chunk can hit; the worker decides, both sides hash the same way.

Any change to these bytes must bump ``SCHEME_VERSION``; golden vectors in tests/test_keys.py pin it.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import xxhash

from kvstore.errors import KeySchemeError

HASH_ALGORITHM = "xxh3-128"
SCHEME_VERSION = 1
KEY_BYTES = 16
DEFAULT_CHUNK_TOKENS = 256
_MAX_TOKEN_ID = 2**32 - 1


@dataclass(frozen=True)
class KeyScheme:
    """Everything that must agree between a worker and a store node for keys to mean the same KV.

    ``kv_layout`` names how a chunk's tensor is laid out, e.g. ``"LKHTD"`` (layers, k/v, kv heads,
    tokens, head_dim; one layer is one contiguous byte range). ``tenant`` salts the namespace so
    tenants never share keys unless they deliberately use the same salt.
    """

    model_id: str
    kv_dtype: str
    kv_layout: str = "LKHTD"
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    tenant: str = ""
    hash_algorithm: str = HASH_ALGORITHM
    version: int = SCHEME_VERSION

    def __post_init__(self) -> None:
        if not self.model_id:
            raise KeySchemeError("model_id must be a non-empty string")
        if not self.kv_dtype:
            raise KeySchemeError("kv_dtype must be a non-empty string such as 'float16'")
        if self.chunk_tokens <= 0:
            raise KeySchemeError(f"chunk_tokens must be positive, got {self.chunk_tokens}")
        if self.hash_algorithm != HASH_ALGORITHM or self.version != SCHEME_VERSION:
            raise KeySchemeError(
                f"unsupported key scheme {self.hash_algorithm}/v{self.version}; this build "
                f"implements {HASH_ALGORITHM}/v{SCHEME_VERSION}"
            )
        for name in ("model_id", "kv_dtype", "kv_layout", "tenant"):
            if "\0" in getattr(self, name):
                raise KeySchemeError(f"{name} must not contain NUL bytes")

    def namespace_digest(self) -> bytes:
        fields = (
            self.hash_algorithm,
            str(self.version),
            self.model_id,
            self.kv_dtype,
            self.kv_layout,
            str(self.chunk_tokens),
            self.tenant,
        )
        return xxhash.xxh3_128_digest(b"kvstore-ns\0" + "\0".join(fields).encode("utf-8"))

    def namespace_id(self) -> str:
        """Short printable id of the namespace (for stats and logs)."""
        return self.namespace_digest().hex()[:16]


def _token_bytes(tokens: Sequence[int]) -> bytes:
    try:
        return struct.pack(f"<I{len(tokens)}I", len(tokens), *tokens)
    except struct.error as exc:
        bad = next((t for t in tokens if not _is_token_id(t)), None)
        raise KeySchemeError(f"token ids must be integers in [0, 2^32); got {bad!r}") from exc


def _is_token_id(t: object) -> bool:
    # operator.index, not int(): int() would accept "7" and 1.5 and raise ValueError/TypeError
    # (not KeySchemeError) for None or b"..."
    try:
        return 0 <= operator.index(t) <= _MAX_TOKEN_ID  # type: ignore[arg-type]
    except TypeError:
        return False


def split_chunks(
    tokens: Sequence[int], chunk_tokens: int, include_partial: bool = False
) -> Iterator[Sequence[int]]:
    """Yield consecutive chunks of ``chunk_tokens`` tokens (and the partial tail if asked)."""
    full = len(tokens) // chunk_tokens
    for i in range(full):
        yield tokens[i * chunk_tokens : (i + 1) * chunk_tokens]
    if include_partial and len(tokens) % chunk_tokens:
        yield tokens[full * chunk_tokens :]


def prefix_keys(
    scheme: KeyScheme, tokens: Sequence[int], include_partial: bool = False
) -> list[bytes]:
    """Chained keys h_0..h_n of the prompt's chunks; key i covers tokens [0, (i+1)*chunk)."""
    parent = scheme.namespace_digest()
    keys: list[bytes] = []
    for chunk in split_chunks(tokens, scheme.chunk_tokens, include_partial):
        parent = xxhash.xxh3_128_digest(b"P" + parent + _token_bytes(chunk))
        keys.append(parent)
    return keys


def content_key(scheme: KeyScheme, tokens: Sequence[int]) -> bytes:
    """Position-independent key of one chunk of tokens (any length up to the chunk size)."""
    if not 0 < len(tokens) <= scheme.chunk_tokens:
        raise KeySchemeError(
            f"a content key covers 1..{scheme.chunk_tokens} tokens, got {len(tokens)}"
        )
    return xxhash.xxh3_128_digest(b"C" + scheme.namespace_digest() + _token_bytes(tokens))


def content_keys(
    scheme: KeyScheme, tokens: Sequence[int], include_partial: bool = True
) -> list[bytes]:
    """Content keys of a segment's chunks (a document cached on its own, positions from 0)."""
    return [
        content_key(scheme, chunk)
        for chunk in split_chunks(tokens, scheme.chunk_tokens, include_partial)
    ]


def validate_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray | memoryview) or len(key) != KEY_BYTES:
        got = len(key) if isinstance(key, bytes | bytearray | memoryview) else type(key).__name__
        raise KeySchemeError(f"a chunk key is {KEY_BYTES} bytes, got {got}")


def key_hex(key: bytes) -> str:
    return bytes(key).hex()


def parse_key_hex(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise KeySchemeError(f"not a hex chunk key: {text!r}") from exc
    validate_key(key)
    return key
