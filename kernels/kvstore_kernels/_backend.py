"""Backend selection shared by every kernel in this package.

Each public kernel function takes `backend: str = "auto"`:

- "torch":  the plain-torch reference (any device).
- "triton": the Triton kernel; raises BackendUnavailableError if it cannot run here.
- "auto":   triton when it imports and either the tensors are on CUDA or triton runs in
            interpreter mode (TRITON_INTERPRET=1, triton's own flag, read at call time);
            torch otherwise.

Triton is optional (the `kernels` extra). Kernel modules import `triton` and `tl` from here; without
triton they get small stand-ins so that the module still imports and the torch backend still works.

Interpreter caveat: `@triton.jit` decides between compiled and interpreted mode when the decorated
kernel is defined, i.e. when its module is imported. TRITON_INTERPRET=1 must therefore be set
before any kvstore_kernels kernel module is imported; select_backend detects the mismatch and
raises instead of failing inside triton.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from kvstore_kernels.errors import BackendUnavailableError, KernelInputError

BACKENDS = ("auto", "triton", "torch")

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # torch-only install: keep kernel modules importable
    HAS_TRITON = False

    class _MissingJit:
        """Stands in for a @triton.jit kernel when triton is not installed."""

        def __init__(self, fn: Any) -> None:
            self.fn = fn

        def __getitem__(self, grid: Any) -> Any:
            raise BackendUnavailableError("triton is not installed")

    class _MissingTriton:
        jit = _MissingJit

    class _MissingLanguage:
        constexpr = Any  # only used in annotations of never-launched kernels

    triton = _MissingTriton()  # type: ignore[assignment]
    tl = _MissingLanguage()  # type: ignore[assignment]

__all__ = ["BACKENDS", "HAS_TRITON", "interpreter_mode", "select_backend", "tl", "triton"]


def interpreter_mode() -> bool:
    """True when triton's interpreter flag is set (read now, not at import)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _is_interpreted(kernel: Any) -> bool:
    return type(kernel).__name__ == "InterpretedFunction"


def _triton_blocker(device: torch.device, kernel: Any) -> str | None:
    """Why the triton backend cannot run `kernel` on `device`, or None if it can."""
    if not HAS_TRITON:
        return "triton is not installed (pip install 'kvstore[kernels]')"
    if device.type == "cuda":
        return None
    if not interpreter_mode():
        return (f"triton needs CUDA tensors (got {device.type}) or TRITON_INTERPRET=1 set "
                "before kvstore_kernels is imported")
    if not _is_interpreted(kernel):
        return ("TRITON_INTERPRET=1 was set after the kernel module was imported, so the kernel "
                "was compiled for a GPU; set it before importing kvstore_kernels")
    return None


def select_backend(backend: str, device: torch.device, kernel: Any) -> str:
    """Resolve `backend` to "triton" or "torch" for tensors on `device`.

    `kernel` is the @triton.jit function the caller would launch; it is only inspected to detect a
    kernel defined before TRITON_INTERPRET=1 was set. In interpreter mode with CPU tensors that
    mismatch raises even for "auto": silently falling back to torch would hide that the triton
    path under test never ran.
    """
    if backend not in BACKENDS:
        raise KernelInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    blocker = _triton_blocker(device, kernel)
    if blocker is None:
        return "triton"
    interpreted_mismatch = HAS_TRITON and device.type != "cuda" and interpreter_mode()
    if backend == "triton" or interpreted_mismatch:
        raise BackendUnavailableError(blocker)
    return "torch"
