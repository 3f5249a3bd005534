"""Triton kernels for kvstore (RoPE re-rotation, deviation top-k, row scatter/gather, KV
quantization), each with a plain-torch reference. Imports neither kvstore nor kvstore_client.

Public names are loaded lazily on first access: importing the package does no work, and the
kernel modules (which import triton and define the @triton.jit kernels) are imported only when
used, so TRITON_INTERPRET=1 may still be set after `import kvstore_kernels`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "rerotate_keys": "rope",
    "rerotate_keys_ref": "rope",
    "apply_rope_ref": "rope",
    "rope_inv_freq": "rope",
    "deviation_scores": "select",
    "deviation_scores_ref": "select",
    "deviation_topk": "select",
    "random_select": "select",
    "gather_rows": "rows",
    "gather_rows_ref": "rows",
    "scatter_rows": "rows",
    "scatter_rows_ref": "rows",
    "KernelError": "errors",
    "KernelInputError": "errors",
    "BackendUnavailableError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kvstore_kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(f"kvstore_kernels.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
