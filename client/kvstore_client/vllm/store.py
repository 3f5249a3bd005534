"""The store the connector talks to: one node (KVStoreClient) or a cluster (ClusterClient).

Both are blocking, thread-safe clients with the same batch calls (lookup, get_many, put_many), so
the rest of the connector never asks which one it has. A single node is reached at start-up (its
handshake checks the key scheme: a mismatch stops vLLM with the node's message naming the field);
cluster members are reached lazily, each with the same handshake.
"""

from __future__ import annotations

from typing import Any

from kvstore.keys import KeyScheme
from kvstore_client.cluster import ClusterClient
from kvstore_client.membership import Member
from kvstore_client.sync import KVStoreClient
from kvstore_client.vllm.config import ConnectorConfig

Store = KVStoreClient | ClusterClient


def open_store(config: ConnectorConfig, scheme: KeyScheme, client_name: str) -> Store:
    security = config.security()
    if config.address:
        return KVStoreClient(config.address, scheme, security, client_name=client_name)
    kw: dict[str, Any] = {"replication": config.replication, "security": security}
    if config.redis_url:
        from kvstore_client.redis_membership import RedisMembership

        return ClusterClient(scheme, source=RedisMembership(config.redis_url), **kw)
    return ClusterClient(scheme, [Member(a, a) for a in config.members], **kw)


def prefix_hits(store: Store, keys: list[bytes], deadline_s: float) -> int:
    """Leading run of ``keys`` the store holds (it prefetches them towards memory)."""
    if not keys:
        return 0
    return store.lookup(keys, prefetch=True, deadline_s=deadline_s).prefix_hits
