"""`kvstore bench remote`: the remote data path against its ceilings, in one run.

A kvstore node **without** shared memory (as any remote node is reached: TCP data plane) holds
``--chunks`` chunks of ``--chunk-mib`` MiB (default 64 x 32 MiB = 2 GiB, the KV of 16K tokens of
a Llama-3-8B-shaped model in bf16). Measured, each a median of ``--repeats`` after a warm-up:

* raw-socket ceiling: a server that only sends bytes (threads, sendall) and a client with 1 and
  8 connections, a thread each doing ``recv_into`` a pinned buffer (pinned when CUDA is there);
* host-to-device floor: the same bytes copied from pinned memory to the GPU (CUDA only);
* kvstore ``get_many(keys, out=pinned)`` and ``get_many(keys, device="cuda")`` (into GPU memory
  through the threaded receiver's staging rings), for 1 worker and for 8 worker processes (each
  its own process, started together at a barrier; every worker fetches all chunks).
  Throughput = bytes moved by all workers / wall time;
* with CUDA (or ``--blend``): TTFT of full prefill vs remote prefix hit vs blend at 4K and 16K
  tokens with bf16, fp8 and int4 on the wire (``kvstore.bench.blend_gpu`` against the same kind
  of node, a subprocess; ``--smoke`` model on the CPU).

Prints a table and a final JSON line with ratios (``--json-out`` writes everything). Without CUDA
the sizes default smaller (16 x 4 MiB, workers 1 and 2) so CI can smoke-test the code path.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvstore import procs

_REQ = struct.Struct("<BQ")  # op (1 = send me nbytes), nbytes: the raw server's request


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chunk-mib", type=int, default=None, help="default 32 (CUDA) / 4 (CPU)")
    p.add_argument("--chunks", type=int, default=None, help="default 64 (CUDA) / 16 (CPU)")
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="worker process counts (default 1 8 with CUDA, 1 2 without)")
    p.add_argument("--connections", type=int, default=8,
                   help="data-plane connections per worker (and the raw ceiling's wide case)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--blend", action="store_true",
                   help="also run blend_gpu on the CPU (--smoke model); with CUDA it always runs")
    p.add_argument("--no-blend", action="store_true", help="skip the TTFT part")
    p.add_argument("--blend-contexts", default="4096,16384")
    p.add_argument("--wire-codecs", default="identity,fp8-e4m3,kivi-int4")
    p.add_argument("--json-out", help="also write every figure as JSON here")


# ---- the raw-socket ceiling ----------------------------------------------------------------
def _raw_server(port: int, nbytes: int) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=64)
    payload = memoryview(os.urandom(nbytes))
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_raw_conn, args=(conn, payload), daemon=True).start()


def _raw_conn(conn: socket.socket, payload: memoryview) -> None:
    with conn:
        while True:
            head = conn.recv(_REQ.size, socket.MSG_WAITALL)
            if len(head) < _REQ.size:
                return
            conn.sendall(payload[:_REQ.unpack(head)[1]])


# ---- one worker process --------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    mode: str            # raw | h2d | pinned | gpu | gpu-nocheck (checksums off)
    address: str         # host:port (the raw server's, or the node's gRPC address)
    chunk_bytes: int
    chunks: int
    connections: int
    repeats: int


def _worker(case: Case, rank: int, barrier: Any, out: Any) -> None:
    import torch

    cuda = torch.cuda.is_available()
    try:
        run, close = _prepare(case, cuda)
        run()  # warm-up: connections, rings, allocator
        times = []
        for _ in range(case.repeats):
            barrier.wait()
            t0 = time.perf_counter()
            run()
            times.append((t0, time.perf_counter()))
        close()
        out.put((rank, times, ""))
    except Exception as exc:  # noqa: BLE001 - reported by the parent, which must not hang
        barrier.abort()
        out.put((rank, [], f"{type(exc).__name__}: {exc}"))


def _prepare(case: Case, cuda: bool):  # noqa: ANN202 - (run, close) closures
    import torch

    n, size = case.chunks, case.chunk_bytes
    # the GPU cases receive through the client's staging rings: no buffers of their own
    bufs = ([] if case.mode.startswith("gpu") else
            [torch.empty(size, dtype=torch.uint8, pin_memory=cuda) for _ in range(n)])
    if case.mode == "raw":
        return _raw_client(case, bufs)
    if case.mode == "h2d":
        dst = torch.empty(n * size, dtype=torch.uint8, device="cuda")

        def h2d() -> None:
            for i, b in enumerate(bufs):
                dst[i * size:(i + 1) * size].copy_(b, non_blocking=True)
            torch.cuda.synchronize()
        return h2d, lambda: None
    from kvstore.keys import KeyScheme
    from kvstore_client import KVStoreClient

    c = KVStoreClient(case.address, KeyScheme("bench-remote", "uint8"),
                      max_connections=case.connections, use_shared_memory=False,
                      deadline_s=120.0, verify_checksums=case.mode != "gpu-nocheck")
    keys = _keys(n)

    def check(got: list) -> None:
        if any(g is None for g in got):
            raise RuntimeError(f"{sum(g is None for g in got)} of {n} chunks missing")

    if case.mode == "pinned":
        def pinned() -> None:
            check(c.get_many(keys, out=bufs))
        return pinned, c.close

    def gpu() -> None:
        got = c.get_many(keys, device="cuda")
        torch.cuda.synchronize()
        check(got)
    return gpu, c.close


def _raw_client(case: Case, bufs: list) -> tuple:
    host, port = case.address.rsplit(":", 1)
    socks = [socket.create_connection((host, int(port))) for _ in range(case.connections)]
    for s in socks:  # as the data plane does: a small request must not wait for an ACK
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    views = [b.numpy().data for b in bufs]
    share = [list(range(i, len(bufs), len(socks))) for i in range(len(socks))]

    def drain(s: socket.socket, idx: list[int]) -> None:
        for i in idx:
            view, n = views[i], len(views[i])
            s.sendall(_REQ.pack(1, n))
            got = 0
            while got < n:
                r = s.recv_into(view[got:], n - got)
                if r == 0:
                    raise ConnectionError("raw server closed")
                got += r

    def run() -> None:
        threads = [threading.Thread(target=drain, args=(s, idx))
                   for s, idx in zip(socks, share, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def close() -> None:
        for s in socks:
            s.close()
    return run, close


def _keys(n: int) -> list[bytes]:
    return [struct.pack("<QQ", 0xBE4C, i) for i in range(n)]


def _measure(case: Case, workers: int) -> dict[str, Any]:
    results = procs.run_client_processes(_worker, case, workers, timeout_s=900)
    errors = [e for _, _, e in results if e]
    if errors:
        raise RuntimeError(f"{case.mode} x{workers}: {errors[0]}")
    total = case.chunk_bytes * case.chunks * workers
    rates = []
    for r in range(case.repeats):
        start = min(t[r][0] for _, t, _ in results)
        end = max(t[r][1] for _, t, _ in results)
        rates.append(total / (end - start) / 1e9)
    gbps = statistics.median(rates)
    return {"mode": case.mode, "workers": workers, "connections": case.connections,
            "gib": round(total / (1 << 30), 3), "gbps": round(gbps, 2),
            "ms": round(total / gbps / 1e6, 1), "all_gbps": [round(x, 2) for x in rates]}


# ---- the run -------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    import torch

    cuda = torch.cuda.is_available()
    chunk_bytes = (args.chunk_mib or (32 if cuda else 4)) << 20
    chunks = args.chunks or (64 if cuda else 16)
    workers = args.workers or ([1, 8] if cuda else [1, 2])
    rows: list[dict[str, Any]] = []
    host = _host_name(cuda)
    print(f"bench remote on {host}: {chunks} x {chunk_bytes >> 20} MiB per worker", flush=True)
    with tempfile.TemporaryDirectory(prefix="kvstore-remote-") as tmp:
        rport = procs.free_port()
        raw = mp.get_context("spawn").Process(target=_raw_server, args=(rport, chunk_bytes),
                                              daemon=True)
        raw.start()
        procs.wait_port("127.0.0.1", rport, 30)
        try:
            for conns in sorted({1, args.connections}):
                case = Case("raw", f"127.0.0.1:{rport}", chunk_bytes, chunks, conns,
                            args.repeats)
                rows.append(_report(_measure(case, 1), "raw-socket"))
        finally:
            raw.terminate()
        if cuda:
            case = Case("h2d", "", chunk_bytes, chunks, 1, args.repeats)
            rows.append(_report(_measure(case, 1), "pinned->GPU copy"))
        node = _start_node(tmp, chunk_bytes, chunks, cuda)
        try:
            _fill(node.address, chunk_bytes, chunks)
            for w in workers:
                for mode in ("pinned", "gpu") if cuda else ("pinned",):
                    case = Case(mode, node.address, chunk_bytes, chunks, args.connections,
                                args.repeats)
                    rows.append(_report(_measure(case, w), f"kvstore get {mode}"))
            if cuda:  # what the end-to-end checksums cost (one worker)
                case = Case("gpu-nocheck", node.address, chunk_bytes, chunks, args.connections,
                            args.repeats)
                rows.append(_report(_measure(case, 1), "kvstore get gpu-nocheck"))
        finally:
            node.stop()
        blend = None
        if not args.no_blend and (cuda or args.blend):
            blend = _blend(args, tmp, cuda)
    ratios = _ratios(rows, blend, args.connections)
    _print_table(rows, blend, host)
    result = {"benchmark": "remote", "host": host, "rows": rows, "blend": blend,
              "ratios": ratios}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"benchmark": "remote", "host": host, "ratios": ratios}))
    return 0


def _report(row: dict[str, Any], name: str) -> dict[str, Any]:
    row["system"] = name
    print(f"  {name:18s} x{row['workers']} ({row['connections']} conn): {row['gbps']:.2f} GB/s "
          f"({row['ms']:.0f} ms for {row['gib']} GiB)", flush=True)
    return row


def _start_node(tmp: str, chunk_bytes: int, chunks: int, cuda: bool) -> procs.Proc:
    # room for the chunks and, with CUDA, the blend run's KV (16K tokens in three codecs plus
    # the documents); no --shared-memory: every byte crosses the TCP data plane
    capacity = max(2 * chunk_bytes * chunks, (24 << 30) if cuda else (256 << 20))
    max_chunk = max(chunk_bytes, (64 << 20) if cuda else (8 << 20))
    args = ["--cpu-capacity-bytes", str(capacity), "--disk-capacity-bytes", "0",
            "--max-chunk-bytes", str(max_chunk), "--gpu-device", "none"]
    os.makedirs(tmp, exist_ok=True)
    log = os.path.join(tmp, "node.log")
    try:
        return procs.start_node(tmp, args, log_path=log)
    except RuntimeError:
        print(Path(log).read_text()[-3000:], file=sys.stderr)
        raise


def _fill(address: str, chunk_bytes: int, chunks: int) -> None:
    import torch

    from kvstore.keys import KeyScheme
    from kvstore_client import KVStoreClient

    with KVStoreClient(address, KeyScheme("bench-remote", "uint8"), deadline_s=300.0) as c:
        keys = _keys(chunks)
        for i in range(0, chunks, 8):
            data = [torch.randint(0, 256, (chunk_bytes,), dtype=torch.uint8)
                    for _ in keys[i:i + 8]]
            if not all(c.put_many(keys[i:i + 8], data)):
                raise RuntimeError("the node refused a chunk")


def _blend(args: argparse.Namespace, tmp: str, cuda: bool) -> dict[str, Any] | None:
    """blend_gpu against a fresh node without shared memory; its JSON result."""
    node = _start_node(f"{tmp}/blend", 32 << 20 if cuda else 1 << 20, 64, cuda)
    out = Path(tmp) / "blend_gpu.json"
    cmd = [sys.executable, "-m", "kvstore.bench.blend_gpu", "--store-address", node.address,
           "--wire-codecs", args.wire_codecs, "--max-connections", str(args.connections),
           "--out", str(out)]
    cmd += ["--contexts", args.blend_contexts] if cuda else ["--smoke", "--repeats", "1"]
    print("  " + " ".join(cmd[1:]), flush=True)
    try:
        proc = subprocess.run(cmd, timeout=1200, capture_output=True, text=True)
    finally:
        node.stop()
    sys.stdout.write(proc.stdout[-6000:])
    if proc.returncode != 0:
        print(f"blend_gpu failed ({proc.returncode}):\n{proc.stderr[-4000:]}", flush=True)
        return None
    return json.loads(out.read_text())


def _ratios(rows: list[dict[str, Any]], blend: dict[str, Any] | None,
            wide: int) -> dict[str, float]:
    by = {(r["system"], r["workers"], r["connections"]): r["gbps"] for r in rows}
    raw1, raw8 = by.get(("raw-socket", 1, 1)), by.get(("raw-socket", 1, wide))
    out: dict[str, float] = {}
    if raw1 and raw8:
        out[f"raw_{wide}conn_over_1conn"] = round(raw8 / raw1, 2)
    for (system, w, _), gbps in by.items():
        if system.startswith("kvstore") and raw8:
            out[f"{system.split()[-1]}_x{w}_vs_raw_{wide}conn"] = round(gbps / raw8, 3)
    h2d = by.get(("pinned->GPU copy", 1, 1))
    if h2d and raw8:
        out["h2d_floor_gbps"] = h2d
    for r in (blend or {}).get("rows", []):
        if r["method"] != "full prefill":
            tag = r["method"].split()[0]
            out[f"{tag}_{r['context']}_{r.get('wire', 'identity')}_vs_full"] = r["speedup"]
    return out


def _print_table(rows: list[dict[str, Any]], blend: dict[str, Any] | None, host: str) -> None:
    print(f"\nbench remote on {host}")
    head = (f"{'system':<20}{'workers':>8}{'conns':>6}{'GiB':>8}{'GB/s':>8}{'ms':>9}"
            f"{'vs raw':>8}")
    print(head)
    print("-" * len(head))
    wide = max((r["connections"] for r in rows if r["system"] == "raw-socket"), default=1)
    raw = next((r["gbps"] for r in rows if r["system"] == "raw-socket"
                and r["connections"] == wide), None)
    for r in rows:
        vs = f"{r['gbps'] / raw:7.2f}x" if raw else ""
        print(f"{r['system']:<20}{r['workers']:>8}{r['connections']:>6}{r['gib']:>8.2f}"
              f"{r['gbps']:>8.2f}{r['ms']:>9.1f}{vs:>8}")
    if blend:
        print(f"\nTTFT ({blend.get('device')}, {blend.get('layers')} layers; node without "
              "shared memory)")
        head = f"{'context':>8} {'wire':<10} {'method':<16}{'TTFT ms':>9}{'vs full':>9}" \
               f"{'fetch ms':>10}{'reused':>8}"
        print(head)
        print("-" * len(head))
        for r in blend["rows"]:
            print(f"{r['context']:>8} {r.get('wire', 'identity'):<10} {r['method']:<16}"
                  f"{r['ttft_ms']:>9.1f}{r['speedup']:>8.2f}x{r['fetch_ms']:>10.1f}"
                  f"{r['reused_tokens']:>8}")


def _host_name(cuda: bool) -> str:
    import torch

    cores = os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if cuda else "no GPU"
    return f"{gpu}, {cores} cores"
