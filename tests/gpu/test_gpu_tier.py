"""The GPU tier on a real CUDA device (run on the lent GPU machine: pytest -m gpu tests/gpu)."""

from __future__ import annotations

import pytest
import torch

from kvstore.chunk import ChunkInfo, checksum
from kvstore.config import NodeConfig
from kvstore.keys import KeyScheme
from kvstore.server.node import NodeThread
from kvstore.tiers.manager import TierManager

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
MiB = 1 << 20


def _chunk(i: int, n: int) -> tuple[ChunkInfo, bytes]:
    data = torch.randint(0, 256, (n,), dtype=torch.uint8).numpy().tobytes()
    key = i.to_bytes(16, "little")
    return ChunkInfo(key, n, checksum([data])), data


def test_gpu_tier_demotes_to_cpu_and_promotes_back(tmp_path):
    cfg = NodeConfig(data_dir=str(tmp_path), gpu_device="cuda", gpu_capacity_bytes=64 * MiB,
                     cpu_capacity_bytes=256 * MiB, disk_capacity_bytes=0, max_chunk_bytes=16 * MiB)
    m = TierManager(cfg)
    assert [t.name for t in m.mem_tiers] == ["gpu", "cpu"]
    assert m.mem_tiers[0].pool.device.type == "cuda"
    chunks = [_chunk(i, 16 * MiB) for i in range(8)]
    for info, data in chunks:
        assert m.put(info, "ns", data) == "gpu"
    tiers = {name: n for name, _, _, n in m.tier_usage()}
    assert tiers == {"gpu": 4, "cpu": 4}
    assert m.counters["gpu"].evictions == 4 and m.counters["cpu"].demotions_in == 4
    for info, data in chunks:  # every byte intact after GPU -> CPU moves
        with m.get(info.key) as lease:
            assert b"".join(bytes(v) for v in lease.views) == data
    m.close()


def test_node_with_gpu_tier_serves_over_data_plane(tmp_path):
    from kvstore_client import KVStoreClient

    cfg = NodeConfig(port=0, data_port=0, data_dir=str(tmp_path), gpu_device="cuda",
                     gpu_capacity_bytes=256 * MiB, cpu_capacity_bytes=256 * MiB)
    with NodeThread(cfg) as node:
        scheme = KeyScheme("gpu-test", "bfloat16")
        with KVStoreClient(node.address, scheme) as c:
            t = torch.randn(32, 2, 8, 16, 128, dtype=torch.bfloat16)
            assert c.put(b"k" * 16, t)
            assert c.lookup([b"k" * 16]).tiers == ["gpu"]
            got = c.get(b"k" * 16)
            assert got is not None and got.dtype == torch.bfloat16 and torch.equal(got, t)
