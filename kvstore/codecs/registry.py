"""The codec registry and the three entry points: encode, decode, validate.

validate() is what a node runs on every put before storing: it checks the chunk's metadata against
its payload size without touching the payload. decode() runs it too, then checks what it can of
the payload itself (scales, lz4 framing), so a chunk whose metadata does not match its bytes is
rejected with InvalidArgument / DataLoss instead of being decoded into garbage.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import MappingProxyType

import torch

from kvstore.codecs.base import (
    Codec,
    EncodedChunk,
    aligned,
    as_payload,
    dtype_from_name,
    dtype_name,
    normalize_shape,
)
from kvstore.codecs.lossless import IdentityCodec, ShuffleLz4Codec
from kvstore.codecs.quantized import Fp8Codec, KiviCodec
from kvstore.errors import FailedPrecondition, InvalidArgument
from kvstore_kernels.errors import BackendUnavailableError, KernelInputError

IDENTITY = "identity"

CODECS: Mapping[str, Codec] = MappingProxyType({
    c.name: c for c in (IdentityCodec(), ShuffleLz4Codec(), Fp8Codec(), KiviCodec(4), KiviCodec(2))
})


def get_codec(name: str) -> Codec:
    """The codec called `name`; "" means identity (the proto default)."""
    codec = CODECS.get(name or IDENTITY) if isinstance(name, str) else None
    if codec is None:
        raise InvalidArgument(f"unknown codec {name!r}; known: {', '.join(CODECS)}")
    return codec


def encode(tensor: torch.Tensor, codec: str, *, backend: str = "auto",
           **params: object) -> EncodedChunk:
    """Encode `tensor` with `codec` (params: e.g. group_size=64 for KIVI).

    backend ("auto", "triton", "torch") picks the kernels of lossy codecs (see
    kvstore_kernels._backend). The tensor is not modified; see EncodedChunk for who owns the
    payload.
    """
    c = get_codec(codec)
    if not isinstance(tensor, torch.Tensor):
        raise InvalidArgument(f"encode takes a torch.Tensor, got {type(tensor).__name__}")
    dtype, shape = dtype_name(tensor.dtype), tuple(tensor.shape)
    c.check_encodable(tensor.dtype, shape)
    user_params = c.make_params(**params)
    with _kernel_errors():
        payload, full_params = c.encode(tensor.detach(), user_params, backend)
    validate(c.name, full_params, dtype, shape, payload.numel())
    return EncodedChunk(payload, c.name, full_params, dtype, shape)


def validate(codec: str, codec_params: Mapping[str, str], dtype: str, shape: Sequence[int],
             payload_bytes: int) -> None:
    """Raise InvalidArgument naming the mismatch unless a payload of `payload_bytes` bytes can be
    a chunk with this codec, params, decoded dtype and decoded shape. Reads no payload bytes."""
    c = get_codec(codec)
    dt, shp = dtype_from_name(dtype), normalize_shape(shape)
    if not isinstance(codec_params, Mapping):
        raise InvalidArgument(f"codec_params must be a mapping, got {type(codec_params).__name__}")
    if isinstance(payload_bytes, bool) or not isinstance(payload_bytes, int) or payload_bytes < 0:
        raise InvalidArgument(f"payload_bytes must be a non-negative int, got {payload_bytes!r}")
    params = dict(codec_params)
    expected = c.payload_nbytes(params, dt, shp)
    if payload_bytes != expected:
        raise InvalidArgument(
            f"{c.name} payload for dtype {dtype}, shape {list(shp)}, params {params} must be "
            f"{expected} bytes, got {payload_bytes}")


def decode(payload: object, codec: str, codec_params: Mapping[str, str], dtype: str,
           shape: Sequence[int], device: torch.device | str | None = None, *,
           backend: str = "auto") -> torch.Tensor:
    """Decode a payload (bytes-like or contiguous uint8 tensor) into a tensor of `dtype` and
    `shape` on `device` (default: the payload's device, CPU for bytes).

    Lossy payloads move to `device` first and are dequantized there, so only compressed bytes
    cross the bus; shuffle-lz4 decompresses on the host. The result is a new tensor owned by the
    caller, except for identity with a writable payload already on `device` (a tensor or a
    bytearray), which is returned as a view of the payload without a copy.
    """
    data, writable = as_payload(payload)
    validate(codec, codec_params, dtype, shape, data.numel())
    c = get_codec(codec)
    dt, shp, params = dtype_from_name(dtype), normalize_shape(shape), dict(codec_params)
    target = torch.device(device) if device is not None else data.device
    with _kernel_errors():
        if c.host_only:
            return c.decode(data, params, dt, shp, backend).to(target)
        if data.device != target:
            data = data.to(target)
        elif not writable and not c.lossy:
            data = data.clone()  # identity would hand out a view of read-only memory
        return c.decode(aligned(data), params, dt, shp, backend)


@contextmanager
def _kernel_errors() -> Iterator[None]:
    """Kernel errors in kvstore's hierarchy (validation normally catches bad input first)."""
    try:
        yield
    except KernelInputError as e:
        raise InvalidArgument(str(e)) from e
    except BackendUnavailableError as e:
        raise FailedPrecondition(str(e)) from e
