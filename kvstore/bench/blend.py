"""``kvstore bench blend``: quality and TTFT of KV reuse with the real SmolLM2 on this CPU.

Methods, each against full prefill of the same prompt (same tokens):
  naive       reuse every cached document's KV re-rotated, recompute nothing but the question
              (r = 0, check layer 0);
  blend r=X   the engine's default: share r of the reused tokens recomputed after the check
              layer (layer 1, gradual 2r -> 1.5r -> r), ranked by K/V deviation weighted by the
              question's attention (selection="deviation_attention"), r in --ratios;
  cacheblend  the same budget ranked by deviation alone, as published (selection="deviation");
  random r=X  the same budget with tokens drawn at random (the control).

Corpus and prompts: see kvstore/bench/blend_corpus.py (Python's own documentation from
``pydoc_data.topics``, PSF License; 3-6 documents of 200-600 tokens plus a question; every third
prompt 2,500+ tokens). Each distinct document (and the system prompt) is cached on its own, at
position 0, before the prompts run; prompts place them in varied orders.

Metrics (means over prompts unless said otherwise):
  first-token KL   KL(full || method) of the first generated token's distribution;
  TF top-1 / TF KL teacher forcing over the (up to) 32 tokens full prefill generates greedily
                   (stopping after EOS): every method is fed those same tokens; top-1 agreement
                   with them (pooled over positions) and the mean KL per position;
  ROUGE-L          token-level LCS F1 of the method's own greedy tokens against full's
                   (informative only);
  TTFT             prefill + first token, store lookup and fetch included (in-memory store),
                   median over the prompts; speed-up = full's median / the method's median on
                   the 2,500+ token prompts.
The targets of the issue are checked at the end. Runs with --threads intra-op threads (default 1:
on a shared 2-core machine two OpenMP threads stall whenever another process holds a core).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvstore.cli.model import add_model_dir_argument

DEFAULT_OUT = Path("blend_smollm2.json")  # docs/results/ holds the committed run
LONG_PROMPT_TOKENS = 2500
TARGETS = {"tf_top1": 0.92, "kl_vs_naive": 0.25, "random_over_deviation": 2.0,
           "ttft_speedup_long": 3.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", type=int, default=36, help="number of prompts (>= 30)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 2 short prompts, 8 new tokens (< 90 s)")
    parser.add_argument("--ratios", default="0.05,0.15,0.3,1.0", help="blend recompute ratios")
    parser.add_argument("--random-ratio", type=float, default=0.15)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--kv-dtype", default="float16", choices=("float16", "bfloat16",
                                                                  "float32"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    add_model_dir_argument(parser)
    parser.add_argument("--demo", action="store_true",
                        help="one long RAG prompt answered by full prefill, prefix reuse and "
                             "blending: answers and TTFT")


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    setup = _setup(args)
    if args.demo:
        return _demo(setup, args)
    methods = _methods(args)
    from tqdm import tqdm

    results: dict[str, MethodResult] = {m.name: MethodResult() for m in methods}
    for prompt in tqdm(setup.prompts, desc="bench blend", unit="prompt", file=sys.stderr):
        _run_prompt(setup, prompt, methods, results, args.max_new_tokens)
    summary = _summarize(results, args, setup)
    _print_table(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({"bench": "blend", **summary["headline"], "results": str(args.out)}))
    return 0


# ---- setup -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    name: str
    kwargs: dict[str, Any]  # CacheEngine.prefill arguments


@dataclass
class MethodResult:
    first_kl: list[float] = field(default_factory=list)
    tf_top1_hits: int = 0
    tf_positions: int = 0
    tf_kl: list[float] = field(default_factory=list)
    rouge_l: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    ttft_long_s: list[float] = field(default_factory=list)
    recomputed_share: list[float] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)


@dataclass
class Setup:
    engine: Any
    tokenizer: Any
    prompts: list[Any]
    n_documents: int
    cache_s: float


def _methods(args: argparse.Namespace) -> list[Method]:
    methods = [Method("full", {"mode": "full"}),
               Method("naive", {"mode": "blend", "recompute_ratio": 0.0, "check_layer": 0})]
    for r in (float(x) for x in args.ratios.split(",")):
        methods.append(Method(f"blend r={r:g}", {"mode": "blend", "recompute_ratio": r}))
    methods.append(Method(f"cacheblend r={args.random_ratio:g}",
                          {"mode": "blend", "recompute_ratio": args.random_ratio,
                           "selection": "deviation"}))
    methods.append(Method(f"random r={args.random_ratio:g}",
                          {"mode": "blend", "recompute_ratio": args.random_ratio,
                           "selection": "random"}))
    return methods


def _setup(args: argparse.Namespace) -> Setup:
    from kvstore.bench.blend_corpus import build_documents, build_prompts
    from kvstore.keys import KeyScheme
    from kvstore_client.inference import CacheEngine, EngineConfig, InMemoryChunkStore, Segment
    from kvstore_client.models.smollm2 import MODEL_ID, load

    if not args.quick and args.prompts < 30:
        print(f"note: {args.prompts} prompts; the issue asks for at least 30", file=sys.stderr)
    model, tok = load(model_dir=args.model_dir)
    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])
    if args.quick:
        args.max_new_tokens = min(args.max_new_tokens, 8)
        docs = build_documents(count, 200, 300, seed=args.seed)
        prompts = build_prompts(docs, 2, seed=args.seed, pool_size=6, long_every=10**6)
    else:
        docs = build_documents(count, seed=args.seed)
        prompts = build_prompts(docs, args.prompts, seed=args.seed)
    if args.demo:  # the longest prompt only
        prompts = [max(prompts, key=lambda p: p.n_tokens_estimate)]
    scheme = KeyScheme(MODEL_ID, args.kv_dtype, "LKHTD", chunk_tokens=args.chunk_tokens)
    config = EngineConfig(kv_dtype=args.kv_dtype, write_back="none", seed=args.seed)
    engine = CacheEngine(model, tok, InMemoryChunkStore(), scheme, config)
    unique = {d.text: d for p in prompts for d in p.documents}
    t0 = time.perf_counter()
    engine.cache_segments([Segment.doc(prompts[0].system),
                           *(Segment.doc(t) for t in sorted(unique))])
    cache_s = time.perf_counter() - t0
    engine.prefill(_segments(prompts[0]), "full", write_back=False)  # warm-up
    return Setup(engine, tok, prompts, len(unique), cache_s)


def _segments(prompt: Any) -> list[Any]:
    from kvstore_client.inference import Segment

    return [Segment.doc(prompt.system), *(Segment.doc(d.text) for d in prompt.documents),
            Segment.query(prompt.question)]


# ---- one prompt ------------------------------------------------------------------------------

def _run_prompt(setup: Setup, prompt: Any, methods: list[Method],
                results: dict[str, MethodResult], max_new: int) -> None:
    import torch

    engine = setup.engine
    segments = _segments(prompt)
    reference: dict[str, Any] = {}
    for method in methods:
        t0 = time.perf_counter()
        pre = engine.prefill(segments, write_back=False, **method.kwargs)
        first = int(pre.logits.argmax())
        ttft = time.perf_counter() - t0
        n = pre.layout.n_tokens
        if method.name == "full":
            greedy = _greedy(engine, pre.cache, first, max_new)
            _truncate(pre.cache, n)
            reference = {"logits": pre.logits, "greedy": greedy}
        tf_logits = _teacher_force(engine, pre, reference["greedy"])
        _truncate(pre.cache, n)
        own = reference["greedy"] if method.name == "full" else _greedy(
            engine, pre.cache, first, max_new)
        if method.name == "full":
            reference["tf"] = tf_logits
        res = results[method.name]
        res.first_kl.append(_kl(reference["logits"], pre.logits))
        res.tf_top1_hits += int((tf_logits.argmax(-1) == torch.tensor(
            reference["greedy"])).sum())
        res.tf_positions += len(reference["greedy"])
        res.tf_kl.append(float(torch.tensor(
            [_kl(a, b) for a, b in zip(reference["tf"], tf_logits, strict=True)]).mean()))
        res.rouge_l.append(_rouge_l(reference["greedy"], own))
        res.ttft_s.append(ttft)
        if n >= LONG_PROMPT_TOKENS:
            res.ttft_long_s.append(ttft)
        res.recomputed_share.append(pre.hits.recomputed_tokens / n)
        for phase in ("fetch_s", "prepare_s", "rerotate_s", "recompute_s", "wait_s",
                      "select_s"):
            res.phases[phase] = res.phases.get(phase, 0.0) + getattr(pre.timings, phase)
        del pre


def _truncate(cache: Any, n: int) -> None:
    """Back to the prompt's n rows (crop(-k) removes k rows in every transformers 5.x)."""
    extra = cache.get_seq_length() - n
    if extra > 0:
        cache.crop(-extra)


def _greedy(engine: Any, cache: Any, first: int, max_new: int) -> list[int]:
    from kvstore_client.inference.prefix import greedy_decode

    return greedy_decode(engine.model, cache, first, max_new, engine.eos_ids, engine.device)


def _teacher_force(engine: Any, pre: Any, tokens: list[int]) -> Any:
    """Logits [len(tokens), vocab]: position 0 from the prefill, then one forward of
    tokens[:-1] on the method's cache."""
    import torch

    from kvstore_client.inference import hf_cache

    rows = [pre.logits[None]]
    if len(tokens) > 1:
        with torch.no_grad():
            ids = torch.tensor([tokens[:-1]], device=engine.device)
            out = hf_cache.forward(engine.model, pre.cache, input_ids=ids, use_cache=True)
        rows.append(out.logits[0].float())
    return torch.cat(rows)


def _kl(ref_logits: Any, logits: Any) -> float:
    import torch

    p = torch.log_softmax(ref_logits.float(), -1)
    q = torch.log_softmax(logits.float(), -1)
    return max(0.0, float((p.exp() * (p - q)).sum()))


def _rouge_l(ref: list[int], hyp: list[int]) -> float:
    if not ref or not hyp:
        return 0.0
    prev = [0] * (len(hyp) + 1)
    for a in ref:
        cur = [0]
        for j, b in enumerate(hyp):
            cur.append(prev[j] + 1 if a == b else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


# ---- report ----------------------------------------------------------------------------------

def _summarize(results: dict[str, MethodResult], args: argparse.Namespace,
               setup: Setup) -> dict[str, Any]:
    import torch

    rows: dict[str, dict[str, Any]] = {}
    full = results["full"]
    full_long = statistics.median(full.ttft_long_s) if full.ttft_long_s else None
    for name, res in results.items():
        n = len(res.ttft_s)
        long_med = statistics.median(res.ttft_long_s) if res.ttft_long_s else None
        rows[name] = {
            "first_token_kl": statistics.fmean(res.first_kl),
            "tf_top1": res.tf_top1_hits / max(1, res.tf_positions),
            "tf_kl": statistics.fmean(res.tf_kl),
            "rouge_l": statistics.fmean(res.rouge_l),
            "ttft_median_s": statistics.median(res.ttft_s),
            "ttft_long_median_s": long_med,
            "speedup_long": (full_long / long_med) if full_long and long_med else None,
            "recomputed_share": statistics.fmean(res.recomputed_share),
            "phases_mean_s": {k: v / n for k, v in res.phases.items()},
        }
    key, rnd = "blend r=0.15", f"random r={args.random_ratio:g}"
    headline: dict[str, Any] = {}
    if key in rows:
        b, nv = rows[key], rows["naive"]
        headline = {
            "tf_top1_r015": round(b["tf_top1"], 4),
            "tf_kl_r015_over_naive": round(b["tf_kl"] / max(nv["tf_kl"], 1e-12), 4),
            "first_kl_r015_over_naive": round(
                b["first_token_kl"] / max(nv["first_token_kl"], 1e-12), 4),
            "random_over_deviation_first_kl": round(
                rows[rnd]["first_token_kl"] / max(b["first_token_kl"], 1e-12), 3)
            if rnd in rows else None,
            "ttft_speedup_long_r015": round(b["speedup_long"], 3) if b["speedup_long"] else None,
        }
        plain = rows.get(f"cacheblend r={args.random_ratio:g}")
        if plain is not None:  # CacheBlend's own ranking, for comparison
            headline["cacheblend_tf_top1_r015"] = round(plain["tf_top1"], 4)
            headline["cacheblend_first_kl_r015_over_naive"] = round(
                plain["first_token_kl"] / max(nv["first_token_kl"], 1e-12), 4)
        headline["targets_met"] = {
            "tf_top1>=0.92": headline["tf_top1_r015"] >= TARGETS["tf_top1"],
            "tf_kl<=naive/4": headline["tf_kl_r015_over_naive"] <= TARGETS["kl_vs_naive"],
            "first_kl<=naive/4": headline["first_kl_r015_over_naive"] <= TARGETS["kl_vs_naive"],
            "random>=2x_deviation": (headline["random_over_deviation_first_kl"] or 0)
            >= TARGETS["random_over_deviation"],
            "ttft_long>=3x": (headline["ttft_speedup_long_r015"] or 0)
            >= TARGETS["ttft_speedup_long"],
        }
    lengths = [len(setup.engine.layout(_segments(p)).token_ids) for p in setup.prompts]
    return {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to fp32), CPU",
        "threads": torch.get_num_threads(), "kv_dtype": args.kv_dtype,
        "chunk_tokens": args.chunk_tokens, "prompts": len(setup.prompts),
        "long_prompts": sum(n >= LONG_PROMPT_TOKENS for n in lengths),
        "prompt_tokens": {"min": min(lengths), "median": statistics.median(lengths),
                          "max": max(lengths)},
        "documents_cached": setup.n_documents, "cache_documents_s": round(setup.cache_s, 2),
        "max_new_tokens": args.max_new_tokens, "methods": rows, "headline": headline,
    }


def _print_table(summary: dict[str, Any]) -> None:
    print(f"\nkvstore bench blend: {summary['model']}, {summary['threads']} thread(s), "
          f"{summary['prompts']} prompts ({summary['long_prompts']} of 2,500+ tokens; "
          f"{summary['prompt_tokens']}), KV {summary['kv_dtype']}")
    head = (f"{'method':<17}{'1st-tok KL':>11}{'TF top-1':>10}{'TF KL':>9}{'ROUGE-L':>9}"
            f"{'TTFT med':>10}{'TTFT 2.5K+':>12}{'speed-up':>10}{'recomp':>8}")
    print(head)
    print("-" * len(head))
    for name, r in summary["methods"].items():
        long = r["ttft_long_median_s"]
        speed = r["speedup_long"]
        print(f"{name:<17}{r['first_token_kl']:>11.4f}{r['tf_top1']:>10.3f}{r['tf_kl']:>9.4f}"
              f"{r['rouge_l']:>9.3f}{r['ttft_median_s']:>9.2f}s"
              f"{(f'{long:.2f}s' if long else '-'):>12}"
              f"{(f'{speed:.2f}x' if speed else '-'):>10}{r['recomputed_share']:>8.2f}")
    if summary["headline"]:
        print("\ntargets at r=0.15:", ", ".join(
            f"{k} {'MET' if v else 'MISSED'}" for k, v in summary["headline"][
                "targets_met"].items()))


# ---- demo ------------------------------------------------------------------------------------

def _demo(setup: Setup, args: argparse.Namespace) -> int:
    """The same RAG prompt three ways; prefix reuse after one request has written its chunks."""
    engine = setup.engine
    prompt = setup.prompts[0]
    segments = _segments(prompt)
    full = engine.generate(segments, args.max_new_tokens, mode="full", write_back=False)
    prefix_engine = _prefix_engine(engine, segments)
    prefix = prefix_engine.generate(segments, args.max_new_tokens, mode="prefix")
    blend = engine.generate(segments, args.max_new_tokens, mode="blend")
    print(f"\nprompt: {full.hits.prompt_tokens} tokens, {len(prompt.documents)} documents "
          f"(each cached on its own), question: {prompt.question.splitlines()[0]}")
    for name, r in (("full prefill", full), ("prefix reuse", prefix), ("blend r=0.15", blend)):
        agree = "same answer" if r.token_ids == full.token_ids else "differs"
        print(f"\n[{name}] TTFT {r.ttft_s:.2f}s ({full.ttft_s / r.ttft_s:.1f}x), "
              f"reused {r.hits.exact_tokens + r.hits.content_tokens} tokens, {agree}\n"
              f"  {r.text.strip()}")
    print(json.dumps({"demo": "blend", **{n: {"ttft_s": round(r.ttft_s, 3),
                                               "same_as_full": r.token_ids == full.token_ids}
                                           for n, r in (("full", full), ("prefix", prefix),
                                                        ("blend", blend))}}))
    return 0


def _prefix_engine(engine: Any, segments: list[Any]) -> Any:
    """An engine on a fresh store holding the prompt's chained chunks (written by one request)."""
    from kvstore_client.inference import CacheEngine, InMemoryChunkStore

    store = InMemoryChunkStore()
    config = engine.config.with_overrides(write_back="prefix")
    warm = CacheEngine(engine.model, engine.tokenizer, store, engine.scheme, config)
    warm.prefill(segments, "full")
    warm.flush()
    return warm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvstore bench blend", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
