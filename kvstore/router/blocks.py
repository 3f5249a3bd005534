"""Prompt -> routing blocks: chained 64-bit prefix hashes, one per 512-token block.

``blocks[i]`` identifies the whole prefix up to the end of block i (like nano-vllm's block hash:
hash of the parent hash plus this block's bytes), so two prompts share ``blocks[:k]`` exactly when
their first k blocks are equal. The trailing partial block is hashed too: routing needs a key for
prompts shorter than one block, and Mooncake's trace ids cover partial blocks the same way.

Hashes are xxh3-64 over explicit little-endian bytes (never Python's ``hash()``), so every router
process and the simulator agree.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import xxhash

from kvstore.errors import InvalidArgument

_ROOT = xxhash.xxh3_64_intdigest(b"kvstore-route-blocks/v1")
_U64 = struct.Struct("<Q")


def block_hashes(tokens: Sequence[int], block_tokens: int = 512) -> list[int]:
    """Chained hashes of the prompt's blocks (partial tail included)."""
    if block_tokens < 1:
        raise InvalidArgument(f"block_tokens must be >= 1, got {block_tokens}")
    parent = _ROOT
    out: list[int] = []
    for start in range(0, len(tokens), block_tokens):
        chunk = tokens[start : start + block_tokens]
        try:
            data = struct.pack(f"<{len(chunk)}I", *chunk)
        except struct.error as exc:
            raise InvalidArgument("token ids must be integers in [0, 2^32)") from exc
        parent = xxhash.xxh3_64_intdigest(_U64.pack(parent) + data)
        out.append(parent)
    return out


def chain_block_ids(ids: Sequence[int]) -> list[int]:
    """Chained hashes from per-block ids that are already prefix-aware (Mooncake ``hash_ids``).

    The trace's ids name a block *at its position in a shared prefix*; chaining them keeps the
    invariant that ``blocks[i]`` names the whole prefix, which the prefix index relies on.
    """
    parent = _ROOT
    out: list[int] = []
    for block_id in ids:
        parent = xxhash.xxh3_64_intdigest(_U64.pack(parent) + _U64.pack(block_id))
        out.append(parent)
    return out


def key_bytes(prefix_hash: int) -> bytes:
    """Ring key of a prefix (its chained hash as 8 little-endian bytes)."""
    return _U64.pack(prefix_hash)
