"""KVStoreConnector in real vLLM engines (SmolLM2 on CPU) against a real kvstore node.

Each prompt is used once per engine (vLLM's own prefix cache would otherwise answer it). The
reference output is the ``base`` engine's (no connector). The node-kill test stops the shared
node, so it runs last in this module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest
import torch
from vllm_engines import SAVER_BUDGET, engine_env, kv_transfer_config, wait_saved

from kvstore.keys import KeyScheme, prefix_keys
from kvstore.procs import free_port, wait_for
from kvstore_client import KVStoreClient

pytestmark = pytest.mark.vllm
CHUNK = 256


@pytest.fixture(scope="module")
def store(node: Any, scheme: KeyScheme) -> Any:
    with KVStoreClient(node.address, scheme) as client:
        yield client


def saved_by_saver(engines: Any, store: Any, ids: list[int]) -> list[bytes]:
    """The saver answers ``ids`` like the base engine; its full chunks land in the store."""
    ref = engines.get("base").generate(ids)
    out = engines.get("saver").generate(ids)
    assert out["tokens"] == ref["tokens"]
    keys = prefix_keys(store.scheme, ids)
    wait_saved(store, keys)
    return keys


def test_fresh_process_loads_the_saved_prefix_and_answers_the_same(engines, store, prompts):
    ids = prompts.make(700)  # 2 full chunks + 188 tokens
    ref = engines.get("base").generate(ids)["tokens"]
    saved = engines.get("saver").generate(ids)
    assert saved["tokens"] == ref and saved["cached"] == 0
    keys = prefix_keys(store.scheme, ids)
    wait_saved(store, keys)
    loader = engines.get("loader")
    before = loader.stats()
    out = loader.generate(ids)
    after = loader.stats()
    assert out["cached"] == 2 * CHUNK            # vLLM computed only the last 188 tokens
    assert after["tokens_loaded"] - before.get("tokens_loaded", 0) == 2 * CHUNK
    assert out["tokens"] == ref                  # exactly the greedy tokens without connector


def test_loaded_kv_is_used_zeroed_chunks_change_the_answer(engines, store, prompts):
    ids = prompts.make(600)
    keys = saved_by_saver(engines, store, ids)
    ref = engines.get("base").generate(ids)["tokens"]
    zero = torch.zeros(tuple(store.get_many(keys[:1])[0].shape), dtype=torch.float32)
    store.delete_many(keys)
    assert all(store.put_many(keys, [zero] * len(keys)))
    out = engines.get("loader").generate(ids)
    assert out["cached"] == 2 * CHUNK
    assert out["tokens"] != ref


def test_miss_prefills_everything_with_the_right_answer(engines, store, prompts):
    ids = prompts.make(520)
    assert store.lookup(prefix_keys(store.scheme, ids)).prefix_hits == 0
    ref = engines.get("base").generate(ids)["tokens"]
    loader = engines.get("loader")
    before = loader.stats().get("tokens_loaded", 0)
    out = loader.generate(ids)
    assert out["cached"] == 0 and out["tokens"] == ref
    assert loader.stats().get("tokens_loaded", 0) == before


def test_bad_chunk_is_recomputed_never_used(engines, store, prompts):
    """A chunk the node serves but that is not this model's KV (wrong shape) fails its load;
    with kv_load_failure_policy=recompute vLLM recomputes from there: right answer."""
    ids = prompts.make(600)
    keys = saved_by_saver(engines, store, ids)
    ref = engines.get("base").generate(ids)["tokens"]
    good = store.get_many(keys[1:])[0]
    store.delete_many(keys[1:])
    assert store.put_many(keys[1:], [good[:, :, :CHUNK // 2].contiguous()])[0]
    loader = engines.get("loader")
    before = loader.stats()
    out = loader.generate(ids)
    after = loader.stats()
    assert after["tokens_loaded"] - before.get("tokens_loaded", 0) == CHUNK   # chunk 0 only
    assert after["tokens_failed"] - before.get("tokens_failed", 0) == CHUNK
    assert out["tokens"] == ref


def test_partial_chunks_are_neither_saved_nor_loaded(engines, store, prompts):
    short = prompts.make(200)       # less than one chunk
    ids = prompts.make(300)         # one chunk + 44 tokens
    for p in (short, ids):
        engines.get("saver").generate(p)
    wait_saved(store, prefix_keys(store.scheme, ids))
    partial = prefix_keys(store.scheme, short, include_partial=True)
    partial += prefix_keys(store.scheme, ids, include_partial=True)[1:]
    assert not any(store.lookup(partial).found)
    loader = engines.get("loader")
    for p, cached in ((short, 0), (ids, CHUNK)):
        out = loader.generate(p)
        assert out["cached"] == cached
        assert out["tokens"] == engines.get("base").generate(p)["tokens"]


def test_chunked_prefill_saves_each_chunk_once_complete(engines, store, prompts):
    """The saver prefills 160 tokens a step: chunk boundaries fall inside steps."""
    ids = prompts.make(1000)        # 7 prefill steps, 3 full chunks
    saver = engines.get("saver")
    before = saver.stats().get("chunks_saved", 0)
    keys = saved_by_saver(engines, store, ids)
    assert len(keys) == 3 and SAVER_BUDGET % CHUNK != 0
    wait_for(lambda: saver.stats().get("chunks_saved", 0) - before >= 3, 30, "3 saves")
    assert saver.stats()["chunks_saved"] - before == 3     # each chunk once
    out = engines.get("loader").generate(ids)
    assert out["cached"] == 3 * CHUNK
    assert out["tokens"] == engines.get("base").generate(ids)["tokens"]


def test_tenants_do_not_see_each_others_prefixes(engines, store, prompts, node):
    ids_t1 = prompts.make(600)
    saved_by_saver(engines, store, ids_t1)
    other = engines.get("other_tenant")
    out = other.generate(ids_t1)            # saved by tenant t1: a miss for t2
    assert out["cached"] == 0
    assert out["tokens"] == engines.get("base").generate(ids_t1)["tokens"]
    ids_t2 = prompts.make(600)
    other.generate(ids_t2)                  # t2 saves it under its own namespace
    t2 = KeyScheme(**other.stats()["scheme"])
    assert t2.tenant == "t2" and t2.namespace_digest() != store.scheme.namespace_digest()
    with KVStoreClient(node.address, t2) as t2_store:
        wait_saved(t2_store, prefix_keys(t2, ids_t2))
    assert store.lookup(prefix_keys(store.scheme, ids_t2)).prefix_hits == 0
    assert engines.get("loader").generate(ids_t2)["cached"] == 0


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_openai_server_with_kv_transfer_config(engines, store, prompts, model_dir, work_dir,
                                               node):
    ids = prompts.make(600)
    saved_by_saver(engines, store, ids)
    ref = engines.get("base").generate(ids, max_tokens=6)["tokens"]
    port = free_port()
    log = open(work_dir / "api-server.log", "ab")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
         "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
         "--max-model-len", "4096", "--enforce-eager", "--enable-prompt-tokens-details",
         "--kv-transfer-config", kv_transfer_config(address=node.address, tenant="t1")],
        stdout=log, stderr=subprocess.STDOUT, env=engine_env())
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: server.poll() is not None or _healthy(base + "/health"), 240,
                 "the OpenAI server")
        assert server.poll() is None, (work_dir / "api-server.log").read_text()[-3000:]
        t0 = time.perf_counter()
        resp = _post(base + "/v1/completions", {
            "model": str(model_dir), "prompt": ids, "max_tokens": 6, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True})
        assert time.perf_counter() - t0 < 120
        choice = resp["choices"][0]
        assert resp["usage"]["prompt_tokens_details"]["cached_tokens"] == 2 * CHUNK
        assert choice["token_ids"] == ref
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_zz_node_killed_between_save_and_load_recomputes(engines, store, prompts, node):
    """Runs last: it stops the module's node."""
    ids = prompts.make(600)
    saved_by_saver(engines, store, ids)
    ref = engines.get("base").generate(ids)["tokens"]
    node.kill()
    out = engines.get("loader").generate(ids)
    assert out["cached"] == 0
    assert out["tokens"] == ref
