"""Node restarts: a crashed `kvstore serve` process (kill -9) comes back with its disk tier, and a
client whose session the node forgot re-handshakes without the caller noticing."""

from __future__ import annotations

import pytest
import torch

from kvstore.config import NodeConfig
from kvstore.keys import prefix_keys
from kvstore.procs import Proc, free_port, start_node

PLANES = [pytest.param(True, id="dataplane"), pytest.param(False, id="grpc")]


@pytest.fixture
def procs():
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def test_kill_9_then_restart_on_same_data_dir_serves_every_chunk(tmp_path, procs, connect,
                                                                 scheme, wait_until):
    data_dir = str(tmp_path / "node")
    flags = ["--disk-admission", "write-through", "--disk-capacity-bytes", "256MiB",
             "--cpu-capacity-bytes", "64MiB", "--page-bytes", "64KiB",
             "--max-chunk-bytes", "4MiB", "--gpu-device", "none"]
    first = start_node(data_dir, flags, log_path=str(tmp_path / "first.log"))
    procs.append(first)
    c = connect(first.address)
    keys = prefix_keys(scheme, list(range(12 * 256)))
    gen = torch.Generator().manual_seed(3)
    tensors = [torch.randn((2, 2, 4, 16 * (i + 1), 8), generator=gen).half() for i in range(10)]
    tensors += [torch.randn(2 << 20, generator=gen).half(), torch.randn(7).half()]  # 4 MiB, 14 B
    assert c.put_many(keys, tensors, parent_keys=[None] + keys[:-1]) == [True] * len(keys)

    def disk_chunks() -> int:
        return next(t.chunks for t in c.stats().tiers if t.name == "disk")

    # write-through copies are written in the background: only a chunk on disk survives kill -9
    wait_until(lambda: disk_chunks() == len(keys), 20, "write-through of every chunk")
    first.kill()
    assert first.proc.returncode == -9

    second = start_node(data_dir, flags, log_path=str(tmp_path / "second.log"))
    procs.append(second)
    c2 = connect(second.address)
    res = c2.lookup(keys)
    assert res.found == [True] * len(keys) and set(res.tiers) == {"disk"}
    got = c2.get_many(keys)
    for g, t in zip(got, tensors, strict=True):
        assert g.dtype == t.dtype and g.shape == t.shape and torch.equal(g, t)
    got = connect(second.address, use_data_plane=False).get_many(keys[:3])  # and over gRPC
    assert all(torch.equal(g, t) for g, t in zip(got, tensors[:3], strict=True))
    assert not list((tmp_path / "node" / "tmp").iterdir())


@pytest.mark.parametrize("plane", PLANES)
def test_client_rehandshakes_after_node_restart(tmp_path, node_config, start_node, connect,
                                                scheme, plane):
    """Regression (data plane): the node refused the old session on HELLO with a bare
    FAILED_PRECONDITION, which the client did not recognise as SessionRequired, so every call
    after a restart failed instead of re-handshaking."""
    cfg: NodeConfig = node_config(port=free_port(), data_port=free_port())
    node = start_node(cfg)
    c = connect(node.address, use_data_plane=plane)
    keys = prefix_keys(scheme, list(range(4 * 256)))
    t = torch.randn(64, 64).half()
    assert c.put(keys[0], t)
    old_session = c.session.session_id

    start_node.stop(node)
    start_node(cfg)                        # same ports, empty memory, no sessions
    assert c.get(keys[0]) is None          # memory-only chunk is gone: a miss, not an error
    assert c.session.session_id != old_session
    assert c.put(keys[1], t) and torch.equal(c.get(keys[1]), t)
    assert c.lookup(keys[:2]).found == [False, True]
    assert c.delete_many(keys[:2]) == 1
