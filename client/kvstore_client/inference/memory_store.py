"""InMemoryChunkStore: the ChunkStore protocol over a dict, for tests, demos and benchmarks.

Ownership: ``put_many`` keeps its own contiguous copy (in pinned memory when ``pin_memory`` is
set, so a GPU can copy it asynchronously); ``get_many`` returns that stored tensor itself, without
copying, like a CPU tier serving a buffer: callers must treat it as read-only. Thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from kvstore.errors import InvalidArgument
from kvstore.keys import validate_key


@dataclass(frozen=True)
class LookupResult:
    found: list[bool]
    prefix_hits: int


@dataclass(frozen=True)
class StoredChunk:
    tensor: torch.Tensor
    parent_key: bytes | None
    start_pos: int
    num_tokens: int


@dataclass
class InMemoryChunkStore:
    pin_memory: bool = False
    _chunks: dict[bytes, StoredChunk] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    puts: int = 0
    gets: int = 0

    def put_many(
        self,
        keys: Sequence[bytes],
        tensors: Sequence[torch.Tensor],
        *,
        parent_keys: Sequence[bytes | None] | None = None,
        start_pos: Sequence[int] | None = None,
        num_tokens: Sequence[int] | None = None,
    ) -> list[bool]:
        n = len(keys)
        for name, seq in (("tensors", tensors), ("parent_keys", parent_keys),
                          ("start_pos", start_pos), ("num_tokens", num_tokens)):
            if seq is not None and len(seq) != n:
                raise InvalidArgument(f"{name} has {len(seq)} entries for {n} keys")
        for key in keys:
            validate_key(key)
        stored = []
        for i, tensor in enumerate(tensors):
            copy = tensor.detach().to("cpu", copy=True).contiguous()
            if self.pin_memory:
                copy = copy.pin_memory()
            stored.append(StoredChunk(
                tensor=copy,
                parent_key=parent_keys[i] if parent_keys is not None else None,
                start_pos=start_pos[i] if start_pos is not None else 0,
                num_tokens=num_tokens[i] if num_tokens is not None else 0,
            ))
        with self._lock:
            for key, chunk in zip(keys, stored, strict=True):
                self._chunks[bytes(key)] = chunk
            self.puts += n
        return [True] * n

    def get_many(self, keys: Sequence[bytes]) -> list[torch.Tensor | None]:
        with self._lock:
            self.gets += len(keys)
            return [
                chunk.tensor if (chunk := self._chunks.get(bytes(k))) is not None else None
                for k in keys
            ]

    def lookup(
        self, keys: Sequence[bytes], *, prefetch: bool = False, prefetch_next: int = 0
    ) -> LookupResult:
        with self._lock:
            found = [bytes(k) in self._chunks for k in keys]
        hits = next((i for i, f in enumerate(found) if not f), len(found))
        return LookupResult(found=found, prefix_hits=hits)

    def info(self, key: bytes) -> StoredChunk | None:
        with self._lock:
            return self._chunks.get(bytes(key))

    def __len__(self) -> int:
        with self._lock:
            return len(self._chunks)

    def nbytes(self) -> int:
        with self._lock:
            return sum(c.tensor.numel() * c.tensor.element_size() for c in self._chunks.values())
