"""Fixtures of the cluster tests: a real redis-server and `kvstore serve` subprocesses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cluster_helpers import NodeProcs

from kvstore import procs
from kvstore_client.membership import Member


@pytest.fixture
def redis_server() -> Iterator[procs.Proc]:
    server = procs.start_redis()
    yield server
    server.kill()


@pytest.fixture
def nodes(tmp_path, redis_server) -> Iterator[NodeProcs]:
    n = NodeProcs(str(tmp_path), f"redis://{redis_server.address}")
    yield n
    n.stop_all()


@pytest.fixture
def three(start_node, node_config, tmp_path):
    """Three in-process nodes with small pages, and their members."""
    nodes = [start_node(node_config(data_dir=str(tmp_path / f"n{i}"), page_bytes=16 << 10,
                                    cpu_capacity_bytes=32 << 20, max_chunk_bytes=1 << 20))
             for i in range(3)]
    return nodes, [Member(n.address, n.address) for n in nodes]
