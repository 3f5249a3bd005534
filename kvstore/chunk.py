"""Chunk metadata and checksums, shared by server and client (no gRPC, no torch at import)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import xxhash

from kvstore.errors import InvalidArgument
from kvstore.keys import KEY_BYTES

IDENTITY = "identity"

# Element sizes of the dtypes a chunk may declare (torch names without "torch.").
DTYPE_BYTES: dict[str, int] = {
    "float32": 4, "float16": 2, "bfloat16": 2, "float64": 8,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "int8": 1, "uint8": 1, "int16": 2, "int32": 4,
}


def checksum(views: Iterable[memoryview | bytes | bytearray]) -> int:
    """xxh3-64 over the concatenation of ``views`` (streamed; no copy)."""
    h = xxhash.xxh3_64()
    for v in views:
        h.update(v)
    return h.intdigest()


@dataclass(frozen=True)
class ChunkInfo:
    """What a node knows about a stored chunk besides its bytes."""

    key: bytes
    payload_bytes: int
    checksum: int
    dtype: str = "uint8"
    shape: tuple[int, ...] = ()
    codec: str = IDENTITY
    codec_params: dict[str, str] = field(default_factory=dict)
    parent_key: bytes = b""
    num_tokens: int = 0
    start_pos: int = 0

    def validate(self, max_chunk_bytes: int) -> None:
        """Raise InvalidArgument for metadata that cannot describe a real chunk."""
        if len(self.key) != KEY_BYTES:
            raise InvalidArgument(f"chunk key must be {KEY_BYTES} bytes, got {len(self.key)}")
        if self.parent_key and len(self.parent_key) != KEY_BYTES:
            raise InvalidArgument(
                f"parent key must be empty or {KEY_BYTES} bytes, got {len(self.parent_key)}"
            )
        if self.payload_bytes <= 0:
            raise InvalidArgument("chunk payload is empty")
        if self.payload_bytes > max_chunk_bytes:
            raise InvalidArgument(
                f"chunk of {self.payload_bytes} bytes exceeds this node's max_chunk_bytes "
                f"({max_chunk_bytes})"
            )
        if self.dtype not in DTYPE_BYTES:
            raise InvalidArgument(
                f"unknown dtype {self.dtype!r}; expected one of {sorted(DTYPE_BYTES)}"
            )
        if any(d < 0 for d in self.shape):
            raise InvalidArgument(f"negative dimension in shape {list(self.shape)}")
        if self.codec in ("", IDENTITY):
            if self.codec_params:  # stored, it would fail every client's decode on get
                raise InvalidArgument(f"codec identity takes no codec_params, got "
                                      f"{sorted(self.codec_params)}")
            n = DTYPE_BYTES[self.dtype]
            for d in self.shape:
                n *= d
            if self.shape and n != self.payload_bytes:
                raise InvalidArgument(
                    f"shape {list(self.shape)} of {self.dtype} is {n} bytes but the payload "
                    f"declares {self.payload_bytes}"
                )
