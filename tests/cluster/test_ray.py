"""Store nodes as Ray actors under a local ray.init(): a Ray task writes, the driver reads."""

from __future__ import annotations

import pytest
import ray
from cluster_helpers import random_chunks, same_bytes

from kvstore.cluster.ray_nodes import start_store_nodes

NODE = {"cpu_capacity_bytes": "32MiB", "max_chunk_bytes": "1MiB", "page_bytes": "16KiB",
        "disk_capacity_bytes": 0}


@pytest.fixture(scope="module")
def local_ray():
    """One in-process Ray for this module (ray.init costs seconds), shut down at its end."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


def test_store_node_actors_serve_puts_from_a_task_and_gets_from_the_driver(local_ray, scheme):
    # One machine: spread best-effort (a STRICT_SPREAD group of two could never be placed),
    # num_cpus=0 so both actors schedule on 2 cores.
    cluster = start_store_nodes(2, node_config=NODE, num_cpus=0, strategy=None)
    try:
        assert len({m.address for m in cluster.members}) == 2
        keys, data = random_chunks(50, seed=51)

        @ray.remote(num_cpus=0)
        def write(spec, keys, data):
            with spec.connect() as store:
                return store.put_many(keys, data)

        assert all(ray.get(write.remote(cluster.spec(scheme), keys, data), timeout=120))
        with cluster.client(scheme) as store:
            assert same_bytes(store.get_many(keys), data) == []
        # replication 2 over two nodes: each actor's node holds every chunk
        assert ray.get([a.chunks.remote() for a in cluster.actors]) == [len(keys)] * 2
    finally:
        cluster.shutdown()


def test_default_is_one_node_per_machine_pinned_by_a_placement_group(local_ray, scheme):
    cluster = start_store_nodes(node_config=NODE, num_cpus=0.5)  # one Ray node here -> one actor
    try:
        assert len(cluster.members) == 1 and cluster.placement_group is not None
        table = ray.util.placement_group_table(cluster.placement_group)
        assert table["strategy"] == "STRICT_SPREAD" and table["state"] == "CREATED"
        keys, data = random_chunks(10, seed=52)
        with cluster.client(scheme) as store:
            assert all(store.put_many(keys, data))
            assert same_bytes(store.get_many(keys), data) == []
    finally:
        cluster.shutdown()
