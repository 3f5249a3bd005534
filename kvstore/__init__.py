"""kvstore: a distributed KV-cache store for LLM inference.

Server-side packages: ``kvstore.server`` (gRPC service, data plane), ``kvstore.tiers`` (GPU/CPU/disk
tiers). Shared with the client: ``kvstore.keys``, ``kvstore.errors``, ``kvstore.chunk``,
``kvstore.v1`` (generated). See kvstore/README.md for import rules.
"""

__version__ = "0.1.0"
