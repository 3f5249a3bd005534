"""ClusterSpec: everything a process needs to reach a cluster, small and picklable.

Hand one to Ray tasks and actors, or to multiprocessing workers, and call ``connect()`` there:
each process builds its own client (gRPC channels and sockets do not cross processes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvstore.errors import InvalidArgument
from kvstore.keys import KeyScheme
from kvstore_client.cluster import AsyncClusterClient, ClusterClient
from kvstore_client.membership import Member, MembershipSource


@dataclass(frozen=True)
class ClusterSpec:
    scheme: KeyScheme
    members: tuple[Member, ...] = ()   # a static member list, or
    redis_url: str = ""                # the registry to watch
    replication: int = 2

    def __post_init__(self) -> None:
        if bool(self.members) == bool(self.redis_url):
            raise InvalidArgument("a ClusterSpec needs either members or a redis_url")

    def source(self) -> MembershipSource:
        if self.redis_url:
            from kvstore_client.redis_membership import RedisMembership

            return RedisMembership(self.redis_url)
        from kvstore.cluster.static import StaticMembership

        return StaticMembership(self.members)

    def connect(self, **options: Any) -> ClusterClient:
        """A blocking client (``with spec.connect() as store: ...``)."""
        return ClusterClient(self.scheme, source=self.source(), replication=self.replication,
                             **options)

    async def connect_async(self, **options: Any) -> AsyncClusterClient:
        return await AsyncClusterClient.connect(self.scheme, source=self.source(),
                                                replication=self.replication, **options)
