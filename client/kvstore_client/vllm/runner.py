"""A vLLM engine in a process of its own, driven by JSON lines (tests and ``kvstore bench vllm``).

    python -m kvstore_client.vllm.runner --model DIR [--kv-transfer-config JSON] [...]

prints ``{"ready": ...}`` once the engine is up, then answers one JSON line per request line:

* ``{"op": "generate", "prompts": [[token ids], ...], "max_tokens": N}`` -> ``{"outputs":
  [{"tokens": [...], "cached": n, "wall_s": s}, ...]}``: greedy, one prompt at a time (so
  ``wall_s`` with max_tokens=1 is the time to first token); ``cached`` is vLLM's count of prompt
  tokens it did not compute (its own prefix cache plus the connector's loads);
* ``{"op": "stats"}`` -> the worker-side connector's counters (tokens and bytes loaded, ...);
* ``{"op": "quit"}``.

The engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so that the connector's
counters can be read here. Logs go to stderr; stdout carries only the protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any


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


def _stats() -> dict[str, int]:
    from vllm.distributed.kv_transfer import get_kv_transfer_group, has_kv_transfer_group

    if not has_kv_transfer_group():
        return {}
    worker = getattr(get_kv_transfer_group(), "worker", None)
    return dict(worker.stats) if worker is not None else {}


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
