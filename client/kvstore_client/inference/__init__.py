"""Inference integration: prefix reuse and CacheBlend blending of cached KV in a real model.

See README.md in this directory for the layers, the request path and the import rules.
"""

from .config import EngineConfig
from .engine import CacheEngine, GenerateResult, HitStats, PrefillResult, Timings
from .errors import BlendUnsupported, InferenceError
from .llama_layers import blend_unsupported_reason
from .memory_store import InMemoryChunkStore, LookupResult
from .segments import PromptLayout, Segment
from .store import LAYOUT, ChunkStore

__all__ = [
    "LAYOUT",
    "BlendUnsupported",
    "CacheEngine",
    "ChunkStore",
    "EngineConfig",
    "GenerateResult",
    "HitStats",
    "InMemoryChunkStore",
    "InferenceError",
    "LookupResult",
    "PrefillResult",
    "PromptLayout",
    "Segment",
    "Timings",
    "blend_unsupported_reason",
]
