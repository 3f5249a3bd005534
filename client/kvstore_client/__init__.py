"""kvstore client library: runs inside inference workers.

``KVStoreClient`` (blocking) and ``AsyncKVStoreClient`` (asyncio) talk to one store node;
``kvstore_client.inference`` blends fetched chunks into a model. Imports kvstore's shared modules
(keys, errors, chunk, wire, v1, dataplane framing); never kvstore.server or kvstore.tiers.
"""

from kvstore_client.aio import AsyncKVStoreClient, ClientOptions, LookupResult
from kvstore_client.retry import RetryPolicy
from kvstore_client.sync import KVStoreClient

__all__ = ["AsyncKVStoreClient", "ClientOptions", "KVStoreClient", "LookupResult", "RetryPolicy"]
