"""`kvstore cluster up/status/down` on this machine: real processes, really stopped."""

from __future__ import annotations

import argparse
import json

import pytest
from cluster_helpers import random_chunks, same_bytes

from kvstore import procs
from kvstore.cli import cluster as cli
from kvstore.cluster.local import _ours
from kvstore.cluster.spec import ClusterSpec
from kvstore.errors import NotFound


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(list(argv)))


def test_up_status_down(tmp_path, scheme, capsys):
    d = str(tmp_path / "cluster")
    assert run("up", "--nodes", "2", "--dir", d, "--cpu-capacity-bytes", "32MiB",
               "--max-chunk-bytes", "1MiB", "--node-arg=--heartbeat-ttl-s=1.5") == 0
    state = json.loads((tmp_path / "cluster" / "cluster.json").read_text())
    try:
        assert len(state["nodes"]) == 2 and state["redis_pid"]
        keys, data = random_chunks(40, seed=41)
        with ClusterSpec(scheme, redis_url=state["redis_url"]).connect() as store:
            assert all(store.put_many(keys, data))
            assert same_bytes(store.get_many(keys), data) == []
        capsys.readouterr()
        assert run("status", "--dir", d, "--json") == 0
        status = json.loads(capsys.readouterr().out)
        assert [n["state"] for n in status["nodes"]] == ["up", "up"]
        assert sum(n["chunks"] for n in status["nodes"]) == 2 * len(keys)  # replication 2
        assert run("status", "--dir", d) == 0
        assert "epoch" in capsys.readouterr().out
        with pytest.raises(Exception, match="already up"):
            run("up", "--nodes", "1", "--dir", d)
    finally:
        assert run("down", "--dir", d) == 0
    assert not any(_ours(n["pid"], "kvstore") for n in state["nodes"])
    assert not _ours(state["redis_pid"], "redis-server")
    for n in state["nodes"]:
        with pytest.raises(OSError):
            procs.wait_port("127.0.0.1", n["port"], 0.1)
    with pytest.raises(NotFound):
        run("status", "--dir", d)


def test_cli_default_dir_matches_the_local_cluster_module():
    from kvstore.cli import cluster as cli
    from kvstore.cluster import local

    assert cli.DEFAULT_DIR == local.DEFAULT_DIR
