"""``kvstore bench vllm``: time to first token of real vLLM (SmolLM2, CPU) with and without a
kvstore hit, each in a fresh vLLM process.

Runs in the vLLM environment (``.venv-vllm/bin/kvstore bench vllm``; scripts/setup_vllm.sh).
One kvstore node on loopback; the same prompts (Python's own documentation, ``pydoc_data``, cut
to --prompt-tokens tokens, 2K+ by default) in three fresh vLLM processes: ``cold`` first, then
``prefill`` and ``hit`` side by side, asked in turns (prompt 1 to prefill, prompt 1 to hit,
prompt 2 ...), so that both see the same load on a shared machine:

  prefill   no connector: vLLM computes every prompt token (the baseline);
  cold      KVStoreConnector, empty store: a miss, vLLM prefills and saves the chunks;
  hit       KVStoreConnector, a fresh process: the prompt's full 256-token chunks load from
            the store, vLLM computes only the rest.

Each process first answers one warm-up prompt (same length, not measured; in ``hit`` it is a
hit too, so the load path is warm). TTFT = wall time of a greedy request for one new token,
one request at a time; the table shows the median over --prompts prompts, the tokens loaded per
prompt and the bytes moved; the connector's own counters split the hit's time into the
batched get (fetch), the wait of the first layer for it, and the copy into vLLM's blocks
(scatter). The hit's greedy first token must equal prefill's (checked). Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from kvstore import procs

TARGET_SPEEDUP = 3.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    from kvstore.cli.model import add_model_dir_argument

    add_model_dir_argument(p)
    p.add_argument("--prompts", type=int, default=5, help="measured prompts per process")
    p.add_argument("--prompt-tokens", type=int, default=2200,
                   help="tokens per prompt (the full 256-token chunks are what can hit)")
    p.add_argument("--shared-memory", action="store_true",
                   help="the node keeps its CPU tier in /dev/shm: loads copy out of it")
    p.add_argument("--keep-logs", default="", metavar="DIR",
                   help="write the node and engine logs there (default: a temporary dir)")


def make_prompts(tokenizer: Any, count: int, n_tokens: int) -> list[list[int]]:
    """``count`` distinct prompts of exactly ``n_tokens`` tokens of real English text."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    out: list[list[int]] = []
    for i in range(count):
        ids: list[int] = []
        j = i * 7
        while len(ids) < n_tokens:
            ids += tokenizer.encode(topics[names[j % len(names)]], add_special_tokens=False)
            j += 1
        out.append(ids[:n_tokens])
    return out


class _Phase:
    """One fresh vLLM process and what it measured."""

    def __init__(self, name: str, model: Path, logs: Path, kv_config: str,
                 warmup: list[int]) -> None:
        from kvstore_client.vllm.runner import EngineProcess

        self.name = name
        self.engine = EngineProcess(name, model, logs / f"engine-{name}.log", kv_config)
        self.engine.generate(warmup, max_tokens=1)
        self.before = self.engine.stats()
        self.outs: list[dict[str, Any]] = []

    def ask(self, prompt: list[int]) -> None:
        self.outs.append(self.engine.generate(prompt, max_tokens=1))

    def finish(self) -> dict[str, Any]:
        after = self.engine.stats()
        self.engine.close()
        n = len(self.outs)

        def delta(key: str) -> float:
            return (after.get(key, 0) - self.before.get(key, 0)) / n
        ttft = [o["wall_s"] for o in self.outs]
        return {"mode": self.name, "start_s": self.engine.start_s, "ttft_s": ttft,
                "ttft_median_ms": statistics.median(ttft) * 1e3,
                "cached": [o["cached"] for o in self.outs],
                "tokens_loaded": delta("tokens_loaded"), "bytes_loaded": delta("bytes_loaded"),
                "bytes_saved": delta("bytes_saved"), "fetch_ms": delta("load_fetch_s") * 1e3,
                "wait_ms": delta("load_wait_s") * 1e3,
                "scatter_ms": delta("load_scatter_s") * 1e3,
                "first_tokens": [o["tokens"][0] for o in self.outs],
                "scheme": after.get("scheme")}


def _wait_saved(address: str, scheme: dict[str, Any], prompts: list[list[int]]) -> None:
    from kvstore.keys import KeyScheme, prefix_keys
    from kvstore_client import KVStoreClient

    ks = KeyScheme(**scheme)
    keys = [k for p in prompts for k in prefix_keys(ks, p)]
    with KVStoreClient(address, ks) as store:
        procs.wait_for(lambda: all(store.lookup(keys).found), 120, "the cold run's saves")


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from kvstore_client.models.smollm2_hf import hf_path
    from kvstore_client.vllm.runner import kv_transfer_config

    model = hf_path(args.model_dir)
    prompts = make_prompts(AutoTokenizer.from_pretrained(str(model)), args.prompts + 1,
                           args.prompt_tokens)
    with tempfile.TemporaryDirectory(prefix="kvstore-bench-vllm-") as tmp:
        logs = Path(args.keep_logs or tmp)
        logs.mkdir(parents=True, exist_ok=True)
        extra = ["--shared-memory"] if args.shared_memory else []
        node = procs.start_node(f"{tmp}/node", extra, log_path=str(logs / "node.log"))
        try:
            kv = kv_transfer_config(address=node.address)
            t0 = time.perf_counter()
            cold = _Phase("cold", model, logs, kv, prompts[0])
            for p in prompts[1:]:
                cold.ask(p)
            cold_row = cold.finish()
            _wait_saved(node.address, cold_row["scheme"], prompts)
            # prefill and hit alive together, asked in turns: both see the same machine load
            prefill = _Phase("prefill", model, logs, "", prompts[0])
            hit = _Phase("hit", model, logs, kv, prompts[0])
            for p in prompts[1:]:
                prefill.ask(p)
                hit.ask(p)
            rows = [prefill.finish(), cold_row, hit.finish()]
            wall = time.perf_counter() - t0
        finally:
            node.stop()
    return _report(rows, args, wall)


def _report(rows: list[dict[str, Any]], args: argparse.Namespace, wall_s: float) -> int:
    base = rows[0]["ttft_median_ms"]
    print(f"vLLM {args.prompt_tokens}-token prompts, {args.prompts} per fresh process "
          f"(SmolLM2-135M fp32, CPU), node on loopback{' (shared memory)' * args.shared_memory}")
    print(f"{'mode':8} {'TTFT p50 ms':>12} {'min':>8} {'max':>8} {'loaded tok':>11} "
          f"{'MB in':>7} {'MB out':>7} {'fetch ms':>9} {'wait ms':>8} {'scatter ms':>10} "
          f"{'speed-up':>9}")
    for r in rows:
        t = [x * 1e3 for x in r["ttft_s"]]
        print(f"{r['mode']:8} {r['ttft_median_ms']:12.1f} {min(t):8.1f} {max(t):8.1f} "
              f"{r['tokens_loaded']:11.0f} {r['bytes_loaded'] / 1e6:7.1f} "
              f"{r['bytes_saved'] / 1e6:7.1f} {r['fetch_ms']:9.1f} {r['wait_ms']:8.1f} "
              f"{r['scatter_ms']:10.1f} {base / r['ttft_median_ms']:8.2f}x")
    hit = rows[2]
    speedup = base / hit["ttft_median_ms"]
    same = hit["first_tokens"] == rows[0]["first_tokens"]
    paired = statistics.median(p / h for p, h in zip(rows[0]["ttft_s"], hit["ttft_s"],
                                                      strict=True))
    print(f"hit vs prefill: {speedup:.2f}x lower median TTFT, {paired:.2f}x median per prompt "
          f"(target >= {TARGET_SPEEDUP}x: {'met' if speedup >= TARGET_SPEEDUP else 'NOT met'}); "
          f"first tokens equal: {same}")
    summary = {"bench": "vllm", "prompt_tokens": args.prompt_tokens, "prompts": args.prompts,
               "shared_memory": bool(args.shared_memory), "wall_s": round(wall_s, 1),
               "speedup_hit_vs_prefill": round(speedup, 3),
               "speedup_paired_median": round(paired, 3), "first_tokens_equal": same,
               "target_speedup": TARGET_SPEEDUP,
               "rows": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                         if k not in ("ttft_s", "first_tokens", "scheme")} for r in rows]}
    print(json.dumps(summary))
    return 0 if same else 1
