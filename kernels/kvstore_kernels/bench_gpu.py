"""GPU benchmark of the CacheBlend kernels: triton vs the torch reference, side by side.

    python -m kvstore_kernels.bench_gpu   # Llama-3-8B layer: B=1, H=8, T=16384, D=128, bf16

Times rerotate_keys, deviation_scores (the kernel alone), deviation_topk (kernel + torch.topk) and
scatter_rows on one layer's K/V, plus a device-to-device copy of the same tensor measured in the
same run. Achieved bandwidth counts the bytes each op must read and write; "% copy" compares it with
the copy's (read + write) bandwidth. Each timed call starts with a cold L2 (a 256 MiB buffer is
zeroed before it, outside the timed region): a 32 MiB layer would otherwise sit half in the H100's
50 MiB L2. scatter_rows moves only the selected rows (15% of T) and its time includes the idx
validation (one host sync), so it is latency-bound. Prints a table, then one JSON line.
Exit status 2 when no CUDA device is present.

Smoke run without a GPU (timings meaningless, checks the script's logic):
    TRITON_INTERPRET=1 python -m kvstore_kernels.bench_gpu --tokens 128 --iters 2 --warmup 1
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from kvstore_kernels._backend import interpreter_mode
from kvstore_kernels.rope import rerotate_keys, rope_inv_freq
from kvstore_kernels.rows import scatter_rows
from kvstore_kernels.select import deviation_scores, deviation_topk

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_FLUSH_BYTES = 256 << 20


@dataclass
class Row:
    op: str
    backend: str
    ms: float
    gbps: float
    pct_of_copy: float = 0.0
    speedup_vs_torch: float = 1.0
    # triton vs torch: max |difference| of the outputs; for deviation_topk the number of picks
    # that differ (near-ties may flip: the two sum in different orders). 0 on torch rows.
    diff: float = 0.0


class Timer:
    """Median wall time of fn() in ms, with warmups and a cold L2 before each timed call."""

    def __init__(self, device: torch.device, iters: int, warmup: int) -> None:
        self.device, self.iters, self.warmup = device, iters, warmup
        self.cuda = device.type == "cuda"
        self.flush_buf = torch.empty(_FLUSH_BYTES if self.cuda else 1, dtype=torch.int8,
                                     device=device)

    def __call__(self, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        self._sync()
        times = []
        for _ in range(self.iters):
            self.flush_buf.zero_()
            if self.cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def _gbps(nbytes: int, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9 if ms > 0 else float("nan")


def _pair(op: str, nbytes: int, timer: Timer, run: Callable[[str], torch.Tensor],
          compare: Callable[[torch.Tensor, torch.Tensor], float]) -> list[Row]:
    """Time run("triton") and run("torch"); compare their outputs once."""
    diff = compare(run("triton").clone(), run("torch").clone())
    ms = {b: timer(functools.partial(run, b)) for b in ("triton", "torch")}
    return [
        Row(op, "triton", ms["triton"], _gbps(nbytes, ms["triton"]),
            speedup_vs_torch=ms["torch"] / ms["triton"], diff=diff),
        Row(op, "torch", ms["torch"], _gbps(nbytes, ms["torch"])),
    ]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def run_bench(args: argparse.Namespace, device: torch.device) -> tuple[dict, list[Row]]:
    torch.manual_seed(0)
    dtype = DTYPES[args.dtype]
    B, H, T, D = 1, args.heads, args.tokens, args.head_dim
    timer = Timer(device, args.iters, args.warmup)
    k = torch.randn(B, H, T, D, device=device).to(dtype)
    other = (k.float() + 0.05 * torch.randn_like(k, dtype=torch.float32)).to(dtype)
    out = torch.empty_like(k)
    layer_bytes = k.numel() * k.element_size()

    copy_ms = timer(lambda: out.copy_(k))
    copy_gbps = _gbps(2 * layer_bytes, copy_ms)
    rows = [Row("copy (d2d)", "torch", copy_ms, copy_gbps)]

    # Chunk stored at positions 0..T-1, moved 4096 positions later: a typical CacheBlend load.
    delta = torch.full((T,), 4096, dtype=torch.int64, device=device)
    inv_freq = rope_inv_freq(D, theta=500000.0).to(device)
    rows += _pair("rerotate_keys", 2 * layer_bytes + delta.numel() * 8, timer,
                  lambda b: rerotate_keys(k, delta, inv_freq, "neox", out=out, backend=b),
                  _max_diff)

    n_select = math.ceil(0.15 * T)
    rows += _pair("deviation_scores", 2 * layer_bytes + T * 4, timer,
                  lambda b: deviation_scores(k, other, backend=b), _max_diff)
    rows += _pair("deviation_topk", 2 * layer_bytes + T * 4, timer,
                  lambda b: deviation_topk(k, other, n_select, backend=b)[0],
                  lambda a, b: float((a != b).sum().item()))  # count of differing picks

    idx = torch.randperm(T, device=device)[:n_select].sort().values
    recomputed = torch.randn(B, H, n_select, D, device=device).to(dtype)
    kvs = {"triton": k.clone(), "torch": k.clone()}  # separate buffers so the check means something
    rows += _pair("scatter_rows", 2 * recomputed.numel() * recomputed.element_size()
                  + idx.numel() * 8, timer,
                  lambda b: scatter_rows(kvs[b], idx, recomputed, backend=b), _max_diff)

    for row in rows:
        row.pct_of_copy = 100.0 * row.gbps / copy_gbps
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton": _triton_version(),
        "shape_bhtd": [B, H, T, D],
        "dtype": args.dtype,
        "layer_bytes": layer_bytes,
        "selected_tokens": n_select,
        "iters": args.iters,
        "copy_gbps": copy_gbps,
    }
    return meta, rows


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "missing"
    return triton.__version__


def print_table(meta: dict, rows: list[Row]) -> None:
    print(f"# {meta['device']}  torch {meta['torch']}  triton {meta['triton']}  "
          f"[B,H,T,D]={meta['shape_bhtd']} {meta['dtype']}  "
          f"layer {meta['layer_bytes'] / 2**20:.1f} MiB  select {meta['selected_tokens']}")
    header = f"{'op':<18}{'backend':<9}{'ms':>9}{'GB/s':>9}{'% copy':>8}{'x torch':>9}"
    print(header + f"{'diff':>11}")
    print("-" * (len(header) + 11))
    for r in rows:
        print(f"{r.op:<18}{r.backend:<9}{r.ms:>9.3f}{r.gbps:>9.0f}{r.pct_of_copy:>7.0f}%"
              f"{r.speedup_vs_torch:>8.2f}x{r.diff:>11.3g}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--heads", type=int, default=8, help="KV heads")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif interpreter_mode():
        device = torch.device("cpu")
    else:
        print("bench_gpu needs a CUDA device (or TRITON_INTERPRET=1 for a CPU smoke run)",
              file=sys.stderr)
        return 2
    meta, rows = run_bench(args, device)
    print_table(meta, rows)
    print(json.dumps({"bench": "kvstore_kernels.bench_gpu", **meta,
                      "results": [asdict(r) for r in rows]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
