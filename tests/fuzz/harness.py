"""A real node in its own process, raw gRPC stubs and raw sockets, and the checks run after every
fuzz case (docs/FUZZING.md). conftest.py makes fixtures of them.

``fuzz_node`` (one per session) is a node started by tests/fuzz/node_proc.py through
``create_server`` on port 0, with small tiers so eviction, demotion to disk and page reuse all
happen during a run. ``target.after_case(keys)`` is the per-case property: the process is alive,
health says SERVING, the canary chunks stored before the run read back byte-exact, the keys the
case touched are deleted, and every page in use belongs to a stored chunk (no reservation leaked).
"""

from __future__ import annotations

import collections
import contextlib
import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvstore import dataplane as dp
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

from . import oracle

PAGE = 64 << 10
MAX_CHUNK = 1 << 20
CPU_BYTES = 8 << 20
NODE = dict(port=0, data_port=0, metrics_port=-1, gpu_device="none", page_bytes=PAGE,
            cpu_capacity_bytes=CPU_BYTES, max_chunk_bytes=MAX_CHUNK, frame_bytes=64 << 10,
            disk_capacity_bytes=16 << 20,
            models=[{k: oracle.SERVED[k] for k in ("model_id", "kv_dtype", "kv_layout",
                                                   "chunk_tokens")}])
# RSS the node may gain over a whole session, CI or long run: the CPU tier's pages (touched
# lazily, 8 MiB); a request at the 8 MiB receive limit, held as wire bytes and as ~450k decoded
# Python keys (~30 MiB); gRPC's buffers; and what glibc keeps in its per-thread arenas after
# frees (up to 8 per core). Measured (docs/FUZZING.md): 43 MiB after 3.3k cases, at most 87 MiB
# in a 29k-case run, falling back to 45 MiB between properties (retention, not a leak). A leak
# per case, or a huge put buffered before its meta is checked, goes far past it.
RSS_BOUND_BYTES = 128 << 20
RSS_LOG: list[int] = []  # the node's RSS growth over the baseline, after each property
STATUS_LOG: collections.Counter[tuple[str, str]] = collections.Counter()  # (rpc, code) -> cases
REPO = Path(__file__).resolve().parents[2]


class NodeProcess:
    def __init__(self, data_dir: Path, limits: dict[str, int] | None = None,
                 **overrides: Any) -> None:
        spec = {"config": {**NODE, "data_dir": str(data_dir), **overrides},
                "limits": limits or {}}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz.node_proc", json.dumps(spec)], cwd=REPO,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            raise RuntimeError(f"fuzz node did not start (exit {self.proc.wait(10)})")
        ports = json.loads(line)
        self.address = f"127.0.0.1:{ports['port']}"
        self.data_port = ports["data_port"]

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS for the node process")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Target:
    """Raw access to one node and the state the properties check against."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.channel = grpc.insecure_channel(node.address, options=[
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20)])
        self.stub = pb_grpc.KVStoreStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        resp = self.stub.Handshake(pb.HandshakeRequest(scheme=pb.KeyScheme(**oracle.SERVED)),
                                   timeout=10)
        self.session_id = resp.session_id
        self.md = (("kvstore-session", self.session_id),)
        self.verdicts = oracle.CodecVerdicts()
        rng = random.Random(20261108)
        self.canaries: dict[bytes, bytes] = {}
        self.seen_keys: set[bytes] = set()
        for i, n in enumerate((100, PAGE - 3, 2 * PAGE + 5, 3 * PAGE)):
            key, data = rng.randbytes(16), rng.randbytes(n)
            self.canaries[key] = data
            if i % 2:
                assert self.dp_put(key, data) == 0
            else:
                self.stub.Put(iter([pb.PutRequest(meta=chunk_meta(key, data)),
                                    pb.PutRequest(data=data)]), metadata=self.md, timeout=10)
        self._warm_up()
        self.after_case(())
        self.rss_baseline = node.rss_bytes()

    def _warm_up(self) -> None:
        """Make the node load what it loads once (the codecs, with torch's kernels, on the first
        encoded chunk: ~80 MiB) before the RSS baseline is taken."""
        from .strategies import encoded_chunks

        codec, params, dtype, shape, payload = encoded_chunks()[1]
        key = bytes(16)
        meta = pb.ChunkMeta(key=key, dtype=dtype, shape=shape, payload_bytes=len(payload),
                            checksum=oracle.xxh(payload), codec=codec, codec_params=params)
        self.stub.Put(iter([pb.PutRequest(meta=meta), pb.PutRequest(data=payload)]),
                      metadata=self.md, timeout=30)
        self.stub.Delete(pb.DeleteRequest(keys=[key]), metadata=self.md, timeout=10)

    def raw(self, kind: str, method: str, service: str = "kvstore.v1.KVStore") -> Any:
        """A callable that sends already-serialized request bytes (garbage included)."""
        return getattr(self.channel, kind)(f"/{service}/{method}")

    def dp_put(self, key: bytes, data: bytes) -> int:
        with socket.create_connection(("127.0.0.1", self.node.data_port), timeout=10) as s:
            sid = self.session_id.encode()
            meta = chunk_meta(key, data).SerializeToString()
            s.sendall(dp.HELLO.pack(dp.MAGIC, dp.VERSION, len(sid)) + sid)
            assert read_status(s)[0] == 0
            s.sendall(dp.OP.pack(dp.OP_PUT) + dp.U32.pack(len(meta)) + meta)
            code, _ = read_status(s)
            if code:
                return code
            s.sendall(data)
            return read_status(s)[0]

    def get_all(self, keys: list[bytes]) -> dict[bytes, bytes | None]:
        """Chunks by key over a well-formed Get (None = not found)."""
        out: dict[bytes, bytes | None] = {}
        cur: bytes | None = None
        for item in self.stub.Get(pb.GetRequest(keys=keys), metadata=self.md, timeout=20):
            if item.HasField("header"):
                cur = item.header.key
                out[cur] = b"" if item.header.found else None
            else:
                assert cur is not None and out[cur] is not None
                out[cur] += item.data
        return out

    @contextlib.contextmanager
    def case(self) -> Iterator[set[bytes]]:
        """``with target.case() as touched:`` add the keys a case may store to ``touched``; they
        are deleted however the case ends (a failed case must not fail the next ones), and
        ``after_case`` runs when it passed."""
        touched: set[bytes] = set()
        try:
            yield touched
        finally:
            self.cleanup(touched)
        self.after_case(())

    def cleanup(self, touched: Any) -> None:
        keys = sorted({bytes(k) for k in touched if len(k) == 16} - set(self.canaries))
        self.seen_keys.update(keys)
        if keys and self.node.alive():
            self.stub.Delete(pb.DeleteRequest(keys=keys), metadata=self.md, timeout=10)

    def after_case(self, touched: Any) -> None:
        """The node survived the case: serving, canaries intact, the case's keys removed, no page
        held by anything but a stored chunk."""
        assert self.node.alive(), "the node process died"
        health = self.health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        self.cleanup(touched)
        assert self.get_all(list(self.canaries)) == self.canaries, "a canary chunk changed"
        deadline = time.monotonic() + 10
        while True:  # data-plane aborts free their pages on the node's connection thread
            stats = self.stub.Stats(pb.StatsRequest(), timeout=10)
            cpu = next(t for t in stats.tiers if t.name == "cpu")
            held = sum(-(-len(d) // PAGE) * PAGE for k, d in self.canaries.items()
                       if self._tier(k) == "cpu")
            if cpu.used_bytes == held and cpu.chunks == sum(
                    self._tier(k) == "cpu" for k in self.canaries):
                break
            assert time.monotonic() < deadline, \
                f"cpu tier holds {cpu.used_bytes} bytes in {cpu.chunks} chunks; the canaries " \
                f"there take {held}: pages leaked; stored: {self.leftovers()}"
            time.sleep(0.01)

    def leftovers(self) -> list[str]:
        """Keys of earlier cases still stored (the per-case cleanup deleted them all)."""
        keys = sorted(self.seen_keys)
        admin = pb_grpc.AdminStub(self.channel)
        found = []
        for i in range(0, len(keys), 4096):
            resp = admin.Inspect(pb.InspectRequest(keys=keys[i:i + 4096]), timeout=10)
            found += [f"{c.key.hex()} in {list(c.tiers)}" for c in resp.chunks if c.found]
        return found

    def _tier(self, key: bytes) -> str:
        loc = self.stub.Lookup(pb.LookupRequest(keys=[key]), metadata=self.md, timeout=10)
        return loc.locations[0].tier

    def check_rss(self) -> int:
        grown = self.node.rss_bytes() - self.rss_baseline
        RSS_LOG.append(grown)
        assert grown < RSS_BOUND_BYTES, f"node RSS grew by {grown >> 20} MiB over the run"
        return grown

    def close(self) -> None:
        self.channel.close()


def chunk_meta(key: bytes, data: bytes, **kw: Any) -> pb.ChunkMeta:
    fields = dict(key=key, dtype="uint8", shape=[len(data)], payload_bytes=len(data),
                  checksum=oracle.xxh(data))
    fields.update(kw)
    return pb.ChunkMeta(**fields)


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = s.recv(n - len(buf))
        if not part:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += part
    return bytes(buf)


def read_status(s: socket.socket) -> tuple[int, str]:
    code, n = dp.STATUS.unpack(recv_exact(s, dp.STATUS.size))
    return code, recv_exact(s, n).decode()


def record(rpc: str, code: grpc.StatusCode | str) -> None:
    STATUS_LOG[(rpc, code if isinstance(code, str) else code.name)] += 1


def rpc_status(fn: Any) -> tuple[grpc.StatusCode, Any, Any]:
    """(code, result or the error, trailing metadata as a dict) of a finished call."""
    try:
        return grpc.StatusCode.OK, fn(), {}
    except grpc.RpcError as exc:
        return exc.code(), exc, dict(exc.trailing_metadata() or ())


