"""Fixtures of the cluster tests: a real redis-server and `kvstore serve` subprocesses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cluster_helpers import NodeProcs

from kvstore import procs


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
