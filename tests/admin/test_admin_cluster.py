"""`kvstore admin ring | stats | drain` on a Redis-backed cluster of `kvstore serve` processes."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from kvstore import procs
from kvstore.cluster.local import wait_members
from kvstore.keys import KeyScheme


@pytest.fixture
def cluster(tmp_path):
    redis = procs.start_redis()
    url = f"redis://{redis.address}"
    with ThreadPoolExecutor(2) as pool:  # each node imports torch: start them together
        futures = [pool.submit(procs.start_node, str(tmp_path / f"n{i}"),
                               ["--redis-url", url, "--heartbeat-ttl-s", "1.5",
                                "--cpu-capacity-bytes", "16MiB", "--max-chunk-bytes", "1MiB",
                                "--disk-capacity-bytes", "0"]) for i in range(2)]
    nodes = [f.result() for f in futures]
    try:
        wait_members(url, {n.address for n in nodes}, 60)
        yield url, nodes
    finally:
        for n in nodes:
            n.kill()
        redis.kill()


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)
    return value


def test_ring_stats_and_drain_through_the_registry(cluster, cli_json, cli, connect):
    url, (a, b) = cluster
    rc, ring, err = cli_json("admin", "ring", "--redis-url", url)
    assert rc == 0, err
    assert ring["epoch"] >= 2
    assert sorted(m["address"] for m in ring["members"]) == sorted([a.address, b.address])
    assert {m["state"] for m in ring["members"]} == {"up"}
    assert sum(m["share"] for m in ring["members"]) == pytest.approx(1.0)
    assert all(0.35 < m["share"] < 0.65 for m in ring["members"])
    rc, out, _ = cli("admin", "ring", "--redis-url", url)
    assert rc == 0 and f"epoch {ring['epoch']}" in out and a.address in out

    keys = [bytes([i]) * 16 for i in range(4)]
    store_a = connect(a.address, KeyScheme("m", "float16"))
    assert all(store_a.put(k, b"\3" * 4000) for k in keys)
    rc, stats, err = cli_json("admin", "stats", "--redis-url", url)
    assert rc == 0, err
    assert stats["cluster"]["reachable"] == 2
    assert {n["address"] for n in stats["nodes"]} == {a.address, b.address}
    by_addr = {n["address"]: n for n in stats["nodes"]}
    assert by_addr[a.address]["puts"] == 4 and by_addr[a.address]["bytes_in"] == 16000

    rc, out, err = cli("admin", "drain", a.address, "--redis-url", url)
    assert rc == 0, err
    assert "draining" in out
    _wait(lambda: a.proc.poll() is not None, 60, "the drained node to exit")
    assert a.proc.returncode == 0
    rc, ring, _ = cli_json("admin", "ring", "--redis-url", url)
    assert [m["address"] for m in ring["members"]] == [b.address]
    store_b = connect(b.address, KeyScheme("m", "float16"))
    assert store_b.lookup(keys).found == [True] * 4  # handed over before it left


def test_ring_needs_the_registry(start_node, cli):
    node = start_node()
    rc, _, err = cli("admin", "ring", "--nodes", node.address)
    assert rc == 2 and "--redis-url" in err


def test_unreachable_registry_is_a_clear_error(cli):
    rc, _, err = cli("admin", "stats", "--redis-url", f"redis://127.0.0.1:{procs.free_port()}")
    assert rc == 2 and "cannot read the cluster registry" in err
