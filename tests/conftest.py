"""Shared fixtures of the store-core tests (keys, config, tiers, server, client).

Nothing here is autouse, and heavy imports (torch, grpc, the server) happen inside fixtures, so
other test packages pay nothing for them.

Triton's interpreter: @triton.jit picks interpreted or compiled mode when a kernel module is
imported, and several test directories (codecs, inference, kernels) import kvstore_kernels while
they are collected. So TRITON_INTERPRET=1 is set here, before any test module is imported (this
machine and CI have no GPU), and restored once collection ends: then backend "auto" means torch on
CPU in every test, while tests/kernels sets the flag again around its own tests to run the
interpreted Triton kernels. On a GPU machine pass TRITON_INTERPRET=0 to test compiled kernels.
"""

from __future__ import annotations

import os

_OUTER_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET")
os.environ.setdefault("TRITON_INTERPRET", "1")

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import xxhash

from kvstore.chunk import ChunkInfo, checksum
from kvstore.config import NodeConfig
from kvstore.procs import wait_for


def pytest_collection_finish(session: pytest.Session) -> None:
    if _OUTER_TRITON_INTERPRET is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _OUTER_TRITON_INTERPRET


def _wait_until(predicate: Callable[[], Any], timeout_s: float = 10.0,
                what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); fail at the deadline."""
    return wait_for(predicate, timeout_s, what, 0.005, error=AssertionError)


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    return _wait_until


def _payload(nbytes: int, seed: int | str) -> bytes:
    return random.Random(seed).randbytes(nbytes)


def _chunk(seed: int | str, nbytes: int, *, bad_checksum: bool = False,
           **meta: Any) -> tuple[ChunkInfo, bytes]:
    """A chunk of ``nbytes`` random bytes with a key derived from ``seed``."""
    data = _payload(nbytes, seed)
    info = ChunkInfo(key=xxhash.xxh3_128_digest(f"chunk-{seed}".encode()), payload_bytes=nbytes,
                     checksum=checksum([data]) ^ (1 if bad_checksum else 0), **meta)
    return info, data


@pytest.fixture
def make_chunk() -> Callable[..., tuple[ChunkInfo, bytes]]:
    return _chunk


@pytest.fixture
def payload() -> Callable[[int, int | str], bytes]:
    return _payload


# ---- tier managers -------------------------------------------------------------------------
@pytest.fixture
def tier_manager(tmp_path) -> Iterator[Callable[..., Any]]:
    """``tier_manager(**config)``: a TierManager over ``tmp_path/'tiers'`` (closed at teardown).

    Small pages (4 KiB) and tiny tiers so eviction is easy to provoke; no GPU, no disk unless
    asked. Several managers may share the directory (warm restarts).
    """
    from kvstore.tiers.manager import TierManager

    made: list[TierManager] = []

    def make(**kw: Any) -> TierManager:
        base: dict[str, Any] = dict(data_dir=str(tmp_path / "tiers"), gpu_device="none",
                                    page_bytes=4096, cpu_capacity_bytes=4 * 4096,
                                    max_chunk_bytes=4 * 4096, disk_capacity_bytes=0)
        base.update(kw)
        m = TierManager(NodeConfig(**base))
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


# ---- nodes and clients ---------------------------------------------------------------------
@pytest.fixture
def node_config(tmp_path) -> Callable[..., NodeConfig]:
    """``node_config(**overrides)``: a node on free ports with its data under tmp_path."""

    def make(**kw: Any) -> NodeConfig:
        base: dict[str, Any] = dict(port=0, data_port=0, data_dir=str(tmp_path / "node"),
                                    metrics_port=-1,  # tests/admin turns it on (port 0)
                                    gpu_device="none", page_bytes=64 << 10,
                                    cpu_capacity_bytes=96 << 20, max_chunk_bytes=40 << 20,
                                    disk_capacity_bytes=0)
        base.update(kw)
        return NodeConfig(**base)

    return make


@pytest.fixture
def start_node(node_config) -> Iterator[Callable[..., Any]]:
    """``start_node(config=None, **overrides)`` -> a running StoreNode (NodeThread), stopped at
    teardown. ``.address``, ``.core`` (StoreCore) and ``.core.data_port`` are what tests use."""
    from kvstore.server.node import NodeThread

    threads: list[NodeThread] = []

    def start(config: NodeConfig | None = None, **kw: Any):
        t = NodeThread(config or node_config(**kw))
        node = t.start()
        threads.append(t)
        return node

    def stop(node) -> None:
        for t in threads:
            if t.node is node:
                threads.remove(t)
                t.stop()
                return
        raise ValueError("not a node of this fixture")

    start.stop = stop  # type: ignore[attr-defined]
    yield start
    for t in threads:
        t.stop()


@pytest.fixture
def scheme():
    from kvstore.keys import KeyScheme

    return KeyScheme("test/model", "float16")


@pytest.fixture
def connect(scheme) -> Iterator[Callable[..., Any]]:
    """``connect(address, scheme=None, **ClientOptions)`` -> a KVStoreClient closed at teardown."""
    from kvstore_client import KVStoreClient

    clients: list[KVStoreClient] = []

    def make(address: str, scheme_=None, **options: Any) -> KVStoreClient:
        options.setdefault("deadline_s", 20.0)
        c = KVStoreClient(address, scheme_ or scheme, **options)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def raw_stub(scheme) -> Iterator[Callable[..., Any]]:
    """``raw_stub(address, scheme=None, session=True)`` -> (KVStoreStub, call metadata).

    A plain generated stub (no client library) for sending requests the client would never send;
    with ``session`` it has handshaken and the metadata carries the session id.
    """
    import grpc

    from kvstore import wire
    from kvstore.v1 import kvstore_pb2 as pb
    from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

    channels: list[grpc.Channel] = []

    def make(address: str, scheme_=None, session: bool = True):
        ch = grpc.insecure_channel(address)
        channels.append(ch)
        stub = pb_grpc.KVStoreStub(ch)
        if not session:
            return stub, ()
        resp = stub.Handshake(pb.HandshakeRequest(scheme=wire.scheme_to_pb(scheme_ or scheme)),
                              timeout=10)
        return stub, (("kvstore-session", resp.session_id),)

    yield make
    for ch in channels:
        ch.close()
