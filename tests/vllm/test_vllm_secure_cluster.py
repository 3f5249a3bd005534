"""KVStoreConnector against a Redis-membership cluster (R=2, one node killed) and against a node
with TLS and tokens. One engine each, with vLLM's own prefix cache off, so that asking the same
prompt again must load it from the store."""

from __future__ import annotations

import json
from typing import Any

import pytest
from vllm_engines import EngineProcess, kv_transfer_config, make_pki

from kvstore.keys import KeyScheme, prefix_keys
from kvstore.procs import start_node, start_redis, wait_for
from kvstore_client.cluster import ClusterClient
from kvstore_client.membership import Member

pytestmark = pytest.mark.vllm
CHUNK = 256


def engine(name: str, model_dir: Any, work_dir: Any, **extra: Any) -> EngineProcess:
    return EngineProcess(name, model_dir, work_dir / f"engine-{name}.log",
                         kv_transfer_config(**extra), ("--no-prefix-caching",))


def test_cluster_r2_serves_the_prefix_after_a_node_dies(engines, prompts, model_dir, work_dir):
    from kvstore.cluster.local import wait_members

    redis = start_redis()
    url = f"redis://{redis.address}"
    nodes = [start_node(str(work_dir / f"cnode{i}"),
                        ["--redis-url", url, "--heartbeat-ttl-s", "3", "--replication", "2"],
                        log_path=str(work_dir / f"cnode{i}.log")) for i in range(2)]
    eng = None
    try:
        wait_members(url, {n.address for n in nodes}, 60)
        eng = engine("cluster", model_dir, work_dir, redis_url=url, tenant="t1")
        ids = prompts.make(600)
        ref = engines.get("base").generate(ids)["tokens"]
        first = eng.generate(ids)
        assert first["cached"] == 0 and first["tokens"] == ref
        scheme = KeyScheme(**eng.stats()["scheme"])
        keys = prefix_keys(scheme, ids)
        with ClusterClient(scheme, [Member(n.address, n.address) for n in nodes]) as c:
            wait_for(lambda: all(len(h) == 2 for h in c.lookup(keys).nodes), 60,
                     "both replicas of every chunk")
        nodes[0].kill()
        before = eng.stats().get("tokens_loaded", 0)
        again = eng.generate(ids)
        assert again["cached"] == 2 * CHUNK
        assert eng.stats()["tokens_loaded"] - before == 2 * CHUNK
        assert again["tokens"] == ref
    finally:
        if eng is not None:
            eng.close()
        for n in nodes:
            n.stop()
        redis.stop()


def test_tls_and_token(engines, prompts, model_dir, work_dir):
    from kvstore.server.auth import token_hash

    pki_dir = work_dir / "pki"
    pki_dir.mkdir()
    pki = make_pki(pki_dir)
    token = "tok-vllm-0123456789"
    tokens = work_dir / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [{"sha256": token_hash(token), "tenant": "alice",
                                              "role": "user", "name": "vllm"}]}))
    node = start_node(str(work_dir / "tls-node"),
                      ["--tls-cert", pki["cert"], "--tls-key", pki["key"],
                       "--auth-tokens-file", str(tokens)],
                      log_path=str(work_dir / "tls-node.log"))
    eng = None
    try:
        eng = engine("tls", model_dir, work_dir, address=node.address, tenant="alice",
                     token=token, tls_ca=pki["ca"])
        ids = prompts.make(600)
        ref = engines.get("base").generate(ids)["tokens"]
        assert eng.generate(ids)["tokens"] == ref
        wait_for(lambda: eng.stats().get("chunks_saved", 0) >= 2, 60, "2 chunks saved")
        again = eng.generate(ids)
        assert again["cached"] == 2 * CHUNK and again["tokens"] == ref
    finally:
        if eng is not None:
            eng.close()
        node.stop()
