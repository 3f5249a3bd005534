"""Errors of the inference integration, rooted in kvstore's one hierarchy (kvstore.errors).

A fetch that fails or times out is not an error here: its tokens are recomputed and the miss is
counted in the result's stats. These exceptions are for requests that cannot be served as asked.
"""

from __future__ import annotations

from kvstore.errors import ConfigError, FailedPrecondition

__all__ = ["BlendUnsupported", "ConfigError", "InferenceError"]


class InferenceError(FailedPrecondition):
    """Root of the errors raised on purpose by kvstore_client.inference."""


class BlendUnsupported(InferenceError):
    """Blending was asked for a model whose RoPE handling is not known to be right.

    Prefix reuse still works for such models (mode="auto" or "prefix").
    """
