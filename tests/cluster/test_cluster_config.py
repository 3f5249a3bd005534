"""The cluster settings of NodeConfig: defaults keep a standalone node; bad values are refused."""

from __future__ import annotations

import argparse

import pytest

from kvstore.cli import serve
from kvstore.config import NodeConfig, load_config
from kvstore.errors import ConfigError


def test_defaults_keep_a_standalone_node():
    c = NodeConfig()
    assert c.redis_url == "" and c.advertise_host == ""
    assert (c.capacity_weight, c.replication, c.heartbeat_ttl_s) == (1.0, 2, 5.0)
    assert c.rebalance_bytes_per_s == 64 << 20 and c.drain_timeout_s == 60.0


@pytest.mark.parametrize("bad", [
    {"redis_url": "http://localhost:6379"},
    {"redis_url": "redis://h:1", "host": "0.0.0.0"},  # nobody could dial 0.0.0.0
    {"capacity_weight": 0.0}, {"capacity_weight": float("nan")},
    {"replication": 3}, {"heartbeat_ttl_s": 0.0}, {"rebalance_bytes_per_s": 0},
    {"drain_timeout_s": -1.0},
])
def test_bad_cluster_settings_are_refused(bad):
    with pytest.raises(ConfigError, match=next(iter(bad)) if "host" not in bad
                       else "advertise_host"):
        NodeConfig(**bad)


def test_flags_and_environment_set_the_cluster_settings():
    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    args = p.parse_args(["--redis-url", "redis://10.0.0.5:6379", "--host", "0.0.0.0",
                         "--advertise-host", "10.0.0.7", "--capacity-weight", "2.5",
                         "--replication", "1", "--rebalance-bytes-per-s", "8MiB",
                         "--insecure"])
    c = serve.config_from_args(args)
    assert (c.redis_url, c.advertise_host, c.capacity_weight, c.replication, c.insecure) == (
        "redis://10.0.0.5:6379", "10.0.0.7", 2.5, 1, True)
    assert c.rebalance_bytes_per_s == 8 << 20
    env = load_config(env={"KVSTORE_HEARTBEAT_TTL_S": "2.5", "KVSTORE_DRAIN_TIMEOUT_S": "7"})
    assert (env.heartbeat_ttl_s, env.drain_timeout_s) == (2.5, 7.0)
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(env={"KVSTORE_CAPACITY_WEIGHT": "heavy"})
