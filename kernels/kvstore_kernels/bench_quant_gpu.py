"""Throughput of the KV quantization kernels against device-to-device copy, on one chunk.

    python -m kvstore_kernels.bench_quant_gpu            # (PYTHONPATH=kernels if not installed)

The chunk is Llama-3-8B-shaped KV in bf16 (32 layers, 8 KV heads, head_dim 128): 512 tokens make
[32, 2, 8, 512, 128] = 64 MiB. In one run it times torch's copy of the chunk and, for fp8-e4m3,
kivi-int4 and kivi-int2 (KIVI with its default key rotation, and "norot" without), the Triton
quantize and dequantize kernels (CUDA events, median of
--reps after --warmup). Each kernel's bandwidth counts the bytes it reads plus the bytes it
writes, like the copy's (2 x 64 MiB); "share" is kernel GB/s / copy GB/s (the target is >= 50%).
Before timing, every kernel is checked against its plain-torch reference on the same data
(payload bytes, and decoding one payload both ways); a failed check marks the row FAIL.
Prints a table, then one JSON line; exits 1 if any row failed. Finishes in well under a minute on
an H100. `--device cpu` with TRITON_INTERPRET=1 and a tiny shape is a smoke test of the script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from kvstore_kernels import fp8, quant_kivi

MIB = 1 << 20


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m kvstore_kernels.bench_quant_gpu",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    p.add_argument("--group-size", type=int, default=32)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cuda")
    p.add_argument("--json-out", help="also write the JSON line here")
    p.add_argument("--profile-kernels", action="store_true",
                   help="also print each Triton kernel's own CUDA time (torch.profiler)")
    p.add_argument("--tune", action="store_true",
                   help="first sweep the kernels' launch shapes (tile size x warps), keep the "
                        "fastest per codec, then run the benchmark with them")
    return p.parse_args(argv)


def _timer(device: torch.device) -> Callable[[Callable[[], object], int, int], float]:
    """median seconds of fn over reps, after warmup calls."""

    def cuda_time(fn: Callable[[], object], reps: int, warmup: int) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)

    def cpu_time(fn: Callable[[], object], reps: int, warmup: int) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    return cuda_time if device.type == "cuda" else cpu_time


def stream_time(fn: Callable[[], object], reps: int, warmup: int, batch: int = 20) -> float:
    """median seconds per call of `batch` back-to-back calls with one sync at the end: the
    throughput of processing many chunks in a row, where the next call's host work overlaps the
    previous call's kernels."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(3, reps // batch)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(batch):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / batch)
    return statistics.median(times)


def graph_time(fn: Callable[[], object], reps: int, warmup: int) -> float:
    """median seconds of one replay of fn captured in a CUDA graph: the kernels' own time,
    without the Python launcher's host overhead (which eager timing of one call includes)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 2)):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _kv(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=g, device=device, dtype=torch.float32)
    x[:, 0, :, :, :4] *= 8  # keys have a few large channels
    return x.to(dtype)


def _codecs(bits_group: int):
    """name -> (quantize, dequantize(payload, shape, dtype), reference quantize, ref dequantize)"""
    g = bits_group
    return {
        "fp8-e4m3": (lambda x: fp8.fp8_quantize(x, backend="triton"),
                     lambda p, s, d: fp8.fp8_dequantize(p, s, d, backend="triton"),
                     fp8.fp8_quantize_ref, fp8.fp8_dequantize_ref),
        # "kivi-intN" rotates keys (the codec's default, hadamard.py); "norot" does not.
        **{f"kivi-int{b}{suffix}": (
            lambda x, b=b, r=r: quant_kivi.kivi_quantize(x, b, g, backend="triton",
                                                         rotate_keys=r),
            lambda p, s, d, b=b, r=r: quant_kivi.kivi_dequantize(p, s, b, g, d, backend="triton",
                                                                 rotate_keys=r),
            lambda x, b=b, r=r: quant_kivi.kivi_quantize_ref(x, b, g, rotate_keys=r),
            lambda p, s, d, b=b, r=r: quant_kivi.kivi_dequantize_ref(p, s, b, g, d,
                                                                     rotate_keys=r),
        ) for b in (4, 2) for r, suffix in ((True, ""), (False, " norot"))},
    }


def _check(x: torch.Tensor, quant, dequant, ref_quant, ref_dequant,
           terms: int = 1) -> tuple[bool, str]:
    """Kernel vs reference. Exact equality is not expected on a GPU: the compiler contracts
    multiply-adds into FMAs, so a code at a rounding boundary may differ by one step and a decoded
    value by one ulp. Allowed: <= 0.1% of payload bytes differ; decoded values within one ulp
    (near zero: fp32 ulps of the largest input times `terms`, the length of the rotation's sums,
    which tensor cores add in another order)."""
    payload, expected = quant(x), ref_quant(x)
    diff_bytes = (payload != expected).float().mean().item()
    out, ref_out = dequant(expected, x.shape, x.dtype), ref_dequant(expected, x.shape, x.dtype)
    # One ulp of the output dtype, plus fp32 ulps of the largest term for results near zero.
    ulp = (torch.finfo(x.dtype).eps * ref_out.float().abs()
           + 4 * terms * torch.finfo(torch.float32).eps * x.float().abs().max())
    bad_values = ((out.float() - ref_out.float()).abs() > ulp).float().mean().item()
    ok = diff_bytes <= 1e-3 and bad_values == 0.0
    return ok, (f"payload bytes differing {diff_bytes:.2e}, decoded values off by more than "
                f"one ulp {bad_values:.2e}")


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_quant_gpu: no CUDA device (use --device cpu with TRITON_INTERPRET=1 and a "
              "tiny shape for a smoke test)", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    shape = (args.layers, 2, args.kv_heads, args.tokens, args.head_dim)
    x = _kv(shape, dtype, device)
    nbytes = x.numel() * x.element_size()
    time_fn = _timer(device)
    dst = torch.empty_like(x)
    copy_s = time_fn(lambda: dst.copy_(x), args.reps, args.warmup)
    copy_gbps = 2 * nbytes / copy_s / 1e9
    tuned = _tune(x, args, time_fn) if args.tune else {}
    rows: list[dict[str, Any]] = [{"kernel": "copy", "time_us": copy_s * 1e6,
                                   "bytes_moved": 2 * nbytes, "GBps": copy_gbps,
                                   "share_of_copy": 1.0, "check": "ok",
                                   "graph_time_us": copy_s * 1e6, "graph_share_of_copy": 1.0,
                                   "stream_time_us": copy_s * 1e6, "stream_share_of_copy": 1.0}]
    failed = False
    for name, (quant, dequant, ref_quant, ref_dequant) in _codecs(args.group_size).items():
        try:
            rotated = name.startswith("kivi") and not name.endswith("norot")
            ok, detail = _check(x, quant, dequant, ref_quant, ref_dequant,
                                terms=x.shape[-1] if rotated else 1)
            payload = quant(x)
            cases = (("quantize", lambda q=quant: q(x), nbytes + payload.numel()),
                     ("dequantize", lambda d=dequant, p=payload: d(p, shape, dtype),
                      payload.numel() + nbytes))
            for op, fn, moved in cases:
                s = time_fn(fn, args.reps, args.warmup)
                gs = graph_time(fn, args.reps, args.warmup) if device.type == "cuda" else s
                ss = stream_time(fn, args.reps, args.warmup) if device.type == "cuda" else s
                rows.append({"kernel": f"{name} {op}", "time_us": s * 1e6, "bytes_moved": moved,
                             "GBps": moved / s / 1e9, "share_of_copy": moved / s / 1e9 / copy_gbps,
                             "graph_time_us": gs * 1e6, "stream_time_us": ss * 1e6,
                             "stream_share_of_copy": moved / ss / 1e9 / copy_gbps,
                             "graph_share_of_copy": moved / gs / 1e9 / copy_gbps,
                             "payload_bytes": payload.numel(), "check": "ok" if ok else "FAIL",
                             "check_detail": detail})
            failed |= not ok
        except Exception as e:  # a benchmark reports a broken kernel and carries on with the rest
            failed = True
            rows.append({"kernel": name, "check": "ERROR", "error": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc(limit=3)})
    if args.profile_kernels and device.type == "cuda":
        _profile_kernels(x, args.group_size)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    _print(rows, device_name, shape, args.dtype, nbytes)
    result = {"bench": "quant_gpu", "device": device_name, "shape": list(shape),
              "dtype": args.dtype, "chunk_MiB": nbytes / MIB, "group_size": args.group_size,
              "torch": torch.__version__, "rows": rows, "tuned": tuned,
              "launch": {"fp8": dict(fp8.LAUNCH), "kivi": dict(quant_kivi.LAUNCH)},
              "share_of_copy": {r["kernel"]: round(r["share_of_copy"], 3) for r in rows
                                if "share_of_copy" in r},
              "graph_share_of_copy": {r["kernel"]: round(r["graph_share_of_copy"], 3)
                                      for r in rows if "graph_share_of_copy" in r},
              "stream_share_of_copy": {r["kernel"]: round(r["stream_share_of_copy"], 3)
                                       for r in rows if "stream_share_of_copy" in r}}
    line = json.dumps(result, sort_keys=True)
    print(line)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(line + "\n")
    return 1 if failed else 0


def _profile_kernels(x: torch.Tensor, group_size: int) -> None:
    """CUDA time of each kernel inside the codecs' quantize/dequantize (keys vs values, ...)."""
    from torch.profiler import ProfilerActivity, profile

    for name, (quant, dequant, _, _) in _codecs(group_size).items():
        payload = quant(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                quant(x)
                dequant(payload, x.shape, x.dtype)
            torch.cuda.synchronize()
        print(f"-- {name}: CUDA time per call (10 calls)")
        for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total):
            if e.device_time_total > 0:
                print(f"   {e.key[:60]:<60} {e.device_time_total / e.count:9.1f} us x{e.count}")


TILES = (1024, 2048, 4096, 8192, 16384)
WARPS = (2, 4, 8)


def _tune(x: torch.Tensor, args: argparse.Namespace, time_fn) -> dict[str, Any]:
    """Sweep tile x warps (kernel time from CUDA-graph replays): fp8's one table, then KIVI's
    key kernels and value kernels separately (int4 + int2, quantize + dequantize); keep the
    fastest in the modules' LAUNCH; return the sweep."""
    shape, dtype, g = x.shape, x.dtype, args.group_size
    reps = max(10, args.reps // 2)
    sweep: dict[str, Any] = {"fp8": [], "kivi_keys": [], "kivi_values": []}

    def both(q, d) -> float:
        p = q()
        return graph_time(q, reps, 2) + graph_time(lambda: d(p), reps, 2)

    def kivi() -> float:
        return sum(both(lambda b=b: quant_kivi.kivi_quantize(x, b, g, backend="triton"),
                        lambda p, b=b: quant_kivi.kivi_dequantize(p, shape, b, g, dtype,
                                                                  backend="triton"))
                   for b in (4, 2))

    for tile in TILES:
        for warps in WARPS:
            fp8.LAUNCH.update(tile=tile, num_warps=warps)
            t = both(lambda: fp8.fp8_quantize(x, backend="triton"),
                     lambda p: fp8.fp8_dequantize(p, shape, dtype, backend="triton"))
            sweep["fp8"].append({"tile": tile, "num_warps": warps, "time_us": t * 1e6})
    best = min(sweep["fp8"], key=lambda r: r["time_us"])
    fp8.LAUNCH.update(tile=best["tile"], num_warps=best["num_warps"])
    for part in ("keys", "values"):
        for tile in TILES:
            for warps in WARPS:
                quant_kivi.LAUNCH.update({f"{part}_tile": tile, "num_warps": warps})
                sweep[f"kivi_{part}"].append({"tile": tile, "num_warps": warps,
                                              "time_us": kivi() * 1e6})
        best = min(sweep[f"kivi_{part}"], key=lambda r: r["time_us"])
        quant_kivi.LAUNCH.update({f"{part}_tile": best["tile"], "num_warps": best["num_warps"]})
    # Rotated keys take a whole group per program (no tile to choose): only the warps.
    # Rotated keys: groups per program ("tile" in the sweep's rows) x warps.
    sweep["kivi_rotated"] = []
    for groups in (1, 2, 4, 8):
        for warps in WARPS:
            quant_kivi.LAUNCH.update(rotate_num_warps=warps, rotate_groups=groups)
            t = sum(both(lambda b=b: quant_kivi.kivi_quantize(x, b, g, backend="triton",
                                                              rotate_keys=True),
                         lambda p, b=b: quant_kivi.kivi_dequantize(p, shape, b, g, dtype,
                                                                   backend="triton",
                                                                   rotate_keys=True))
                    for b in (4, 2))
            sweep["kivi_rotated"].append({"tile": groups, "num_warps": warps,
                                          "time_us": t * 1e6})
    best = min(sweep["kivi_rotated"], key=lambda r: r["time_us"])
    quant_kivi.LAUNCH.update(rotate_num_warps=best["num_warps"], rotate_groups=best["tile"])
    for name, rows in sweep.items():
        print(f"tune {name}: " + "  ".join(f"{r['tile']}/{r['num_warps']}w {r['time_us']:.0f}us"
                                            for r in rows), flush=True)
    print(f"tuned: fp8 {fp8.LAUNCH}, kivi {quant_kivi.LAUNCH}")
    return {"sweep": sweep, "fp8": dict(fp8.LAUNCH), "kivi": dict(quant_kivi.LAUNCH)}


def _print(rows: list[dict[str, Any]], device: str, shape: tuple[int, ...], dtype: str,
           nbytes: int) -> None:
    print(f"bench_quant_gpu on {device}: chunk {list(shape)} {dtype} = {nbytes / MIB:.1f} MiB")
    head = (f"{'kernel':<28} {'time_us':>9} {'MiB_moved':>10} {'GB/s':>8} {'share':>6} "
            f"{'graph_us':>9} {'g.share':>7} {'strm_us':>8} {'s.share':>7} check")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['kernel']:<28} {'-':>9} {'-':>10} {'-':>8} {'-':>6} ERROR {r['error']}")
            continue
        print(f"{r['kernel']:<28} {r['time_us']:>9.1f} {r['bytes_moved'] / MIB:>10.1f} "
              f"{r['GBps']:>8.1f} {r['share_of_copy']:>6.2f} {r['graph_time_us']:>9.1f} "
              f"{r['graph_share_of_copy']:>7.2f} {r['stream_time_us']:>8.1f} "
              f"{r['stream_share_of_copy']:>7.2f} {r['check']}")


if __name__ == "__main__":
    sys.exit(main())
