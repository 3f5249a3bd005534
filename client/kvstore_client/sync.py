"""KVStoreClient: a thin blocking wrapper that runs AsyncKVStoreClient on a private event loop.

Safe to call from several threads at once (calls are scheduled onto the one loop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kvstore.keys import KeyScheme
from kvstore.v1 import kvstore_pb2 as pb
from kvstore_client.aio import AsyncKVStoreClient, LookupResult
from kvstore_client.loop_thread import LoopThread
from kvstore_client.security import ClientSecurity
from kvstore_client.tensors import BytesLike


class KVStoreClient:
    def __init__(self, address: str, scheme: KeyScheme, security: ClientSecurity | None = None,
                 **options: Any) -> None:
        """``security``: token and TLS settings (None = ClientSecurity.from_env()); ``options``:
        ClientOptions fields."""
        self._loop = LoopThread("kvstore-client")
        try:
            self._client: AsyncKVStoreClient = self._loop.run(
                AsyncKVStoreClient.connect(address, scheme, security, **options))
        except BaseException:
            self._loop.stop()
            raise
        self._run = self._loop.run

    @property
    def scheme(self) -> KeyScheme:
        return self._client.scheme

    @property
    def session(self) -> pb.HandshakeResponse | None:
        return self._client.session

    def put_many(self, keys: Sequence[bytes], tensors: Sequence[torch.Tensor | BytesLike],
                 **kw: Any) -> list[bool]:
        return self._run(self._client.put_many(keys, tensors, **kw))

    def get_many(self, keys: Sequence[bytes], **kw: Any) -> list[torch.Tensor | None]:
        return self._run(self._client.get_many(keys, **kw))

    def get_bytes_many(self, keys: Sequence[bytes], **kw: Any) -> list[memoryview | None]:
        return self._run(self._client.get_bytes_many(keys, **kw))

    def lookup(self, keys: Sequence[bytes], **kw: Any) -> LookupResult:
        return self._run(self._client.lookup(keys, **kw))

    def delete_many(self, keys: Sequence[bytes], **kw: Any) -> int:
        return self._run(self._client.delete_many(keys, **kw))

    def stats(self, **kw: Any) -> pb.StatsResponse:
        return self._run(self._client.stats(**kw))

    def put(self, key: bytes, data: torch.Tensor | BytesLike, **kw: Any) -> bool:
        return self.put_many([key], [data], **kw)[0]

    def get(self, key: bytes, **kw: Any) -> torch.Tensor | None:
        return self.get_many([key], **kw)[0]

    @property
    def corrupt_received(self) -> int:
        return self._client.corrupt_received

    def close(self) -> None:
        if self._loop.running:
            self._run(self._client.close())
            self._loop.stop()

    def __enter__(self) -> KVStoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
