"""Store nodes as Ray actors, and clients for Ray tasks and actors.

    cluster = start_store_nodes(node_config={"cpu_capacity_bytes": "8GiB"})  # one per machine
    spec = cluster.spec(KeyScheme("my-model", "bfloat16"))                  # picklable
    @ray.remote
    def worker(spec): with spec.connect() as store: ...

Placement: by default one actor per alive Ray node, pinned there by a STRICT_SPREAD placement
group whose bundles carry the actor's resource requests (``num_cpus``, ``memory_bytes``,
``resources``). With ``strategy=None`` (or requests that are all zero, which a placement group
cannot hold) the actors use Ray's SPREAD scheduling instead: best effort, several per machine
allowed (tests on one machine). Each actor runs a ``StoreNode`` on its own event-loop thread,
bound to the machine's Ray node IP on free ports; with ``redis_url`` in the config it also joins
that registry (``ClusterNode``), otherwise clients use the static member list.

Ray is imported only when these functions run.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from typing import Any

from kvstore.cluster.spec import ClusterSpec
from kvstore.config import load_config
from kvstore.keys import KeyScheme
from kvstore_client.cluster import ClusterClient
from kvstore_client.membership import Member


def node_settings(host: str, overrides: dict[str, Any], data_dir: str) -> dict[str, Any]:
    """The settings a StoreNodeActor starts its node with: free ports on the Ray node's address,
    then ``overrides``. Ray places nodes on the cluster network: without TLS and tokens in
    ``overrides`` they serve plaintext there, which NodeConfig allows only when asked for, so
    this asks for it (insecure: true; a warning says so at start) unless overrides decide."""
    settings = {"host": host, "port": 0, "data_port": 0, "metrics_port": 0,
                "gpu_device": "none", "data_dir": data_dir, **overrides}
    if not (settings.get("tls_cert") and settings.get("auth_tokens_file")):
        settings.setdefault("insecure", True)
    return settings


class StoreNodeActor:
    """One store node inside a Ray actor process (wrapped with ray.remote at start-up)."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        import ray

        from kvstore.server.node import NodeThread

        host = ray.util.get_node_ip_address()
        settings = node_settings(host, overrides, tempfile.mkdtemp(prefix="kvstore-ray-"))
        self.config = load_config(env={}, overrides=settings)
        self._thread = NodeThread(self.config)
        node = self._thread.start()
        address = f"{self.config.advertise_host or host}:{node.port}"
        self.member = Member(self.config.node_id or address, address,
                             self.config.capacity_weight)
        self._cluster = None
        if self.config.redis_url:
            from kvstore.cluster.node import ClusterNode

            self._cluster = ClusterNode(node, self.config)
            self._on_loop(self._cluster.start())

    def _on_loop(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._thread.loop).result(60)

    def get_member(self) -> Member:
        return self.member

    def chunks(self) -> int:
        return len(self._thread.node.core.manager.keys())

    def stop(self, drain: bool = False) -> bool:
        ok = True
        if self._cluster is not None:
            ok = self._on_loop(self._cluster.drain() if drain else self._cluster.leave())
        self._thread.stop()
        return ok is not False


@dataclass
class RayStoreCluster:
    actors: list[Any]
    members: list[Member]
    redis_url: str = ""
    placement_group: Any = None
    _stopped: bool = field(default=False, repr=False)

    def spec(self, scheme: KeyScheme, replication: int = 2) -> ClusterSpec:
        if self.redis_url:
            return ClusterSpec(scheme, redis_url=self.redis_url, replication=replication)
        return ClusterSpec(scheme, members=tuple(self.members), replication=replication)

    def client(self, scheme: KeyScheme, replication: int = 2, **options: Any) -> ClusterClient:
        return self.spec(scheme, replication).connect(**options)

    def shutdown(self, drain: bool = False) -> None:
        import ray

        if self._stopped:
            return
        self._stopped = True
        ray.get([a.stop.remote(drain) for a in self.actors])
        for a in self.actors:
            ray.kill(a)
        if self.placement_group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.placement_group)


def start_store_nodes(count: int | None = None, *, node_config: dict[str, Any] | None = None,
                      num_cpus: float = 1.0, memory_bytes: int = 0,
                      resources: dict[str, float] | None = None,
                      strategy: str | None = "STRICT_SPREAD",
                      timeout_s: float = 120.0) -> RayStoreCluster:
    """Start ``count`` store-node actors (default: one per alive Ray node)."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if count is None:
        count = sum(1 for n in ray.nodes() if n.get("Alive"))
    bundle = {"CPU": num_cpus, **({"memory": memory_bytes} if memory_bytes else {}),
              **(resources or {})}
    pg = None
    actor_cls = ray.remote(StoreNodeActor)
    options: list[dict[str, Any]] = []
    if strategy and any(v > 0 for v in bundle.values()):
        pg = placement_group([bundle] * count, strategy=strategy)
        ray.get(pg.ready(), timeout=timeout_s)
        for i in range(count):
            options.append({"scheduling_strategy": PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=i)})
    else:
        options = [{"scheduling_strategy": "SPREAD"}] * count
    actors: list[Any] = [actor_cls.options(num_cpus=num_cpus, memory=memory_bytes or None,
                                resources=resources or None, **opt).remote(node_config or {})
              for opt in options]
    members = ray.get([a.get_member.remote() for a in actors], timeout=timeout_s)
    return RayStoreCluster(actors, members, (node_config or {}).get("redis_url", ""), pg)
