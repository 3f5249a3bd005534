"""CacheBlend prefill over the layer loop (shared/PAPERS.md section 2).

Rows of the prompt are of three kinds: *exact* (an exact prefix hit; loaded, never computed),
*content* (loaded from a position-independent chunk, keys re-rotated; approximate) and
*uncached* (computed). With ``R`` = the non-exact rows:

1. layers < check_layer: compute every row of R, attend over all keys (exact rows loaded);
2. check layer: compute fresh K/V for R, score the content rows by ``||V_new - V_loaded||^2``
   (or K, after RoPE), keep S = uncached rows + the top ``ceil(r * n_content)`` content rows
   (+ the last row, whose logits we return); fresh K/V of all of R go into the buffer. With
   gradual filtering the kept share narrows 2r -> 1.5r -> r over the next layers. Selection
   "deviation_attention" (the default) multiplies each deviation by how much the question
   attends to the row at that layer, so the budget goes to rows that are both wrong and read;
   "deviation" is CacheBlend's ranking as published;
3. later layers: compute Q/K/V for S only, scatter their K/V into the loaded buffer, attend
   queries S over all N keys with an exact causal mask; the other rows' hidden states are
   dropped (their loaded K/V stand in for them), as in CacheBlend.

Invariants (tests/inference): r = 1 reproduces a full prefill; one chunk at position 0 with
r = 0 reproduces exact prefix reuse; the result does not depend on where a chunk was computed.
The kernels (kvstore_kernels: gather/scatter rows, deviation top-k, random selection) are
imported lazily so that importing this package costs nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from .errors import InferenceError
from .llama_layers import LlamaLayers
from .loader import LayerLoader

Selection = Literal["deviation", "deviation_attention", "random"]
QUERY_ROWS = 256  # uncached rows (from the end: the question) whose attention weighs deviation
Deviation = Literal["value", "key"]


@dataclass
class BlendStats:
    n_rows: int = 0
    exact_rows: int = 0
    content_rows: int = 0
    uncached_rows: int = 0
    selected_content_rows: int = 0
    recomputed_rows: int = 0  # |S|: rows computed in the layers after the check layer
    exact_until: int = 0       # rows [0, exact_until) have exact K/V in every layer


@dataclass
class BlendOutput:
    logits: torch.Tensor  # [vocab] fp32, last prompt position
    keys: list[torch.Tensor] = field(default_factory=list)    # per layer [1, Hkv, N, D]
    values: list[torch.Tensor] = field(default_factory=list)
    stats: BlendStats = field(default_factory=BlendStats)
    compute_s: float = 0.0
    wait_s: float = 0.0
    select_s: float = 0.0


def n_selected(ratio: float, n_content: int) -> int:
    """ceil(ratio * n_content), robust to float noise (0.15 * 100 is 15.000000000000002)."""
    return min(n_content, math.ceil(ratio * n_content - 1e-9))


def filter_schedule(ratio: float, check_layer: int, n_layers: int,
                    gradual: tuple[float, ...] = ()) -> dict[int, float]:
    """Layer -> share of the content rows kept from that layer on.

    Without ``gradual`` the selection happens once, at the check layer. CacheBlend's gradual
    filtering keeps ``ratio * m`` rows for each multiplier m (descending) from the check layer
    on, re-ranking the survivors by their deviation at each next layer, and reaches ``ratio``
    one layer after the last multiplier (sooner in a model too shallow for the schedule).
    """
    ratios = [min(1.0, ratio * m) for m in gradual][: max(0, n_layers - check_layer - 1)]
    return {check_layer + i: r for i, r in enumerate([*ratios, ratio])}


def blend_prefill(
    runner: LlamaLayers,
    token_ids: torch.Tensor,
    loader: LayerLoader,
    *,
    ratio: float,
    check_layer: int,
    gradual: tuple[float, ...] = (),
    selection: Selection = "deviation",
    deviation: Deviation = "value",
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> BlendOutput:
    from kvstore_kernels.rows import scatter_rows

    out = BlendOutput(logits=torch.empty(0))
    n = token_ids.numel()
    t_start = time.perf_counter()
    exact = _timed(out, loader.exact_mask)
    rows = (~exact).nonzero().squeeze(1)
    if rows.numel() == 0 or int(rows[-1]) != n - 1:
        raise InferenceError("the last prompt row must be computed (the planner keeps it uncached)")
    filters = filter_schedule(ratio, check_layer, runner.n_layers, gradual)
    last_filter = max(filters)
    content, n_content = None, 0
    h = runner.embed(token_ids[rows])
    cos, sin = runner.rope(rows, h)
    for layer in range(runner.n_layers):
        keys, values = _timed(out, lambda layer=layer: loader.layer(layer))
        q, k, v = runner.qkv(layer, h, (cos, sin))
        keep = None
        if layer in filters:
            if content is None:
                content = _timed(out, loader.content_mask)
                n_content = int(content[rows].sum())
            t0 = time.perf_counter()
            weight = (_query_attention(runner, layer, q, k, rows, content)
                      if selection == "deviation_attention" else None)
            keep = _select(rows, content, k, v, keys, values, n_selected(filters[layer], n_content),
                           selection, deviation, generator, backend, weight)
            out.select_s += time.perf_counter() - t0
            if layer == last_filter:
                _fill_stats(out.stats, n, exact, content, rows[keep])
        scatter_rows(keys, rows, k, backend=backend)
        scatter_rows(values, rows, v, backend=backend)
        if keep is not None:
            h, q, rows = h[:, keep], q[:, :, keep], rows[keep]
            cos, sin = cos[:, keep], sin[:, keep]
        attn = runner.attend(layer, q, keys, values, rows)
        h = runner.finish(layer, h, attn)
        out.keys.append(keys)
        out.values.append(values)
    out.logits = runner.logits(h[:, -1:])
    out.compute_s = time.perf_counter() - t_start - out.wait_s - out.select_s
    return out


def _select(
    rows: torch.Tensor, content: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    keys: torch.Tensor, values: torch.Tensor, top: int, selection: Selection,
    deviation: Deviation, generator: torch.Generator | None, backend: str,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Local indices (into ``rows``, ascending) of the rows to keep computing: every uncached
    row, the last row and the ``top`` content rows by deviation (times ``weight`` when given),
    or at random."""
    from kvstore_kernels.rows import gather_rows
    from kvstore_kernels.select import deviation_scores, deviation_topk, random_select

    candidates = content[rows]
    top = min(top, int(candidates.sum()))
    if top == 0:
        picked = rows.new_empty(0)
    elif selection == "random":
        picked = random_select(rows.numel(), top, candidates, generator)
    else:
        fresh, loaded = (v, values) if deviation == "value" else (k, keys)
        old = gather_rows(loaded, rows, backend=backend)
        if weight is None:
            picked, _ = deviation_topk(fresh, old, top, candidates=candidates, backend=backend)
        else:
            scores = deviation_scores(fresh, old, backend=backend) * weight
            ranked = scores.masked_fill(~candidates, float("-inf"))
            picked = torch.sort(torch.topk(ranked, top, sorted=False).indices).values
    keep = ~candidates
    keep[picked] = True
    keep[-1] = True
    return keep.nonzero().squeeze(1)


def _query_attention(
    runner: LlamaLayers, layer: int, q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor,
    content: torch.Tensor,
) -> torch.Tensor:
    """How much the last uncached rows (the question) attend to each row at this layer: the
    mean over heads and those queries of their causal softmax over the fresh keys, + 1e-4 so
    unattended rows still rank by deviation. [R] fp32."""
    uncached = (~content[rows]).nonzero().squeeze(1)[-QUERY_ROWS:]
    queries = q[:, :, uncached].float()
    keys = k.float().repeat_interleave(runner.groups, dim=1)
    logits = queries @ keys.transpose(-1, -2) * runner.layers[layer].self_attn.scaling
    visible = rows[None, :] <= rows[uncached][:, None]
    probs = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)
    return probs.mean(dim=(0, 1, 2)) + 1e-4


def _fill_stats(
    stats: BlendStats, n: int, exact: torch.Tensor, content: torch.Tensor, kept: torch.Tensor
) -> None:
    n_exact = int(exact.sum())
    n_content = int(content.sum())
    stats.n_rows = n
    stats.exact_rows = n_exact
    stats.content_rows = n_content
    stats.uncached_rows = n - n_exact - n_content
    stats.recomputed_rows = kept.numel()
    stats.selected_content_rows = int(content[kept].sum())
    loaded = content.nonzero()
    stats.exact_until = int(loaded[0]) if loaded.numel() else n


def _timed(out: BlendOutput, fn):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        out.wait_s += time.perf_counter() - t0
