"""A vLLM engine in a process of its own, driven by JSON lines (tests and ``kvstore bench vllm``).

    python -m kvstore_client.vllm.runner --model DIR [--kv-transfer-config JSON] [...]

prints ``{"ready": ...}`` once the engine is up, then answers one JSON line per request line:

* ``{"op": "generate", "prompts": [[token ids], ...], "max_tokens": N}`` -> ``{"outputs":
  [{"tokens": [...], "cached": n, "wall_s": s}, ...]}``: greedy, one prompt at a time (so
  ``wall_s`` with max_tokens=1 is the time to first token); ``cached`` is vLLM's count of prompt
  tokens it did not compute (its own prefix cache plus the connector's loads);
* ``{"op": "stats"}`` -> the worker-side connector's counters (tokens and bytes loaded, ...)
  and its key scheme (``scheme``: the KeyScheme fields);
* ``{"op": "quit"}``.

The engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so that the connector's
counters can be read here. Logs go to stderr; stdout carries only the protocol.
``EngineProcess`` is the other end: it starts one and talks to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CONNECTOR = "KVStoreConnector"
CONNECTOR_MODULE = "kvstore_client.vllm.connector"


def kv_transfer_config(**extra: Any) -> str:
    """The --kv-transfer-config JSON of KVStoreConnector with these extra-config settings."""
    return json.dumps({"kv_connector": CONNECTOR, "kv_connector_module_path": CONNECTOR_MODULE,
                       "kv_role": "kv_both", "kv_load_failure_policy": "recompute",
                       "kv_connector_extra_config": extra})


def engine_env(**more: str) -> dict[str, str]:
    """Environment of a vLLM process on this CPU (kvstore's own variables removed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind",
               HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", **more)
    env.pop("TRITON_INTERPRET", None)  # vLLM imports the real Triton
    return env


class EngineProcess:
    """A fresh vLLM engine (this module, in a subprocess); its log goes to ``log_path``."""

    def __init__(self, name: str, model: str | Path, log_path: Path, kv_config: str = "",
                 extra_args: tuple[str, ...] = ()) -> None:
        self.name = name
        args = [sys.executable, "-m", "kvstore_client.vllm.runner", "--model", str(model),
                *extra_args]
        if kv_config:
            args += ["--kv-transfer-config", kv_config]
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, env=engine_env(), text=True)
        try:
            self.start_s: float = self._reply("start_s")
        except BaseException:
            self.close()
            raise

    def _reply(self, key: str) -> Any:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.proc.wait(30)
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"engine {self.name} exited ({self.proc.returncode}):\n{tail}")
        reply = json.loads(line)
        if key not in reply:
            raise RuntimeError(f"engine {self.name}: {reply}")
        return reply[key]

    def _ask(self, key: str, **req: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._reply(key)

    def generate(self, prompt: list[int], max_tokens: int = 6) -> dict[str, Any]:
        """{"tokens": greedy output ids, "cached": prompt tokens vLLM did not compute,
        "wall_s": seconds}"""
        return self._ask("outputs", op="generate", prompts=[prompt], max_tokens=max_tokens)[0]

    def stats(self) -> dict[str, Any]:
        return self._ask("stats", op="stats")

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(60)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def _engine(args: argparse.Namespace) -> Any:
    from vllm import LLM

    kw: dict[str, Any] = {}
    if args.kv_transfer_config:
        kw["kv_transfer_config"] = json.loads(args.kv_transfer_config)
    if args.max_num_batched_tokens:
        kw["max_num_batched_tokens"] = args.max_num_batched_tokens
    return LLM(model=args.model, dtype=args.dtype, max_model_len=args.max_model_len,
               seed=0, enforce_eager=True, enable_prefix_caching=not args.no_prefix_caching,
               **kw)


def _generate(llm: Any, prompts: list[list[int]], max_tokens: int) -> list[dict[str, Any]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    out = []
    for ids in prompts:
        t0 = time.perf_counter()
        (res,) = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
        wall = time.perf_counter() - t0
        out.append({"tokens": list(res.outputs[0].token_ids), "cached": res.num_cached_tokens,
                    "wall_s": wall})
    return out


def _worker() -> Any:
    from vllm.distributed.kv_transfer import get_kv_transfer_group, has_kv_transfer_group

    return getattr(get_kv_transfer_group(), "worker", None) if has_kv_transfer_group() else None


def _stats() -> dict[str, Any]:
    worker = _worker()
    if worker is None:
        return {}
    return {**worker.stats, "scheme": dataclasses.asdict(worker.scheme)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="a vLLM engine driven by JSON lines")
    p.add_argument("--model", required=True)
    p.add_argument("--kv-transfer-config", default="")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--max-num-batched-tokens", type=int, default=0)
    p.add_argument("--no-prefix-caching", action="store_true")
    args = p.parse_args(argv)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>`: every thread's stack to stderr
    proto = sys.stdout
    sys.stdout = sys.stderr  # vLLM and friends print: keep the protocol stream clean
    t0 = time.perf_counter()
    llm = _engine(args)
    print(json.dumps({"ready": True, "start_s": time.perf_counter() - t0}), file=proto,
          flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            break
        if req["op"] == "generate":
            reply: dict[str, Any] = {"outputs": _generate(llm, req["prompts"],
                                                          int(req.get("max_tokens", 8)))}
        elif req["op"] == "stats":
            reply = {"stats": _stats()}
        else:
            reply = {"error": f"unknown op {req['op']!r}"}
        print(json.dumps(reply), file=proto, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
