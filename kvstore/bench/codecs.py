"""`kvstore bench codecs`: size, CPU speed and quality of every codec on real SmolLM2 KV.

For each prompt (pydoc help texts) the prefix is prefilled with SmolLM2-135M (fp32), its KV cut
into chunks of --chunk-tokens tokens, and each row's codec round-trips every chunk (cast to the
row's dtype, encode, decode). Reported per row, side by side in one run:
  - ratio: raw bytes in the row's dtype / payload bytes; vs_fp16: the same against fp16 bytes;
  - encode / decode throughput on this CPU in MB/s of decoded tensor (one chunk, median of reps);
  - prefix-reuse quality against the uncompressed fp32 cache (see codec_quality): first-token KL,
    teacher-forced top-1 agreement and mean KL over --gen-tokens greedy tokens.
Prints a table, then one JSON line with every number and the ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from kvstore.cli.model import add_model_dir_argument

LOSSLESS = ("identity", "shuffle-lz4")
LOSSY = ("fp8-e4m3", "kivi-int4", "kivi-int2")
# Extra rows: KIVI without its default key rotation, side by side with it (same bytes).
UNROTATED = {"key_rotation": "none"}
DTYPES = ("float16", "bfloat16", "float32")
QUICK = {"prompts": 2, "prefix_tokens": 128, "chunk_tokens": 64, "cont_tokens": 8,
         "gen_tokens": 8, "min_time_s": 0.05}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", type=int, default=16,
                   help="number of prompts (default 16: top-1 agreement over 512 positions has a "
                        "standard error of about 0.008 near 0.965)")
    p.add_argument("--prefix-tokens", type=int, default=512,
                   help="tokens of each prompt whose KV is cached and compressed (default 512)")
    p.add_argument("--chunk-tokens", type=int, default=256,
                   help="tokens per stored chunk; each chunk is encoded on its own (default 256)")
    p.add_argument("--cont-tokens", type=int, default=16,
                   help="prompt tokens processed on top of the reused prefix (default 16)")
    p.add_argument("--gen-tokens", type=int, default=32,
                   help="greedy tokens of the uncompressed run scored teacher-forced (default 32)")
    p.add_argument("--group-size", type=int, default=32, help="KIVI group size (default 32)")
    p.add_argument("--lossy-dtype", choices=DTYPES, default="float16",
                   help="dtype of the chunks the lossy codecs encode (default float16)")
    p.add_argument("--backend", choices=("auto", "torch", "triton"), default="auto",
                   help="kernel backend of the lossy codecs (default auto: torch on a CPU)")
    p.add_argument("--min-time-s", type=float, default=0.5,
                   help="time each throughput measurement at least this long (default 0.5)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared 2-core VM, two OpenMP threads "
                        "spin-waiting on a descheduled sibling ran 5-20x slower than one)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 2 short prompts, few tokens, short timings (< 60 s)")
    p.add_argument("--json-out", help="also write the results JSON here")
    add_model_dir_argument(p)


@dataclass
class Row:
    codec: str
    dtype: str
    params: dict[str, str] = field(default_factory=dict)  # on top of the codec's defaults
    payload_bytes: int = 0
    raw_bytes: int = 0
    fp16_bytes: int = 0
    tokens: int = 0
    encode_mbps: float = 0.0
    decode_mbps: float = 0.0
    quality: list[dict[str, float]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The codec, and the params that differ from its defaults (e.g. key_rotation=none)."""
        return self.codec + "".join(f" {k}={v}" for k, v in sorted(self.params.items()))

    @property
    def label(self) -> str:
        return f"{self.name}/{self.dtype}"

    def summary(self) -> dict[str, Any]:
        q = {k: statistics.fmean(p[k] for p in self.quality) for k in ("first_kl", "top1",
                                                                       "mean_kl")}
        positions = sum(p["positions"] for p in self.quality)
        return {
            "codec": self.codec, "params": self.params, "dtype": self.dtype,
            "payload_bytes": self.payload_bytes,
            "bytes_per_token": self.payload_bytes / self.tokens,
            "ratio": self.raw_bytes / self.payload_bytes,
            "ratio_vs_fp16": self.fp16_bytes / self.payload_bytes,
            "encode_MBps": self.encode_mbps, "decode_MBps": self.decode_mbps,
            "first_token_kl": q["first_kl"], "top1_agreement": q["top1"], "mean_kl": q["mean_kl"],
            # Binomial standard error over all scored positions (they are not independent, so
            # read it as a lower bound on the noise).
            "top1_stderr": math.sqrt(q["top1"] * (1 - q["top1"]) / positions),
        }


def run(args: argparse.Namespace) -> int:
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    from kvstore.bench import codec_quality as cq
    from kvstore_client.models import smollm2

    torch.manual_seed(0)
    model, tokenizer = smollm2.load(model_dir=args.model_dir)
    prompts = cq.load_prompts(tokenizer, args.prompts, args.prefix_tokens, args.cont_tokens)
    rows = ([Row(c, d) for c in LOSSLESS for d in DTYPES]
            + [Row(c, args.lossy_dtype) for c in LOSSY]
            + [Row(c, args.lossy_dtype, dict(UNROTATED)) for c in LOSSY if c.startswith("kivi")])
    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts):
        kv = cq.prefill_kv(model, prompt.prefix_ids)
        ref = cq.reference(model, kv, prompt.cont_ids, args.gen_tokens)
        for row in rows:
            decoded = cq.round_trip(kv, args.chunk_tokens, partial(_round_trip, row=row, args=args))
            row.quality.append(cq.compare(ref, cq.teacher_forced(model, decoded, prompt.cont_ids,
                                                                 ref.greedy_ids)))
        if i == 0:
            chunk = cq.split_chunks(kv, args.chunk_tokens)[0]
            for row in rows:
                _measure_speed(chunk, row, args)
    results = _results(rows, args, time.perf_counter() - t0)
    _print_table(results)
    line = json.dumps(results, sort_keys=True)
    print(line)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(line + "\n")
    return 0


def _round_trip(chunk: torch.Tensor, row: Row, args: argparse.Namespace) -> torch.Tensor:
    from kvstore import codecs

    x = chunk.to(getattr(torch, row.dtype))
    enc = codecs.encode(x, row.codec, backend=args.backend, **_params(row, args))
    row.payload_bytes += enc.nbytes
    row.raw_bytes += x.numel() * x.element_size()
    row.fp16_bytes += x.numel() * 2
    row.tokens += x.shape[3]
    return codecs.decode(enc.payload, enc.codec, enc.codec_params, enc.dtype, enc.shape,
                         backend=args.backend).float()


def _params(row: Row, args: argparse.Namespace) -> dict[str, Any]:
    kivi = {"group_size": args.group_size} if row.codec.startswith("kivi") else {}
    return {**kivi, **row.params}


def _measure_speed(chunk: torch.Tensor, row: Row, args: argparse.Namespace) -> None:
    from kvstore import codecs

    x = chunk.to(getattr(torch, row.dtype))
    params = _params(row, args)
    enc = codecs.encode(x, row.codec, backend=args.backend, **params)
    mb = x.numel() * x.element_size() / 1e6
    row.encode_mbps = mb / _median_time(
        lambda: codecs.encode(x, row.codec, backend=args.backend, **params), args.min_time_s)
    row.decode_mbps = mb / _median_time(
        lambda: codecs.decode(enc.payload, enc.codec, enc.codec_params, enc.dtype, enc.shape,
                              backend=args.backend), args.min_time_s)


def _median_time(fn: Callable[[], object], min_time_s: float) -> float:
    fn()  # warm up (first-call allocations, lazy imports)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_time_s:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _results(rows: list[Row], args: argparse.Namespace, wall_s: float) -> dict[str, Any]:
    summaries = [r.summary() for r in rows]
    by_label = {r.label: s for r, s in zip(rows, summaries, strict=True)}
    int4 = by_label[f"kivi-int4/{args.lossy_dtype}"]
    return {
        "bench": "codecs",
        "machine": (f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
                    f"{platform.python_version()}, torch {torch.__version__}, no GPU"
                    if not torch.cuda.is_available() else torch.cuda.get_device_name()),
        "config": {k: getattr(args, k) for k in (
            "prompts", "prefix_tokens", "chunk_tokens", "cont_tokens", "gen_tokens",
            "group_size", "lossy_dtype", "backend", "threads", "quick")},
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "rows": summaries,
        "ratios": {label: round(s["ratio"], 4) for label, s in by_label.items()},
        "ratios_vs_fp16": {label: round(s["ratio_vs_fp16"], 4) for label, s in by_label.items()},
        "targets": {
            "int4_ratio_vs_fp16_ge_3": int4["ratio_vs_fp16"] >= 3.0,
            "int4_top1_ge_0.97": int4["top1_agreement"] >= 0.97,
        },
        "wall_s": round(wall_s, 1),
    }


def _print_table(results: dict[str, Any]) -> None:
    head = (f"{'codec':<30} {'dtype':<9} {'B/token':>8} {'ratio':>6} {'vs_fp16':>7} "
            f"{'enc_MB/s':>9} {'dec_MB/s':>9} {'first_KL':>9} {'top1':>6} {'mean_KL':>9}")
    print(f"kvstore bench codecs: {results['machine']}; {results['config']}")
    print(head)
    print("-" * len(head))
    for r in results["rows"]:
        name = r["codec"] + "".join(f" {k}={v}" for k, v in sorted(r["params"].items()))
        print(f"{name:<30} {r['dtype']:<9} {r['bytes_per_token']:>8.0f} {r['ratio']:>6.2f} "
              f"{r['ratio_vs_fp16']:>7.2f} {r['encode_MBps']:>9.0f} {r['decode_MBps']:>9.0f} "
              f"{r['first_token_kl']:>9.2e} {r['top1_agreement']:>6.3f} {r['mean_kl']:>9.2e}")
