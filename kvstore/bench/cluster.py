"""`kvstore bench cluster`: aggregate throughput of a local cluster, and the keys a join moves.

Everything runs on this machine in one run: a redis-server and N `kvstore serve --redis-url`
processes (default 3), then C client processes (default 8) that start together at a barrier.
Cases, side by side: the same clients on one node directly (KVStoreClient, the baseline), then on
the cluster through ClusterClient with replication 1 and 2. Throughput = payload bytes moved by
all clients / wall time of the phase (a replicated put stores each byte twice; that is the cost
being measured). Every get is checked byte for byte.

Join: with the replication-2 data still stored, one more node joins; the run waits until every
node's rebalancer is idle and reports the keys whose candidate set changed, the copies moved
(ideal: 1/(n+1) of those stored), the rebalance time, and whether every key is still readable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import xxhash

from kvstore import procs

CASES = ("single", "cluster-r1", "cluster-r2")
_SCHEME = ("bench-cluster", "uint8")
_POOL = 4  # distinct payloads per client, reused (generation stays out of the timed loop)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--chunk-kib", type=int, default=256)
    p.add_argument("--mib-per-client", type=int, default=16,
                   help="payload each client puts and gets per case (MiB)")
    p.add_argument("--batch", type=int, default=8, help="chunks per put_many/get_many call")
    p.add_argument("--rebalance-bytes-per-s", default="256MiB",
                   help="each node's rebalancing bandwidth during the join")
    p.add_argument("--json-out", help="also write the results JSON here")


@dataclass(frozen=True)
class Case:
    name: str
    clients: int
    chunks: int          # per client
    chunk_bytes: int
    batch: int
    address: str         # single: the node; cluster: the redis URL
    replication: int = 2
    keep: bool = False   # leave the data stored (the join measures it)


def chunk_key(case: str, rank: int, i: int) -> bytes:
    return xxhash.xxh3_128_digest(f"{case}/{rank}/{i}".encode())


def _payloads(rank: int, nbytes: int):  # noqa: ANN202 - list of torch tensors
    import torch

    rng = np.random.default_rng(rank)
    return [torch.from_numpy(rng.integers(0, 256, nbytes, dtype=np.uint8)) for _ in range(_POOL)]


def _connect(case: Case):  # noqa: ANN202 - a KVStoreClient or ClusterClient
    from kvstore.keys import KeyScheme

    scheme = KeyScheme(*_SCHEME)
    if case.name == "single":
        from kvstore_client import KVStoreClient

        return KVStoreClient(case.address, scheme)
    from kvstore.cluster.spec import ClusterSpec

    return ClusterSpec(scheme, redis_url=case.address, replication=case.replication).connect()


def _same(got, want) -> bool:  # noqa: ANN001 - tensors
    # numpy, not torch.equal: torch's OpenMP threads spin after each op and, in 8 processes
    # on 2 cores, starve the nodes (gets measured 10x slower that way).
    return got is not None and np.array_equal(got.numpy(), want.numpy())


def _client_main(case: Case, rank: int, barrier: object, out: object) -> None:
    import torch

    torch.set_num_threads(1)  # one client process = one worker; no intra-op thread pools
    payloads = _payloads(rank, case.chunk_bytes)
    keys = [chunk_key(case.name, rank, i) for i in range(case.chunks)]
    batches = [list(range(i, min(i + case.batch, case.chunks)))
               for i in range(0, case.chunks, case.batch)]
    store = _connect(case)
    result: dict[str, object] = {}
    try:
        for op in ("put", "get"):
            barrier.wait()  # type: ignore[attr-defined]
            lat, bad = [], 0
            t0 = time.perf_counter()
            for b in batches:
                s = time.perf_counter()
                if op == "put":
                    store.put_many([keys[i] for i in b], [payloads[i % _POOL] for i in b])
                else:
                    got = store.get_many([keys[i] for i in b])
                    bad += sum(not _same(g, payloads[i % _POOL])
                               for g, i in zip(got, b, strict=True))
                lat.append(time.perf_counter() - s)
            result[op] = (t0, time.perf_counter(), lat, bad)
        if not case.keep:
            store.delete_many(keys)
    finally:
        store.close()
    out.put((rank, result))  # type: ignore[attr-defined]


def run_case(case: Case) -> dict[str, float]:
    results = procs.run_client_processes(_client_main, case, case.clients)
    row: dict[str, float] = {}
    total = case.chunk_bytes * case.chunks * case.clients
    for op in ("put", "get"):
        start = min(r[op][0] for _, r in results)
        end = max(r[op][1] for _, r in results)
        lat = np.array([x for _, r in results for x in r[op][2]])
        row[f"{op}_gbps"] = total / (end - start) / 1e9
        row[f"{op}_p50_ms"] = float(np.percentile(lat, 50) * 1e3)
        row[f"{op}_p99_ms"] = float(np.percentile(lat, 99) * 1e3)
    row["bad_chunks"] = sum(r["get"][3] for _, r in results)
    return row


# ---- the cluster's processes -----------------------------------------------------------------
def _start_nodes(root: str, redis_url: str, first: int, count: int, capacity: int,
                 chunk_bytes: int, rate: str) -> list[procs.Proc]:
    args = ["--redis-url", redis_url, "--gpu-device", "none", "--disk-capacity-bytes", "0",
            "--cpu-capacity-bytes", str(capacity), "--max-chunk-bytes", str(chunk_bytes),
            "--heartbeat-ttl-s", "3", "--rebalance-bytes-per-s", rate]

    def one(i: int) -> procs.Proc:
        return procs.start_node(f"{root}/node-{i}", args, log_path=f"{root}/node-{i}.log")
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(first, first + count)))


async def _rebalance_state(redis_url: str) -> tuple[int, dict[str, dict]]:
    from kvstore_client.redis_membership import RedisRegistry

    reg = RedisRegistry(redis_url)
    try:
        return (await reg.snapshot()).view.epoch, await reg.counters()
    finally:
        await reg.close()


def _wait_rebalanced(redis_url: str, nodes: set[str], timeout_s: float) -> dict[str, dict]:
    """Poll until every node's rebalancer processed the current epoch and is idle."""
    deadline = time.monotonic() + timeout_s
    while True:
        epoch, stats = asyncio.run(_rebalance_state(redis_url))
        if all(n in stats and stats[n]["epoch"] >= epoch and stats[n]["idle"] for n in nodes):
            return stats
        if time.monotonic() > deadline:
            raise TimeoutError(f"rebalancing did not finish in {timeout_s} s: {stats}")
        time.sleep(0.1)


def measure_join(root: str, redis_url: str, old: list[procs.Proc], case: Case,
                 capacity: int, rate: str) -> tuple[dict[str, float], procs.Proc]:
    from kvstore.cluster import local
    from kvstore_client.membership import Member, build_ring

    keys = [chunk_key(case.name, r, i) for r in range(case.clients) for i in range(case.chunks)]
    before = asyncio.run(_rebalance_state(redis_url))[1]
    copied_before = sum(s["keys_copied"] for s in before.values())
    t0 = time.perf_counter()
    (new,) = _start_nodes(root, redis_url, len(old), 1, capacity, case.chunk_bytes, rate)
    members = [p.address for p in [*old, new]]
    local.wait_members(redis_url, set(members), 60)
    joined = time.perf_counter()
    stats = _wait_rebalanced(redis_url, set(members), 600)
    done = time.perf_counter()
    old_ring = build_ring([Member(a, a) for a in members[:-1]])
    new_ring = build_ring([Member(a, a) for a in members])
    assert old_ring is not None and new_ring is not None
    changed = sum(set(a) != set(b) for a, b in zip(old_ring.candidates_many(keys),
                                                   new_ring.candidates_many(keys), strict=True))
    copied = sum(s["keys_copied"] for s in stats.values()) - copied_before
    n = len(old)
    return {
        "keys": len(keys), "keys_changed_frac": changed / len(keys),
        "copies_moved": copied, "copies_moved_frac": copied / (len(keys) * case.replication),
        "ideal_frac": 1 / (n + 1), "join_s": joined - t0, "rebalance_s": done - joined,
        "bytes_moved": sum(s["bytes_copied"] for s in stats.values()),
    }, new


def _read_all(case: Case) -> int:
    """Chunks of ``case`` that are missing or wrong, read back through a fresh client."""
    bad = 0
    with _connect(case) as store:
        for rank in range(case.clients):
            payloads = _payloads(rank, case.chunk_bytes)
            keys = [chunk_key(case.name, rank, i) for i in range(case.chunks)]
            got = store.get_many(keys)
            bad += sum(not _same(g, payloads[i % _POOL]) for i, g in enumerate(got))
    return bad


def run(args: argparse.Namespace) -> int:
    chunk_bytes = args.chunk_kib << 10
    chunks = max(args.batch, (args.mib_per_client << 20) // chunk_bytes)
    total = chunks * chunk_bytes * args.clients
    # Room for one case's replicated data on a node, with slack (pools are reserved up front).
    capacity = max(64 << 20, int(2 * total * 1.5 / args.nodes) + (16 << 20))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kvstore-bench-cluster-") as root:
        redis = procs.start_redis()
        url = f"redis://{redis.address}"
        nodes: list[procs.Proc] = []
        try:
            from kvstore.cluster import local

            nodes = _start_nodes(root, url, 0, args.nodes, capacity, chunk_bytes,
                                 args.rebalance_bytes_per_s)
            local.wait_members(url, {p.address for p in nodes}, 60)
            for name in CASES:
                case = Case(name, args.clients, chunks, chunk_bytes, args.batch,
                            nodes[0].address if name == "single" else url,
                            replication=2 if name.endswith("r2") else 1,
                            keep=name == "cluster-r2")
                row = {"case": name, "nodes": 1 if name == "single" else args.nodes,
                       "replication": 1 if name == "single" else case.replication,
                       **run_case(case)}
                rows.append(row)
                print(f"  {name:11s}: put {row['put_gbps']:.2f} GB/s, get "
                      f"{row['get_gbps']:.2f} GB/s, bad chunks {row['bad_chunks']}", flush=True)
            join, new = measure_join(root, url, nodes, case, capacity,
                                     args.rebalance_bytes_per_s)
            nodes.append(new)
            join["unreadable_after"] = _read_all(case)
        finally:
            for p in nodes:
                p.kill()
            redis.kill()
    ratios = {f"{r['case']}_vs_single_{op}": round(r[f"{op}_gbps"] / rows[0][f"{op}_gbps"], 3)
              for r in rows[1:] for op in ("put", "get")}
    _print_table(rows, join, args)
    result = {"benchmark": "cluster", "nodes": args.nodes, "clients": args.clients,
              "chunk_kib": args.chunk_kib, "rows": rows, "join": join, "ratios": ratios}
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result))
    return 0 if all(r["bad_chunks"] == 0 for r in rows) and not join["unreadable_after"] else 1


def _print_table(rows: list[dict], join: dict, args: argparse.Namespace) -> None:
    print(f"\n{args.clients} client processes, {args.chunk_kib} KiB chunks, batches of "
          f"{args.batch}, {args.mib_per_client} MiB per client per case (loopback, this machine)")
    head = (f"{'case':11s} {'nodes':>5s} {'R':>2s} | {'put GB/s':>8s} {'p50 ms':>7s} "
            f"{'p99 ms':>7s} | {'get GB/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} | {'bad':>4s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['case']:11s} {r['nodes']:5d} {r['replication']:2d} | {r['put_gbps']:8.2f} "
              f"{r['put_p50_ms']:7.1f} {r['put_p99_ms']:7.1f} | {r['get_gbps']:8.2f} "
              f"{r['get_p50_ms']:7.1f} {r['get_p99_ms']:7.1f} | {r['bad_chunks']:4d}")
    n = args.nodes
    print(f"\njoin {n} -> {n + 1} nodes, {join['keys']} keys stored with replication 2: "
          f"{join['keys_changed_frac']:.1%} of keys changed candidates; "
          f"{join['copies_moved']} copies moved = {join['copies_moved_frac']:.1%} of stored copies "
          f"(ideal 1/(n+1) = {join['ideal_frac']:.1%}); {join['bytes_moved'] / 2**20:.1f} MiB in "
          f"{join['rebalance_s']:.2f} s; unreadable after: {join['unreadable_after']}")
