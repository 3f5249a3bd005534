"""vLLM with the connector when the store is not what it should be: a node serving another key
scheme (vLLM refuses to start, naming the field) and a load past its deadline (recomputed)."""

from __future__ import annotations

import pytest
from vllm_engines import EngineProcess, kv_transfer_config

from kvstore.procs import start_node, wait_for

pytestmark = pytest.mark.vllm
CHUNK = 256


def test_vllm_does_not_start_against_a_node_of_another_kv_dtype(model_dir, work_dir):
    node = start_node(str(work_dir / "f16-node"), ["--model", "SmolLM2-135M-Instruct-hf@:float16"],
                      log_path=str(work_dir / "f16-node.log"))
    try:
        with pytest.raises(RuntimeError, match="kv_dtype differs.*'float32'"):
            EngineProcess("mismatch", model_dir, work_dir / "engine-mismatch.log",
                          kv_transfer_config(address=node.address))
    finally:
        node.stop()


def test_late_load_is_recomputed(engines, prompts, model_dir, work_dir):
    """load_deadline_s of 1 ms: the chunks the lookup found arrive too late, every time."""
    node = start_node(str(work_dir / "late-node"), log_path=str(work_dir / "late-node.log"))
    eng = None
    try:
        eng = EngineProcess("late", model_dir, work_dir / "engine-late.log",
                            kv_transfer_config(address=node.address, tenant="late",
                                               load_deadline_s=0.001),
                            ("--no-prefix-caching",))
        ids = prompts.make(600)
        ref = engines.get("base").generate(ids)["tokens"]
        assert eng.generate(ids)["tokens"] == ref
        wait_for(lambda: eng.stats().get("chunks_saved", 0) >= 2, 60, "2 chunks saved")
        before = eng.stats()
        again = eng.generate(ids)
        after = eng.stats()
        assert after.get("tokens_failed", 0) - before.get("tokens_failed", 0) == 2 * CHUNK
        assert after.get("tokens_loaded", 0) == before.get("tokens_loaded", 0)
        assert again["tokens"] == ref
    finally:
        if eng is not None:
            eng.close()
        node.stop()
