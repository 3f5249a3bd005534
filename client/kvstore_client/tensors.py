"""Tensors in and out of the store without needless copies.

Put: a contiguous CPU tensor is sent from its own memory (a byte view, no copy); a non-contiguous
or GPU tensor is copied once to contiguous host memory first. Get: the payload is received
straight into a freshly allocated tensor's storage and reinterpreted with the chunk's dtype and
shape, so the only copy is the one from the socket.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvstore.chunk import DTYPE_BYTES
from kvstore.errors import InvalidArgument

BytesLike = bytes | bytearray | memoryview


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPE_BYTES or not isinstance(getattr(torch, name, None), torch.dtype):
        raise InvalidArgument(f"unsupported tensor dtype {name!r}")
    return getattr(torch, name)


def as_bytes_view(data: torch.Tensor | BytesLike) -> tuple[memoryview, str, tuple[int, ...],
                                                           torch.Tensor | None]:
    """(byte view, dtype name, shape, owner) for a payload; keep ``owner`` alive while sending."""
    if isinstance(data, torch.Tensor):
        t = data
        if t.device.type != "cpu" or not t.is_contiguous():
            t = t.detach().to("cpu", copy=False).contiguous()
        flat = t.detach().reshape(-1).view(torch.uint8)
        return flat.numpy().data, dtype_name(data.dtype), tuple(data.shape), t
    view = memoryview(data).cast("B")
    return view, "uint8", (len(view),), None


def empty_for(dtype: str, shape: Sequence[int], nbytes: int) -> tuple[torch.Tensor, memoryview]:
    """A tensor to receive ``nbytes`` into, and a writable byte view of its storage."""
    raw = torch.empty(nbytes, dtype=torch.uint8)
    return raw, raw.numpy().data


def view_as(raw: torch.Tensor, dtype: str, shape: Sequence[int]) -> torch.Tensor:
    t = raw.view(torch_dtype(dtype))
    return t.view(*shape) if shape else t
