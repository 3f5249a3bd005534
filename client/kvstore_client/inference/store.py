"""The chunk-store protocol the engine talks to, and the chunk tensor layout ("LKHTD").

Chunk layout (the contract with the store and the codecs): one tensor per chunk,
``[L, 2, H, T, D]`` = layers, k/v, kv heads, tokens, head_dim; contiguous and layer-major, so one
layer is one contiguous byte range. K is ``[:, 0]``, V is ``[:, 1]``.

Key rotation: K is stored already rotated. Chained (prefix) chunks are rotated at their absolute
positions, which is where they are always used. Content chunks are stored rotated as if the chunk
began at position 0 (``start_pos=0`` in the put); the engine re-rotates them on write-back when
they were computed elsewhere and by ``delta = new position of the chunk's first token`` on load.
So a content chunk is self-describing: the store never has to return its start position.

The engine calls the store from worker threads (fetches are pipelined under compute), so a
``ChunkStore`` must be safe to call from several threads at once; kvstore_client's sync
``KVStoreClient`` and :class:`InMemoryChunkStore` both are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

LAYOUT = "LKHTD"


class LookupResultLike(Protocol):
    @property
    def found(self) -> Sequence[bool]: ...


@runtime_checkable
class ChunkStore(Protocol):
    """The sync methods the engine needs; a miss is ``None`` / ``found=False``, never an error."""

    def put_many(
        self,
        keys: Sequence[bytes],
        tensors: Sequence[torch.Tensor],
        *,
        parent_keys: Sequence[bytes | None] | None = None,
        start_pos: Sequence[int] | None = None,
        num_tokens: Sequence[int] | None = None,
    ) -> list[bool]: ...

    def get_many(self, keys: Sequence[bytes]) -> list[torch.Tensor | None]: ...

    def lookup(
        self, keys: Sequence[bytes], *, prefetch: bool = False, prefetch_next: int = 0
    ) -> LookupResultLike: ...


def chunk_shape(n_layers: int, kv_heads: int, n_tokens: int, head_dim: int) -> tuple[int, ...]:
    return (n_layers, 2, kv_heads, n_tokens, head_dim)

