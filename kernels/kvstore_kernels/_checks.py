"""Input checks shared by the kernel launchers. Every failure raises KernelInputError."""

from __future__ import annotations

import torch

from kvstore_kernels.errors import KernelInputError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


def as_bhtd(x: torch.Tensor, name: str) -> torch.Tensor:
    """View a [H, T, D] or [B, H, T, D] tensor as 4-D [B, H, T, D] (a view, no copy)."""
    if not isinstance(x, torch.Tensor):
        raise KernelInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        return x.unsqueeze(0)
    if x.dim() == 4:
        return x
    raise KernelInputError(f"{name} must be [B, H, T, D] or [H, T, D], got shape {tuple(x.shape)}")


def check_dtype(x: torch.Tensor, name: str, allowed: tuple[torch.dtype, ...]) -> None:
    if x.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise KernelInputError(f"{name} dtype must be one of {names}, got {x.dtype}")


def check_device(x: torch.Tensor, name: str, device: torch.device) -> None:
    if x.device != device:
        raise KernelInputError(f"{name} is on {x.device} but the KV tensor is on {device}")


def check_like(x: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    """x must have ref's shape, dtype and device."""
    if x.shape != ref.shape:
        raise KernelInputError(
            f"{name} shape {tuple(x.shape)} differs from {ref_name} shape {tuple(ref.shape)}")
    if x.dtype != ref.dtype:
        raise KernelInputError(f"{name} dtype {x.dtype} differs from {ref_name} dtype {ref.dtype}")
    check_device(x, name, ref.device)


def check_vector(x: torch.Tensor, name: str, length: int | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise KernelInputError(f"{name} must be a 1-D tensor, got {shape}")
    if length is not None and x.numel() != length:
        raise KernelInputError(f"{name} must have {length} entries (one per token), "
                               f"got {x.numel()}")
