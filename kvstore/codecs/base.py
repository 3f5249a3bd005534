"""The codec interface, the encoded chunk, and helpers all codecs share (dtypes, params, payloads).

A codec turns a chunk tensor into one contiguous uint8 payload plus string params, and back. What a
codec needs to decode a payload is its name, its params, and the dtype and shape of the decoded
tensor: exactly the fields of ChunkMeta (proto/kvstore/v1/kvstore.proto), so any node or client can
decode a chunk without asking who encoded it.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from kvstore.errors import InvalidArgument

Params = Mapping[str, str]

# dtype names (torch names without "torch.") a chunk may declare.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2, "int8": torch.int8, "uint8": torch.uint8,
    "int16": torch.int16, "int32": torch.int32, "int64": torch.int64,
}
FLOAT_KV_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP16_MAX = 65504.0


@dataclass(frozen=True, eq=False)
class EncodedChunk:
    """One encoded chunk: the fields of ChunkMeta that describe it, and its payload.

    payload is a contiguous 1-D torch.uint8 tensor. It lives on the input tensor's device, except
    for shuffle-lz4 (always CPU). For "identity" it is a view of the input tensor's memory when that
    tensor was contiguous (no copy): do not modify the input while the payload is in use.
    """

    payload: torch.Tensor
    codec: str
    codec_params: dict[str, str]
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return self.payload.numel()

    def to_bytes(self) -> bytes:
        """A copy of the payload as bytes (copies device memory to the host first)."""
        return self.payload.cpu().numpy().tobytes()


class Codec(ABC):
    """One codec. Instances are stateless; behaviour depends only on the arguments."""

    name: ClassVar[str]
    lossy: ClassVar[bool]
    # Params a caller may pass to encode(); other params are computed by encode().
    user_param_names: ClassVar[frozenset[str]] = frozenset()
    # True when decoding runs on the host only (lz4): the payload is decoded on the CPU and the
    # result moved to the requested device. Otherwise the payload moves and decodes there.
    host_only: ClassVar[bool] = False

    def make_params(self, **kwargs: object) -> dict[str, str]:
        """Canonical user params (str -> str) from encode()'s keyword arguments."""
        if kwargs:
            raise InvalidArgument(f"codec {self.name!r} takes no params, got {sorted(kwargs)}")
        return {}

    def user_params(self, params: Params) -> dict[str, str]:
        """The part of stored codec_params that a caller chose (used to compare codec choices)."""
        return {k: params[k] for k in self.user_param_names if k in params}

    @abstractmethod
    def check_encodable(self, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        """Raise InvalidArgument if this codec cannot encode a tensor of this dtype and shape."""

    @abstractmethod
    def payload_nbytes(self, params: Params, dtype: torch.dtype, shape: tuple[int, ...]) -> int:
        """Check params against dtype and shape (InvalidArgument naming the problem) and return
        the exact payload size they imply."""

    @abstractmethod
    def encode(self, x: torch.Tensor, params: dict[str, str],
               backend: str) -> tuple[torch.Tensor, dict[str, str]]:
        """(payload, full codec_params) for x; params are the canonical user params."""

    @abstractmethod
    def decode(self, payload: torch.Tensor, params: Params, dtype: torch.dtype,
               shape: tuple[int, ...], backend: str) -> torch.Tensor:
        """The decoded tensor, on the payload's device. The payload has already been validated."""


# ----------------------------------------------------------------------------- helpers


def dtype_from_name(name: str) -> torch.dtype:
    dtype = DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None:
        raise InvalidArgument(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise InvalidArgument(f"chunks cannot hold dtype {name}; known: {', '.join(DTYPES)}")
    return name


def normalize_shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"shape must be a sequence of integers, got {shape!r}") from e
    if any(s < 0 for s in dims):
        raise InvalidArgument(f"shape has a negative dimension: {dims}")
    return dims


def check_param_keys(codec: str, params: Params, allowed: frozenset[str]) -> None:
    for key, value in params.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidArgument(f"codec_params must map str to str, got {key!r}: {value!r}")
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise InvalidArgument(f"codec {codec!r} does not take params {unknown}"
                              f" (allowed: {sorted(allowed) or 'none'})")


def int_param(codec: str, params: Params, key: str) -> int:
    raw = params.get(key)
    if raw is None:
        raise InvalidArgument(f"codec {codec!r} needs codec_params[{key!r}]")
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidArgument(f"codec {codec!r}: {key} must be a non-negative integer, got {raw!r}")
    return int(raw)


def raw_nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * dtype.itemsize


def check_float_kv(codec: str, dtype: torch.dtype) -> None:
    if dtype not in FLOAT_KV_DTYPES:
        raise InvalidArgument(f"codec {codec!r} encodes float16/bfloat16/float32 chunks, "
                              f"not {dtype_name(dtype)}")


def check_values(codec: str, x: torch.Tensor, limit: float) -> None:
    """Lossy codecs cannot represent NaN/inf (or, for fp16 scales, values beyond `limit`):
    refuse rather than store garbage. One host sync."""
    amax = x.abs().amax().item() if x.numel() else 0.0
    if not (math.isfinite(amax) and amax <= limit):  # NaN propagates through amax
        raise InvalidArgument(f"codec {codec!r} cannot encode values with |x| = {amax} "
                              f"(must be finite and at most {limit:g})")


def as_payload(payload: object) -> tuple[torch.Tensor, bool]:
    """(contiguous 1-D uint8 tensor, writable) for a uint8 tensor or any bytes-like object.

    Bytes-like payloads are wrapped without a copy; `writable` is False for read-only buffers
    (bytes), so that a decoder that would return a view of them copies instead.
    """
    if isinstance(payload, torch.Tensor):
        if payload.dtype != torch.uint8:
            raise InvalidArgument(f"payload tensor must be uint8, got {payload.dtype}")
        if not payload.is_contiguous():
            raise InvalidArgument("payload tensor must be contiguous")
        return payload.reshape(-1), True
    try:
        view = memoryview(payload)  # type: ignore[arg-type]
    except TypeError as e:
        raise InvalidArgument(f"payload must be bytes-like or a uint8 tensor, "
                              f"got {type(payload).__name__}") from e
    if not view.contiguous:
        raise InvalidArgument("payload buffer must be contiguous")
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    if view.nbytes == 0:
        return torch.empty(0, dtype=torch.uint8), True
    with warnings.catch_warnings():
        # torch warns that writes to a read-only buffer are undefined; nothing here writes to it.
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.frombuffer(view, dtype=torch.uint8)
    return tensor, not view.readonly


def aligned(payload: torch.Tensor, alignment: int = 16) -> torch.Tensor:
    """payload, or an aligned copy if its address is not a multiple of `alignment` (a payload
    sliced out of a larger message may start anywhere; typed views need aligned memory)."""
    return payload if payload.data_ptr() % alignment == 0 else payload.clone()
