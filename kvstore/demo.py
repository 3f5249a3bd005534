"""`kvstore demo`: a local store node and a real model, and the time that cache hits save.

1. Start (or reuse) a store node: the embedded default, CPU and disk tiers under ./kvstore-data.
2. Load SmolLM2-135M-Instruct (CPU) and build a RAG-style prompt: a system prompt, three documents
   from Python's own reference manual (``pydoc_data.topics``, PSF License) and a question.
3. Ingest the documents: each is prefilled on its own and its KV stored under content keys.
4. Answer the prompt by full prefill (its KV goes back to the store in the background), then by
   prefix reuse (the chained chunks just stored), then the same documents in another order by
   blending (content chunks re-rotated, ~15% of tokens recomputed), and that order by full prefill
   as the reference. Print the TTFT of each and whether the answers agree.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kvstore import procs
from kvstore.cli.model import add_model_dir_argument

DEFAULT_ADDRESS = "127.0.0.1:50051"
TOPICS = ("while", "for", "try")  # documents of a few hundred tokens each
SYSTEM = ("You are a helpful assistant. Answer the question using the documentation excerpts "
          "below.\n\n")
QUESTION = "\n\nQuestion: Which statement repeats a block while a condition is true?\nAnswer:"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=DEFAULT_ADDRESS,
                   help="store node to use; one is started there if none answers")
    p.add_argument("--data-dir", default="./kvstore-data")
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--recompute-ratio", type=float, default=0.15)
    p.add_argument("--json-out", help="also write the results as JSON here")
    add_model_dir_argument(p)


def documents() -> list[str]:
    from pydoc_data.topics import topics

    return [f"Document: the {name} statement.\n{topics[name].strip()}\n" for name in TOPICS]


def _ensure_node(address: str, data_dir: str) -> procs.Proc | None:
    host, port = address.rsplit(":", 1)
    try:
        procs.wait_port(host, int(port), 0.5)
        print(f"using the store node at {address}")
        return None
    except TimeoutError:
        pass
    print(f"starting a store node at {address} (data dir {data_dir}) ...", flush=True)
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    return procs.start_node(data_dir, host=host, port=int(port), data_port=int(port) + 1)


def run(args: argparse.Namespace) -> int:
    from kvstore.keys import KeyScheme
    from kvstore_client import KVStoreClient
    from kvstore_client.inference import CacheEngine, EngineConfig, Segment
    from kvstore_client.models import smollm2

    node = _ensure_node(args.address, args.data_dir)
    try:
        smollm2.fetch(args.model_dir)  # a no-op once the file is there
        t0 = time.perf_counter()
        model, tokenizer = smollm2.load(model_dir=args.model_dir)
        print(f"loaded SmolLM2-135M-Instruct in {time.perf_counter() - t0:.1f} s", flush=True)
        scheme = KeyScheme(model_id=smollm2.MODEL_ID, kv_dtype="float16", chunk_tokens=256)
        docs = documents()
        with KVStoreClient(args.address, scheme) as store, \
                CacheEngine(model, tokenizer, store, scheme,
                            EngineConfig(recompute_ratio=args.recompute_ratio)) as engine:
            store.delete_many(_all_keys(engine, docs))  # start cold, so the demo shows misses
            prompt = [Segment.doc(SYSTEM), *map(Segment.doc, docs), Segment.query(QUESTION)]
            reordered = [prompt[0], prompt[3], prompt[1], prompt[2], prompt[4]]
            stored = engine.cache_segments(prompt[:-1])
            print(f"ingested {len(docs)} documents + system prompt: {stored} content chunks",
                  flush=True)
            rows = []
            full = _answer(engine, prompt, "full", args, rows, "cold: full prefill")
            engine.flush(60)  # the full prefill's chunks are now in the store
            _answer(engine, prompt, "prefix", args, rows, "same prompt: prefix reuse", full)
            ref = _answer(engine, reordered, "full", args, rows, "docs reordered: full prefill",
                          write_back=False)
            _answer(engine, reordered, "blend", args, rows, "docs reordered: blend", ref,
                    write_back=False)
            stats = store.stats()
        _print(rows, stats)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(rows, indent=1))
        print(json.dumps({"demo": "kvstore", "rows": [
            {k: r[k] for k in ("case", "mode", "ttft_s", "speedup", "agrees", "same_first_tokens")}
            for r in rows]}))
        return 0
    finally:
        if node is not None:
            node.stop()


def _all_keys(engine, docs) -> list[bytes]:  # noqa: ANN001 - demo helper
    from kvstore_client.inference import Segment

    keys: list[bytes] = []
    for order in (docs, [docs[2], docs[0], docs[1]]):
        layout = engine.layout([Segment.doc(SYSTEM), *map(Segment.doc, order),
                                Segment.query(QUESTION)])
        keys += [c.key for c in layout.prefix_chunks] + [c.key for c in layout.content_chunks]
    return keys


def _answer(engine, segments, mode, args, rows, case, reference=None,  # noqa: ANN001
            write_back=True) -> object:
    res = engine.generate(segments, max_new_tokens=args.new_tokens, mode=mode,
                          write_back=write_back)
    base = reference if reference is not None else res
    same = 0
    for a, b in zip(res.token_ids, base.token_ids, strict=False):
        if a != b:
            break
        same += 1
    rows.append({
        "case": case, "mode": res.mode, "prompt_tokens": res.hits.prompt_tokens,
        "reused_tokens": res.hits.exact_tokens + res.hits.content_tokens,
        "recomputed_tokens": res.hits.recomputed_tokens, "ttft_s": round(res.ttft_s, 3),
        "speedup": round(base.ttft_s / res.ttft_s, 2) if reference is not None else 1.0,
        "agrees": res.token_ids == base.token_ids, "same_first_tokens": same,
        "new_tokens": len(res.token_ids), "answer": res.text.strip().replace("\n", " ")[:60],
    })
    r = rows[-1]
    print(f"  {case:30s} TTFT {r['ttft_s']:6.3f} s  reused {r['reused_tokens']:5d}  "
          f"answer: {r['answer']!r}", flush=True)
    return res


def _print(rows: list[dict], stats: object) -> None:
    print()
    head = (f"{'case':30s} {'mode':6s} {'prompt':>6s} {'reused':>6s} {'recomp':>6s} "
            f"{'TTFT s':>7s} {'speedup':>7s} {'same tokens':>11s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['case']:30s} {r['mode']:6s} {r['prompt_tokens']:6d} {r['reused_tokens']:6d} "
              f"{r['recomputed_tokens']:6d} {r['ttft_s']:7.3f} {r['speedup']:6.2f}x "
              f"{r['same_first_tokens']:>6d} / {r['new_tokens']:<2d}")
    s = stats
    print(f"\nstore: {s.hits} hits, {s.misses} misses, {s.bytes_out / 1e6:.1f} MB served, "  # type: ignore[attr-defined]
          f"{s.bytes_in / 1e6:.1f} MB stored")  # type: ignore[attr-defined]
    print("'speedup': TTFT of the full prefill of the same prompt / this TTFT. 'same tokens': "
          "how many of the greedy answer's first tokens equal the full prefill's.")
