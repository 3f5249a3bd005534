"""`kvstore bench store`: chunk put/get throughput and latency, kvstore vs Redis vs a raw socket.

Everything runs on this machine in one run: a kvstore node (its own process), a redis-server
(redis-py client storing the same bytes), and a plain TCP server that just moves the bytes (the
ceiling). Each client is its own process (no shared GIL with other clients); all clients start
together at a barrier. Throughput = bytes moved by all clients / wall time of the case.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import struct
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np

from kvstore import procs

SIZES_MIB = (4, 32)
CLIENTS = (1, 8)
# kvstore: data plane, receiving into a reused buffer (as a worker's staging buffer would);
# kvstore-alloc: data plane, a fresh tensor per get; kvstore-grpc: gRPC streams only;
# kvstore-shm: a node with --shared-memory, gets copied out of its /dev/shm CPU tier into a
# reused buffer (puts still go over the TCP data plane).
SYSTEMS = ("raw-socket", "kvstore", "kvstore-alloc", "kvstore-grpc", "kvstore-shm", "redis")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes-mib", type=int, nargs="+", default=list(SIZES_MIB))
    p.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    p.add_argument("--mib-per-case", type=int, default=1024,
                   help="bytes each case moves per operation type, in MiB (default 1024)")
    p.add_argument("--json-out", help="also write the results JSON here")


# ---- the raw-socket ceiling: a server that only moves bytes ----------------------------------
_REQ = struct.Struct("<BQ")  # op (1 get, 2 put), nbytes


def _raw_server(listener: socket.socket, payload: memoryview) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_raw_conn, args=(conn, payload), daemon=True).start()


def _raw_conn(conn: socket.socket, payload: memoryview) -> None:
    sink = bytearray(len(payload))
    with conn:
        while True:
            head = conn.recv(_REQ.size, socket.MSG_WAITALL)
            if len(head) < _REQ.size:
                return
            op, n = _REQ.unpack(head)
            if op == 1:
                conn.sendall(payload[:n])
            else:
                view, got = memoryview(sink)[:n], 0
                while got < n:
                    got += conn.recv_into(view[got:], n - got)
                conn.sendall(b"\x01")


def raw_server_main(port: int, max_bytes: int) -> None:
    listener = socket.create_server(("127.0.0.1", port))
    payload = memoryview(bytearray(np.random.bytes(max_bytes)))
    _raw_server(listener, payload)


# ---- one client process ---------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    system: str
    size: int
    clients: int
    ops: int          # per client, per op type
    address: str


def _client_main(case: Case, rank: int, barrier: object, out: object) -> None:
    import torch

    payload = torch.randint(0, 256, (case.size,), dtype=torch.uint8)
    keys = [struct.pack("<QQ", rank, i) for i in range(2)]  # 2 keys per client, reused
    put, get, close = _connect(case, payload)
    for k in keys:  # warm-up (also creates the keys)
        put(k)
        get(k)
    result = {}
    for op, fn in (("put", put), ("get", get)):
        barrier.wait()  # type: ignore[attr-defined]
        lat = []
        t0 = time.perf_counter()
        for i in range(case.ops):
            s = time.perf_counter()
            fn(keys[i % len(keys)])
            lat.append(time.perf_counter() - s)
        result[op] = (t0, time.perf_counter(), lat)
    close()
    out.put((rank, result))  # type: ignore[attr-defined]


def _connect(case: Case, payload: object):  # noqa: ANN202 - returns three closures
    host, port = case.address.rsplit(":", 1)
    n = case.size
    if case.system == "raw-socket":
        s = socket.create_connection((host, int(port)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = memoryview(bytearray(n))
        src = memoryview(payload.numpy())  # type: ignore[attr-defined]

        def put(key: bytes) -> None:
            s.sendall(_REQ.pack(2, n))
            s.sendall(src)
            s.recv(1)

        def get(key: bytes) -> None:
            s.sendall(_REQ.pack(1, n))
            got = 0
            while got < n:
                got += s.recv_into(buf[got:], n - got)
        return put, get, s.close
    if case.system == "redis":
        import redis

        r = redis.Redis(host=host, port=int(port))
        data = payload.numpy().tobytes()  # type: ignore[attr-defined]

        def rput(key: bytes) -> None:
            r.set(key, data)

        def rget(key: bytes) -> None:
            if r.get(key) is None:
                raise RuntimeError("redis lost a key")
        return rput, rget, r.close
    import torch

    from kvstore.keys import KeyScheme
    from kvstore_client import KVStoreClient

    c = KVStoreClient(case.address, KeyScheme("bench", "uint8"),
                      use_data_plane=case.system != "kvstore-grpc",
                      use_shared_memory=case.system == "kvstore-shm")
    if case.system == "kvstore-shm" and c._client._shm is None:
        raise RuntimeError("kvstore-shm: the client could not map the node's shared memory")
    out = ([torch.empty(n, dtype=torch.uint8)] if case.system in ("kvstore", "kvstore-shm")
           else None)

    def kput(key: bytes) -> None:
        c.put(key, payload)  # type: ignore[arg-type]

    def kget(key: bytes) -> None:
        if c.get_many([key], out=out)[0] is None:
            raise RuntimeError("kvstore lost a key")
    return kput, kget, c.close


def run_case(case: Case) -> dict[str, dict[str, float]]:
    results = procs.run_client_processes(_client_main, case, case.clients)
    summary = {}
    for op in ("put", "get"):
        start = min(r[op][0] for _, r in results)
        end = max(r[op][1] for _, r in results)
        lat = np.array([x for _, r in results for x in r[op][2]])
        summary[op] = {
            "gbps": case.size * case.ops * case.clients / (end - start) / 1e9,
            "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3),
        }
    return summary


def _start_servers(systems: list[str], max_bytes: int, tmp: str) -> dict[str, procs.Proc]:
    servers: dict[str, procs.Proc] = {}
    if "raw-socket" in systems:
        port = procs.free_port()
        p = mp.get_context("spawn").Process(target=raw_server_main, args=(port, max_bytes),
                                            daemon=True)
        p.start()
        procs.wait_port("127.0.0.1", port, 30)
        servers["raw-socket"] = p  # type: ignore[assignment]
        servers["raw-socket-port"] = port  # type: ignore[assignment]
    # Capacity for every client's two keys at the largest size, plus headroom.
    node_args = ["--cpu-capacity-bytes", str(20 * max_bytes), "--disk-capacity-bytes", "0",
                 "--max-chunk-bytes", str(max_bytes)]
    if any(s in systems for s in ("kvstore", "kvstore-alloc", "kvstore-grpc")):
        servers["kvstore"] = procs.start_node(tmp, node_args)
    if "kvstore-shm" in systems:
        servers["kvstore-shm"] = procs.start_node(f"{tmp}/shm", [*node_args, "--shared-memory"])
    if "redis" in systems:
        servers["redis"] = procs.start_redis()
    return servers


def run(args: argparse.Namespace) -> int:
    max_bytes = max(args.sizes_mib) << 20
    rows = []
    with tempfile.TemporaryDirectory(prefix="kvstore-bench-") as tmp:
        servers = _start_servers(args.systems, max_bytes, tmp)
        try:
            for size_mib in args.sizes_mib:
                for clients in args.clients:
                    ops = max(4, args.mib_per_case // size_mib // clients)
                    for system in args.systems:
                        if system == "raw-socket":
                            address = f"127.0.0.1:{servers['raw-socket-port']}"
                        elif system == "kvstore-shm":
                            address = servers["kvstore-shm"].address
                        elif system.startswith("kvstore"):
                            address = servers["kvstore"].address
                        else:
                            address = servers["redis"].address
                        case = Case(system, size_mib << 20, clients, ops, address)
                        res = run_case(case)
                        rows.append({"system": system, "size_mib": size_mib,
                                     "clients": clients, "ops": ops * clients, **{
                                         f"{op}_{k}": v for op, m in res.items()
                                         for k, v in m.items()}})
                        r = rows[-1]
                        print(f"  {system:13s} {size_mib:3d} MiB x{clients}: get "
                              f"{r['get_gbps']:.2f} GB/s, put {r['put_gbps']:.2f} GB/s",
                              flush=True)
        finally:
            for s in servers.values():
                if isinstance(s, procs.Proc):
                    s.stop()
                elif hasattr(s, "terminate"):
                    s.terminate()
    _print_table(rows)
    ratios = _ratios(rows)
    result = {"benchmark": "store", "rows": rows, "ratios": ratios}
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps({"benchmark": "store", "ratios": ratios}))
    return 0


def _print_table(rows: list[dict]) -> None:
    head = (f"{'system':13s} {'size':>6s} {'clients':>7s} {'ops':>5s} | {'get GB/s':>8s} "
            f"{'p50 ms':>7s} {'p99 ms':>7s} | {'put GB/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['system']:13s} {r['size_mib']:4d}Mi {r['clients']:7d} {r['ops']:5d} | "
              f"{r['get_gbps']:8.2f} {r['get_p50_ms']:7.1f} {r['get_p99_ms']:7.1f} | "
              f"{r['put_gbps']:8.2f} {r['put_p50_ms']:7.1f} {r['put_p99_ms']:7.1f}")


def _ratios(rows: list[dict]) -> dict[str, float]:
    by = {(r["system"], r["size_mib"], r["clients"]): r for r in rows}
    out = {}
    for (system, size, clients), r in by.items():
        if not system.startswith("kvstore"):
            continue
        for base in ("redis", "raw-socket"):
            b = by.get((base, size, clients))
            if b:
                for op in ("get", "put"):
                    out[f"{system}_vs_{base}_{op}_{size}MiB_x{clients}"] = round(
                        r[f"{op}_gbps"] / b[f"{op}_gbps"], 3)
    return out
