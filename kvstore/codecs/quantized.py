"""Lossy codecs: fp8-e4m3 (per-token scales) and KIVI int4 / int2 (kvstore_kernels does the math).

Payload layouts, error bounds and the algorithms are documented with the kernels
(kernels/kvstore_kernels/fp8.py and quant_kivi.py); this module maps them onto the codec interface:
params, validation, and refusing inputs and payloads that would decode to garbage.

The kernel modules are imported on first use, not at import: @triton.jit chooses interpreted or
compiled mode when a kernel is defined, so importing kvstore.codecs must not fix that choice (and
the server can import this package without paying for triton's import).
"""

from __future__ import annotations

import importlib
import math
from types import ModuleType

import torch

from kvstore.codecs.base import (
    FP16_MAX,
    Codec,
    Params,
    check_float_kv,
    check_param_keys,
    check_values,
    int_param,
)
from kvstore.errors import DataLoss, InvalidArgument

DEFAULT_GROUP_SIZE = 32
KEY_ROTATIONS = ("none", "hadamard")
DEFAULT_KEY_ROTATION = "hadamard"


def _kernels(module: str) -> ModuleType:
    return importlib.import_module(f"kvstore_kernels.{module}")


def _min_rotated_group() -> int:
    return int(_kernels("quant_kivi").MIN_ROTATED_GROUP)


def _check_scales(codec: str, *tensors: torch.Tensor) -> None:
    """Scales must be finite and non-negative, zero points finite: anything else is a corrupt
    payload or one of another format that happens to have the right size. One host sync."""
    bad = torch.stack([~torch.isfinite(t).all() for t in tensors]).any()
    bad = bad | torch.stack([(t < 0).any() for t in tensors[::2]]).any()
    if bad.item():
        raise DataLoss(f"{codec}: payload has non-finite or negative scales; it is corrupt or "
                       "was not written by this codec")


class Fp8Codec(Codec):
    """e4m3 codes with one fp32 scale per row of the last dim (per layer, k/v, head and token)."""

    name = "fp8-e4m3"
    lossy = True

    def check_encodable(self, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        check_float_kv(self.name, dtype)
        if len(shape) == 0:
            raise InvalidArgument("fp8-e4m3 needs a tensor with at least one dimension")

    def payload_nbytes(self, params: Params, dtype: torch.dtype, shape: tuple[int, ...]) -> int:
        check_param_keys(self.name, params, frozenset())
        self.check_encodable(dtype, shape)
        return _kernels("fp8").fp8_payload_nbytes(shape)

    def encode(self, x: torch.Tensor, params: dict[str, str],
               backend: str) -> tuple[torch.Tensor, dict[str, str]]:
        check_values(self.name, x, float("inf"))
        return _kernels("fp8").fp8_quantize(x, backend=backend), {}

    def decode(self, payload: torch.Tensor, params: Params, dtype: torch.dtype,
               shape: tuple[int, ...], backend: str) -> torch.Tensor:
        _check_scales(self.name, payload[: math.prod(shape[:-1]) * 4].view(torch.float32))
        return _kernels("fp8").fp8_dequantize(payload, shape, dtype, backend=backend)


class KiviCodec(Codec):
    """KIVI: keys per channel over groups of G tokens, values per token over groups of G
    channels; asymmetric min/max with fp16 scale and zero point; codes packed tightly.

    key_rotation "hadamard" (the default for group_size >= 16; "none" below, where the kernels
    cannot rotate) rotates every key vector by a fixed orthogonal Walsh-Hadamard matrix before
    quantizing and back after (kvstore_kernels/hadamard.py): same bytes, about a quarter less KL
    on SmolLM2 (5.6e-3 -> 4.3e-3, docs/BENCHMARKS.md). Head dims above MAX_ROTATED_HEAD_DIM
    (256) are encoded unrotated and say so in their params. Stored chunks without the param
    were written before it existed and decode as "none"."""

    lossy = True
    user_param_names = frozenset({"group_size", "key_rotation"})

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.name = f"kivi-int{bits}"  # type: ignore[misc]

    def make_params(self, group_size: object = DEFAULT_GROUP_SIZE,
                    key_rotation: object = None, **kwargs: object) -> dict:
        if kwargs:
            raise InvalidArgument(f"codec {self.name!r} takes only group_size and key_rotation, "
                                  f"got {sorted(kwargs)}")
        if key_rotation is None:  # the default where it applies: rotation needs groups of 16
            raw = str(group_size)
            small = raw.isascii() and raw.isdigit() and int(raw) < _min_rotated_group()
            key_rotation = "none" if small else DEFAULT_KEY_ROTATION
        params = {"group_size": str(group_size), "key_rotation": str(key_rotation)}
        self._settings(params)
        return params

    def _settings(self, params: Params) -> tuple[int, bool]:
        """(group size, rotate keys) from stored or user params; InvalidArgument if invalid."""
        check_param_keys(self.name, params, self.user_param_names)
        g = int_param(self.name, params, "group_size")
        qk = _kernels("quant_kivi")
        if g not in qk.GROUP_SIZES:
            raise InvalidArgument(f"{self.name}: group_size must be one of {qk.GROUP_SIZES}, "
                                  f"got {g}")
        rotation = params.get("key_rotation", "none")
        if rotation not in KEY_ROTATIONS:
            raise InvalidArgument(f"{self.name}: key_rotation must be one of {KEY_ROTATIONS}, "
                                  f"got {rotation!r}")
        rotate = rotation == "hadamard"
        if rotate and g < qk.MIN_ROTATED_GROUP:
            raise InvalidArgument(f"{self.name}: key_rotation 'hadamard' needs group_size >= "
                                  f"{qk.MIN_ROTATED_GROUP}, got {g}; use a larger group or "
                                  "key_rotation 'none'")
        return g, rotate

    def check_encodable(self, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        check_float_kv(self.name, dtype)
        if len(shape) != 5 or shape[1] != 2 or 0 in shape:
            raise InvalidArgument(f"{self.name} encodes non-empty LKHTD chunks [L, 2, H, T, D], "
                                  f"got shape {shape}")

    def payload_nbytes(self, params: Params, dtype: torch.dtype, shape: tuple[int, ...]) -> int:
        g, rotate = self._settings(params)
        self.check_encodable(dtype, shape)
        qk = _kernels("quant_kivi")
        if rotate and shape[-1] > qk.MAX_ROTATED_HEAD_DIM:
            raise InvalidArgument(f"{self.name}: key_rotation 'hadamard' supports head dims up "
                                  f"to {qk.MAX_ROTATED_HEAD_DIM}, got {shape[-1]}")
        return qk.kivi_payload_nbytes(shape, self.bits, g)

    def encode(self, x: torch.Tensor, params: dict[str, str],
               backend: str) -> tuple[torch.Tensor, dict[str, str]]:
        g, rotate = self._settings(params)
        qk = _kernels("quant_kivi")
        if rotate and x.shape[-1] > qk.MAX_ROTATED_HEAD_DIM:
            # too wide for the rotated kernels' tiles: store unrotated, and say so
            rotate, params = False, {**params, "key_rotation": "none"}
        check_values(self.name, x, FP16_MAX)
        if rotate:
            # A rotated key can grow to sqrt(D) times the largest |k| (all of a vector's norm in
            # one channel); its fp16 zero point and scale must still fit.
            check_values(self.name, x[:, 0], FP16_MAX / math.sqrt(x.shape[-1]))
        return qk.kivi_quantize(x, self.bits, g, backend=backend, rotate_keys=rotate), params

    def decode(self, payload: torch.Tensor, params: Params, dtype: torch.dtype,
               shape: tuple[int, ...], backend: str) -> torch.Tensor:
        qk = _kernels("quant_kivi")
        g, rotate = self._settings(params)
        views = qk.kivi_layout(shape, self.bits, g).views(payload)
        _check_scales(self.name, views["k_scale"], views["k_min"], views["v_scale"],
                      views["v_min"])
        return qk.kivi_dequantize(payload, shape, self.bits, g, dtype, backend=backend,
                                  rotate_keys=rotate)
