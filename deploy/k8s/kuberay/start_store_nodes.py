"""Run kvstore store nodes as Ray actors on a KubeRay cluster, until told to stop.

The RayJob's entrypoint (rayjob.yaml): it runs on the head pod, starts one store node on every
worker pod that offers the custom resource ``kvstore_node`` (kvstore.cluster.ray_nodes:
a STRICT_SPREAD placement group whose bundles ask for it), registers them in Redis through
``redis_url`` and keeps them alive: the actors belong to this driver and die with it. New worker
pods get a node within ``--poll-s``. SIGTERM (``ray job stop``, deleting the RayJob) drains every
node (chunks handed to the remaining members, at most ``drain_timeout_s``) and exits; set
RAY_JOB_STOP_WAIT_TIME_S on the head above that, or Ray kills the driver after 3 s.

Clients reach the nodes as with the StatefulSet: ``ClusterSpec(scheme, redis_url=...)``.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from typing import Any

RESOURCE = "kvstore_node"
# One actor per worker pod, so fixed ports (the NetworkPolicy and container ports name them);
# the actor binds the pod IP (ray_nodes.StoreNodeActor) and advertises it.
NODE_CONFIG: dict[str, Any] = {
    "port": 50051,
    "data_port": 50052,
    "metrics_port": 9464,
    "data_dir": "/var/lib/kvstore",
    "cpu_capacity_bytes": "4GiB",
    "disk_capacity_bytes": "20GiB",
    "redis_url": "redis://kvstore-redis:6379/0",
    "replication": 2,
    "drain_timeout_s": 60.0,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--node-config", default="{}", metavar="JSON",
                   help="settings over NODE_CONFIG, e.g. '{\"cpu_capacity_bytes\": \"8GiB\"}'")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs each node actor reserves")
    p.add_argument("--poll-s", type=float, default=10.0, help="how often to look for new pods")
    return p


def node_config(args: argparse.Namespace) -> dict[str, Any]:
    return {**NODE_CONFIG, **json.loads(args.node_config)}


def store_pods() -> int:
    """Alive Ray nodes (worker pods) that offer the kvstore_node resource."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive") and n["Resources"].get(RESOURCE, 0) >= 1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = node_config(args)
    import ray

    from kvstore.cluster.ray_nodes import start_store_nodes

    ray.init(address="auto")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    clusters = []
    while not stop.is_set():
        missing = store_pods() - sum(len(c.actors) for c in clusters)
        if missing > 0:  # busy pods have no kvstore_node left, so these land on new pods only
            cluster = start_store_nodes(missing, node_config=config, num_cpus=args.num_cpus,
                                        resources={RESOURCE: 1})
            clusters.append(cluster)
            for m in cluster.members:
                print(f"kvstore node {m.node_id} at {m.address}", flush=True)
        stop.wait(args.poll_s)
    print("draining kvstore nodes", flush=True)
    for cluster in clusters:
        cluster.shutdown(drain=True)
    print("kvstore nodes stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
