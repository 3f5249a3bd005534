"""GPU benchmark: TTFT of full prefill vs prefix hit vs CacheBlend (r=0.15) at 4K and 16K tokens.

Model: a LlamaForCausalLM of Llama-3-8B's shape (hidden 4096, 32 heads, 8 KV heads, head_dim
128, MLP 14336, vocab 128256, rope_theta 500000, default RoPE) with random bf16 weights, built
on the GPU (no weights exist on the lent machine; speed depends on the shape, not the values).
``--layers`` scales the depth (default 32 = the real model); say so when quoting numbers.

Prompt per context: a 128-token system segment, 6+ documents of random token ids (4K: 7 x 540,
16K: 8 x 2000) and a 64-token question. Documents are cached on their own (content keys, at
position 0); the prefix-hit case first runs one full request that writes the prompt's chained
chunks back, then reuses them.

KV is served from a chunk store: ``--store-address host:port`` uses a running kvstore node
through the sync KVStoreClient; otherwise an InMemoryChunkStore over pinned CPU memory (a CPU
tier without the network). Chunks are bf16 [L, 2, 8, 256, 128] = 4 MiB per chunk at 32 layers.

Each TTFT is the median of --repeats runs after one warm-up, with torch.cuda.synchronize()
around it; per-phase times are host-side (the loader's copies and re-rotation run on their own
CUDA stream). Prints a table and a final JSON line, writes JSON to --out (default
$OUT/blend_gpu.json when $OUT is set). Target: < 4 minutes on one H100 for both contexts.

CPU smoke test of the same code path (tiny model, seconds): ``--smoke``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

LLAMA3_8B: dict[str, Any] = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                 num_key_value_heads=8, head_dim=128, vocab_size=128256, rope_theta=500000.0,
                 rms_norm_eps=1e-5, max_position_embeddings=32768)
SMOKE: dict[str, Any] = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=16, vocab_size=512,
                             rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=4096)
CONTEXTS = {4096: (7, 540), 16384: (8, 2000)}  # tokens -> (documents, tokens per document)
SMOKE_CONTEXTS = {600: (6, 80)}
SYSTEM_TOKENS, QUESTION_TOKENS = 128, 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=int, default=32, help="decoder layers (8B: 32)")
    parser.add_argument("--contexts", default="4096,16384", help="comma-separated, of "
                        f"{sorted(CONTEXTS)}")
    parser.add_argument("--ratio", type=float, default=0.15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--store-address", default=None,
                        help="host:port of a running kvstore node (default: in-memory store "
                             "over pinned CPU memory)")
    parser.add_argument("--wire-codecs", default="identity",
                        help="comma-separated codecs the chunks are put with, one pass each: "
                             "identity (bf16 on the wire), fp8-e4m3, kivi-int4 (decoded on the "
                             "GPU after the transfer); full prefill is run once per context")
    parser.add_argument("--max-connections", type=int, default=8,
                        help="data-plane connections per node (--store-address only)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--profile", action="store_true",
                        help="after timing, profile one prefix-hit and one blend prefill per "
                             "context with torch.profiler (top ops printed; traces under --out's "
                             "folder)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model on the CPU: checks the code path in seconds")


def run(args: argparse.Namespace) -> int:
    import torch

    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("blend_gpu: no CUDA device (use --smoke to test the code path on CPU)",
              file=sys.stderr)
        return 2
    contexts = SMOKE_CONTEXTS if args.smoke else {
        int(c): CONTEXTS[int(c)] for c in args.contexts.split(",")}
    t0 = time.perf_counter()
    model = _build_model(args, device)
    build_s = time.perf_counter() - t0
    args.layers = model.config.num_hidden_layers
    rows = []
    codecs = [c.strip() for c in args.wire_codecs.split(",") if c.strip()]
    for n_tokens, (n_docs, doc_tokens) in contexts.items():
        full_ms = None
        for codec in codecs:
            new = _bench_context(model, args, device, n_tokens, n_docs, doc_tokens, codec,
                                 full_ms)
            full_ms = full_ms or new[0]["ttft_ms"]
            rows.extend(new)
            _print_table(rows, args, device, build_s)
    result = {"bench": "blend_gpu", "device": _device_name(device), "layers": args.layers,
              "model_build_s": round(build_s, 1), "store": args.store_address or
              "in-memory (pinned CPU)", "rows": rows, "total_s": round(time.perf_counter() - t0,
                                                                        1)}
    out = args.out or (Path(os.environ["OUT"]) / "blend_gpu.json" if os.environ.get("OUT")
                       else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


def _build_model(args: argparse.Namespace, device: Any) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = SMOKE if args.smoke else LLAMA3_8B
    layers = 2 if args.smoke else args.layers
    config = LlamaConfig(num_hidden_layers=layers, tie_word_embeddings=False, **shape)
    config._attn_implementation = "sdpa"
    dtype = torch.float32 if args.smoke else torch.bfloat16
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    # No model.to(dtype): parameters are already in dtype, and a cast would also round the fp32
    # rotary inv_freq buffer.
    return model.eval()


def _store(args: argparse.Namespace, scheme: Any, device: Any, codec: str) -> Any:
    from kvstore_client.inference import InMemoryChunkStore

    if args.store_address:
        from kvstore_client import KVStoreClient

        client = KVStoreClient(args.store_address, scheme, max_connections=args.max_connections)
        return client if codec == "identity" else _CodecStore(client, codec)
    if codec != "identity":
        raise SystemExit("--wire-codecs other than identity need --store-address")
    return InMemoryChunkStore(pin_memory=device.type == "cuda")


class _CodecStore:
    """A KVStoreClient whose puts encode with ``codec`` (only the encoded bytes cross the wire);
    gets decode on the device they are asked for (get_many(device=...))."""

    def __init__(self, client: Any, codec: str) -> None:
        self._client, self.codec = client, codec

    def put_many(self, keys: Any, tensors: Any, **kw: Any) -> list[bool]:
        return self._client.put_many(keys, tensors, codec=self.codec, **kw)

    def get_many(self, keys: Any, **kw: Any) -> Any:
        return self._client.get_many(keys, **kw)

    def lookup(self, keys: Any, **kw: Any) -> Any:
        return self._client.lookup(keys, **kw)

    def close(self) -> None:
        self._client.close()


def _prompt(n_docs: int, doc_tokens: int, vocab: int, seed: int) -> list[Any]:
    import torch

    from kvstore_client.inference import Segment

    gen = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(10, vocab, (n,), generator=gen).tolist()

    return [Segment.tokens(ids(SYSTEM_TOKENS)),
            *(Segment.tokens(ids(doc_tokens)) for _ in range(n_docs)),
            Segment.tokens(ids(QUESTION_TOKENS), cacheable=False)]


def _bench_context(model: Any, args: argparse.Namespace, device: Any, n_tokens: int,
                   n_docs: int, doc_tokens: int, codec: str = "identity",
                   full_ms: float | None = None) -> list[dict[str, Any]]:
    """Rows of one context with chunks put in ``codec``; ``full_ms`` given = full prefill was
    measured already (with another codec): only the reuse cases run, against that figure."""
    from kvstore.keys import KeyScheme
    from kvstore_client.inference import CacheEngine, EngineConfig

    kv_dtype = "float32" if args.smoke else "bfloat16"
    # one model id per codec: the same keys must not hit chunks put with another codec
    model_id = f"random-llama3-8b-shape-{args.layers}L" + ("" if codec == "identity"
                                                           else f"-{codec}")
    scheme = KeyScheme(model_id, kv_dtype, "LKHTD", chunk_tokens=args.chunk_tokens)
    store = _store(args, scheme, device, codec)
    prompt = _prompt(n_docs, doc_tokens, model.config.vocab_size, seed=n_tokens)
    config = EngineConfig(kv_dtype=kv_dtype, write_back="none", fetch_timeout_s=60.0,
                          recompute_ratio=args.ratio)
    engine = CacheEngine(model, None, store, scheme, config)
    writer = CacheEngine(model, None, store, scheme, config.with_overrides(write_back="prefix"))
    t0 = time.perf_counter()
    engine.cache_segments(prompt)  # documents on their own: content keys at position 0
    writer.prefill(prompt, "full")  # one request writes the chained chunks back
    writer.flush()
    ingest_s = time.perf_counter() - t0
    cases: list[tuple[str, Any, dict[str, Any]]] = [
        ("full prefill", "full", {}), ("prefix hit", "prefix", {}),
        (f"blend r={args.ratio:g}", "blend", {}),
        ("naive reuse", "blend", {"recompute_ratio": 0.0, "check_layer": 0})]
    if full_ms is not None:
        cases = cases[1:3]
    rows = []
    for name, mode, kw in cases:
        times, last = [], None
        for i in range(args.repeats + 1):
            _sync(device)
            t = time.perf_counter()
            last = engine.prefill(prompt, mode, write_back=False, **kw)
            int(last.logits.argmax())  # the first token: a host sync, like a server would
            _sync(device)
            if i:  # the first run is the warm-up
                times.append(time.perf_counter() - t)
            del last.cache
        assert last is not None
        ms = 1e3 * statistics.median(times)
        full_ms = full_ms or ms
        tm = last.timings
        rows.append({
            "context": last.layout.n_tokens, "method": name, "wire": codec,
            "ttft_ms": round(ms, 1),
            "speedup": round(full_ms / ms, 2),
            "reused_tokens": last.hits.exact_tokens + last.hits.content_tokens,
            "recomputed_tokens": last.hits.recomputed_tokens,
            "fetch_ms": round(1e3 * tm.fetch_s, 1), "rerotate_ms": round(1e3 * tm.rerotate_s, 1),
            "wait_ms": round(1e3 * tm.wait_s, 1), "ingest_s": round(ingest_s, 1),
            "phases_ms": {k: round(1e3 * v, 2) for k, v in vars(tm).items()},
        })
    if args.profile:
        _profile(engine, prompt, args, device, n_tokens)
    engine.close()
    writer.close()
    if hasattr(store, "close"):
        store.close()
    return rows


def _profile(engine: Any, prompt: list[Any], args: argparse.Namespace, device: Any,
             n_tokens: int) -> None:
    """torch.profiler over one prefill per reuse path: where the time between the fetch and the
    first token goes (ops sorted by self CPU time and by self CUDA time)."""
    from torch.profiler import ProfilerActivity, profile

    folder = (args.out.parent if args.out else Path(os.environ.get("OUT", ".")))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    for mode in ("prefix", "blend"):
        _sync(device)
        with profile(activities=activities, record_shapes=False) as prof:
            res = engine.prefill(prompt, mode, write_back=False)
            int(res.logits.argmax())
            _sync(device)
        del res
        print(f"\n== profile: {mode} at {n_tokens} tokens")
        for key in ("self_cpu_time_total",) + (("self_cuda_time_total",)
                                               if device.type == "cuda" else ()):
            print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))
        folder.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(folder / f"trace_{mode}_{n_tokens}.json"))


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: Any) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)"


def _print_table(rows: list[dict[str, Any]], args: argparse.Namespace, device: Any,
                 build_s: float) -> None:
    print(f"\nblend_gpu on {_device_name(device)}: Llama-3-8B shape, {args.layers} layers, "
          f"random bf16 weights (built in {build_s:.0f}s); store: "
          f"{args.store_address or 'in-memory, pinned CPU'}")
    head = (f"{'context':>8} {'wire':<10} {'method':<16}{'TTFT ms':>9}{'speed-up':>10}{'reused':>8}"
            f"{'recomp':>8}{'fetch ms':>10}{'rerot ms':>10}{'wait ms':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['context']:>8} {r.get('wire', 'identity'):<10} {r['method']:<16}"
              f"{r['ttft_ms']:>9.1f}{r['speedup']:>9.2f}x"
              f"{r['reused_tokens']:>8}{r['recomputed_tokens']:>8}{r['fetch_ms']:>10.1f}"
              f"{r['rerotate_ms']:>10.1f}{r['wait_ms']:>9.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvstore.bench.blend_gpu",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
