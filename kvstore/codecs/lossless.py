"""Lossless codecs: identity (the raw bytes) and shuffle-lz4 (byte planes, each lz4-compressed).

shuffle-lz4. The bytes of each E-byte element are split into E planes (plane j = byte j of every
element, little-endian), so the sign/exponent bytes of float KV, which repeat a lot, sit next to
each other; each plane is compressed as one lz4 block. A plane that lz4 cannot shrink is stored
as is, so the payload is never larger than the raw tensor. Payload = the planes back to back;
codec_params: raw_bytes (numel * E) and planes (comma-separated stored size of each plane; a plane
stored raw has exactly numel bytes). Both are checked against dtype and shape before anything is
decompressed, and every decompressed plane must come out exactly numel bytes long.
"""

from __future__ import annotations

import lz4.block
import numpy as np
import torch

from kvstore.codecs.base import (
    Codec,
    Params,
    check_param_keys,
    int_param,
    raw_nbytes,
)
from kvstore.errors import DataLoss, InvalidArgument


class IdentityCodec(Codec):
    """The tensor's own bytes, in the tensor's memory order (C-contiguous)."""

    name = "identity"
    lossy = False

    def check_encodable(self, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        return None

    def payload_nbytes(self, params: Params, dtype: torch.dtype, shape: tuple[int, ...]) -> int:
        check_param_keys(self.name, params, frozenset())
        return raw_nbytes(dtype, shape)

    def encode(self, x: torch.Tensor, params: dict[str, str],
               backend: str) -> tuple[torch.Tensor, dict[str, str]]:
        return x.contiguous().reshape(-1).view(torch.uint8), {}

    def decode(self, payload: torch.Tensor, params: Params, dtype: torch.dtype,
               shape: tuple[int, ...], backend: str) -> torch.Tensor:
        return payload.view(dtype).view(shape)


class ShuffleLz4Codec(Codec):
    name = "shuffle-lz4"
    lossy = False
    host_only = True
    _keys = frozenset({"raw_bytes", "planes"})

    def check_encodable(self, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        return None

    def payload_nbytes(self, params: Params, dtype: torch.dtype, shape: tuple[int, ...]) -> int:
        return sum(self._plane_sizes(params, dtype, shape))

    def _plane_sizes(self, params: Params, dtype: torch.dtype,
                     shape: tuple[int, ...]) -> list[int]:
        check_param_keys(self.name, params, self._keys)
        raw = int_param(self.name, params, "raw_bytes")
        if raw != raw_nbytes(dtype, shape):
            raise InvalidArgument(f"shuffle-lz4: raw_bytes {raw} does not match dtype "
                                  f"{dtype} and shape {shape} ({raw_nbytes(dtype, shape)} bytes)")
        parts = params.get("planes", "").split(",")
        if len(parts) != dtype.itemsize:
            raise InvalidArgument(f"shuffle-lz4: {dtype} needs {dtype.itemsize} planes, "
                                  f"params list {len(parts)}")
        n = raw // dtype.itemsize
        sizes = [int_param(self.name, {"planes": p}, "planes") for p in parts]
        if any(s > n for s in sizes):
            raise InvalidArgument(f"shuffle-lz4: a plane of {n} bytes is never stored larger, "
                                  f"params say {sizes}")
        return sizes

    def encode(self, x: torch.Tensor, params: dict[str, str],
               backend: str) -> tuple[torch.Tensor, dict[str, str]]:
        item = x.element_size()
        raw = x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        planes = raw.reshape(-1, item).T  # [E, numel]; each row is copied once by tobytes()
        stored = []
        for plane in planes:
            data = np.ascontiguousarray(plane)
            packed = lz4.block.compress(data, store_size=False)
            stored.append(packed if len(packed) < data.size else data.tobytes())
        out = bytearray().join(stored)
        payload = (torch.frombuffer(out, dtype=torch.uint8) if out
                   else torch.empty(0, dtype=torch.uint8))
        sizes = ",".join(str(len(s)) for s in stored)
        return payload, {"raw_bytes": str(raw.size), "planes": sizes}

    def decode(self, payload: torch.Tensor, params: Params, dtype: torch.dtype,
               shape: tuple[int, ...], backend: str) -> torch.Tensor:
        sizes = self._plane_sizes(params, dtype, shape)
        n = raw_nbytes(dtype, shape) // dtype.itemsize
        src = payload.cpu().numpy()
        # Element-major output filled one byte column per plane: numpy's strided column copy is
        # several times faster than transposing a [planes, n] array afterwards.
        elements = np.empty((n, dtype.itemsize), dtype=np.uint8)
        off = 0
        for j, size in enumerate(sizes):
            chunk = src[off : off + size]
            off += size
            if size == n:
                elements[:, j] = chunk
                continue
            try:
                plain = lz4.block.decompress(chunk, uncompressed_size=n)
            except lz4.block.LZ4BlockError as e:
                raise DataLoss(f"shuffle-lz4: plane {j} is not a valid lz4 block: {e}") from e
            if len(plain) != n:
                raise DataLoss(f"shuffle-lz4: plane {j} decompressed to {len(plain)} bytes, "
                               f"expected {n}")
            elements[:, j] = np.frombuffer(plain, dtype=np.uint8)
        return torch.from_numpy(elements.reshape(-1)).view(dtype).view(shape)
