"""CacheEngine: the worker-side API. Segments in; cached KV looked up, fetched, reused; text out.

    engine = CacheEngine(model, tokenizer, store, scheme)
    result = engine.generate([Segment.doc(system), Segment.doc(doc1), Segment.query(q)])

One request: tokenize segments -> layout (chunk keys) -> one lookup -> choose the path ->
prefill -> first token (TTFT) -> background write-back of new chunks -> greedy decode.

Paths (``mode``): "full" ignores the store; "prefix" reuses the longest run of chained-key hits
exactly (HF forward on the rest; any HF decoder); "blend" also reuses content-key hits at other
positions with CacheBlend (Llama with default RoPE only: BlendUnsupported otherwise); "auto"
blends when content hits exist and blending is supported, else reuses the prefix.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from kvstore.keys import KeyScheme

from .blend import blend_prefill
from .config import EngineConfig
from .errors import BlendUnsupported, ConfigError
from .kvcache import reserved_cache
from .llama_layers import PAIRING, LlamaLayers, blend_unsupported_reason, kv_geometry
from .loader import ChunkFetch, FetchStats, LayerLoader
from .plan import LoadPlan, plan_loads
from .prefix import (
    DECODE_HEADROOM_ROWS,
    cache_from_chunks,
    forward_rest,
    greedy_decode,
    prefix_prefill,
    standalone_prefill,
)
from .segments import PromptLayout, Segment, build_layout, tokenize
from .store import LAYOUT, ChunkStore, chunk_shape
from .writeback import ChunkWrite, WriteBack, pack_chunks

Mode = Literal["auto", "full", "prefix", "blend"]


@dataclass
class Timings:
    lookup_s: float = 0.0
    fetch_s: float = 0.0      # waiting on the store (loader thread, or inline on the prefix path)
    prepare_s: float = 0.0    # slicing/copying loaded KV into layer buffers (loader thread)
    rerotate_s: float = 0.0   # RoPE re-rotation of loaded keys (loader thread)
    recompute_s: float = 0.0  # model compute on the request thread
    select_s: float = 0.0
    wait_s: float = 0.0       # request thread blocked on the loader (un-hidden loading)
    prefill_s: float = 0.0
    decode_s: float = 0.0


@dataclass
class HitStats:
    prompt_tokens: int = 0
    exact_tokens: int = 0       # reused from chained (prefix) chunks
    content_tokens: int = 0     # reused from content chunks (blended)
    recomputed_tokens: int = 0  # rows computed in the layers after the check layer (or all)
    fetch: FetchStats = field(default_factory=FetchStats)
    lookup_error: str | None = None


@dataclass
class PrefillResult:
    mode: str
    layout: PromptLayout
    logits: torch.Tensor  # [vocab] fp32 at the last prompt position
    cache: Any            # DynamicCache of all prompt rows
    timings: Timings
    hits: HitStats
    blend_refused: str | None = None


@dataclass
class GenerateResult:
    text: str
    token_ids: list[int]
    ttft_s: float
    mode: str
    timings: Timings
    hits: HitStats
    prefill: PrefillResult

    def summary(self) -> dict[str, Any]:
        hits = asdict(self.hits)
        hits["fetch"].pop("errors")
        return {"mode": self.mode, "ttft_s": round(self.ttft_s, 4),
                "timings": {k: round(v, 4) for k, v in asdict(self.timings).items()},
                "hits": hits, "new_tokens": len(self.token_ids)}


class CacheEngine:
    def __init__(
        self, model: Any, tokenizer: Any, store: ChunkStore, scheme: KeyScheme,
        config: EngineConfig | None = None,
    ) -> None:
        self.config = config = config or EngineConfig()
        if scheme.kv_layout != LAYOUT:
            raise ConfigError(f"scheme.kv_layout must be {LAYOUT!r}, got {scheme.kv_layout!r}")
        if scheme.kv_dtype != config.kv_dtype:
            raise ConfigError(f"scheme.kv_dtype {scheme.kv_dtype!r} != config.kv_dtype "
                              f"{config.kv_dtype!r}")
        self.model, self.tokenizer, self.store, self.scheme = model, tokenizer, store, scheme
        self.n_layers, self.kv_heads, self.head_dim = kv_geometry(model.config)
        if config.check_layer >= self.n_layers:
            raise ConfigError(f"check_layer {config.check_layer} >= {self.n_layers} layers")
        first = next(model.parameters())
        self.dtype, self.device = first.dtype, first.device
        self.kv_dtype: torch.dtype = getattr(torch, config.kv_dtype)
        self.blend_refusal = blend_unsupported_reason(model)
        self.runner = LlamaLayers(model) if self.blend_refusal is None else None
        self._fetch_pool = cf.ThreadPoolExecutor(config.fetch_workers, "kv-fetch")
        self.writer = WriteBack(store, config.max_pending_writes)
        eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        self.eos_ids: tuple[int, ...] = () if eos is None else (int(eos),)

    # ---- public API -----------------------------------------------------------------------

    def generate(
        self, segments: Sequence[Segment], max_new_tokens: int = 32, mode: Mode = "auto",
        **overrides: Any,
    ) -> GenerateResult:
        """Prefill (reusing cached KV per ``mode``), then greedy decoding. ``overrides``:
        recompute_ratio, check_layer, selection, deviation, gradual, write_back."""
        t0 = time.perf_counter()
        pre = self.prefill(segments, mode, **overrides)
        first = int(pre.logits.argmax())
        ttft = time.perf_counter() - t0
        t1 = time.perf_counter()
        tokens = greedy_decode(self.model, pre.cache, first, max_new_tokens, self.eos_ids,
                               self.device)
        pre.timings.decode_s = time.perf_counter() - t1
        text = self.tokenizer.decode(tokens, skip_special_tokens=True) if self.tokenizer else ""
        return GenerateResult(text, tokens, ttft, pre.mode, pre.timings, pre.hits, pre)

    @torch.no_grad()
    def prefill(
        self, segments: Sequence[Segment], mode: Mode = "auto", *,
        recompute_ratio: float | None = None, check_layer: int | None = None,
        selection: str | None = None, deviation: str | None = None,
        gradual: tuple[float, ...] | None = None, write_back: bool = True,
    ) -> PrefillResult:
        """Build the prompt's cache and last-position logits. Overrides default to the config."""
        t0 = time.perf_counter()
        cfg = self.config.with_overrides(recompute_ratio=recompute_ratio,
                                         check_layer=check_layer, selection=selection,
                                         deviation=deviation, gradual=gradual)
        if cfg.check_layer >= self.n_layers:
            raise ConfigError(f"check_layer {cfg.check_layer} >= {self.n_layers} layers")
        if mode not in ("auto", "full", "prefix", "blend"):
            raise ConfigError(f"mode must be auto, full, prefix or blend, got {mode!r}")
        if mode == "blend" and self.blend_refusal is not None:
            raise BlendUnsupported(f"cannot blend with this model: {self.blend_refusal}; "
                                   "use mode='prefix' or 'auto' (prefix reuse still works)")
        layout = self.layout(segments)
        ids = torch.tensor(layout.token_ids, device=self.device)
        timings, hits = Timings(), HitStats(prompt_tokens=layout.n_tokens)
        if mode == "full":
            logits, cache, _ = prefix_prefill(self.model, ids, [], self.dtype, self.device)
            timings.recompute_s = time.perf_counter() - t0
            hits.recomputed_tokens = layout.n_tokens
            loaded: set[bytes] = set()
            plan, used, exact_until = None, "full", layout.n_tokens
        else:
            t1 = time.perf_counter()
            plan = plan_loads(self.store, layout,
                              with_content=mode != "prefix" and self.runner is not None)
            timings.lookup_s = time.perf_counter() - t1
            hits.lookup_error = plan.lookup_error
            if mode == "blend" or (mode == "auto" and plan.content):
                logits, cache, exact_until, loaded = self._blend(ids, plan, cfg, timings, hits)
                used = "blend"
            else:
                logits, cache, exact_until, loaded = self._prefix(ids, plan, timings, hits)
                used = "prefix"
        timings.prefill_s = time.perf_counter() - t0
        if write_back and self.config.write_back != "none":
            self._schedule_writes(layout, plan, loaded, cache, exact_until)
        refused = self.blend_refusal if mode == "auto" else None
        return PrefillResult(used, layout, logits, cache, timings, hits, refused)

    def layout(self, segments: Sequence[Segment]) -> PromptLayout:
        if not segments:
            raise ConfigError("a prompt needs at least one segment")
        token_segments = [tokenize(self.tokenizer, s) for s in segments]
        return build_layout(self.scheme, token_segments, [s.cacheable for s in segments])

    @torch.no_grad()
    def cache_segments(self, segments: Sequence[Segment], start_pos: int = 0) -> int:
        """Prefill each cacheable segment on its own (positions from ``start_pos``) and store its
        content chunks, synchronously: how documents are ingested for blending. Returns the
        number of chunks stored."""
        if self.blend_refusal is not None:
            raise BlendUnsupported(f"content chunks are only used for blending: "
                                   f"{self.blend_refusal}")
        total = 0
        for seg in segments:
            if not seg.cacheable:
                continue
            ids = tokenize(self.tokenizer, seg)
            layout = build_layout(self.scheme, [ids], [True])
            cache = standalone_prefill(self.model, ids, start_pos, self.device)
            writes = [ChunkWrite(s.key, s.start, s.num_tokens, None, 0)
                      for s in layout.content_chunks]
            keys = [layer.keys for layer in cache.layers]
            values = [layer.values for layer in cache.layers]
            tensors = self._pack(writes, keys, values, offset=start_pos)
            ok = self.store.put_many([w.key for w in writes], tensors,
                                     parent_keys=[None] * len(writes),
                                     start_pos=[0] * len(writes),
                                     num_tokens=[w.num_tokens for w in writes])
            total += sum(bool(x) for x in ok)
        return total

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait for background write-backs; True when none is pending."""
        return self.writer.flush(timeout_s)

    def close(self) -> None:
        self.writer.close()
        self._fetch_pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> CacheEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- paths ----------------------------------------------------------------------------

    def _prefix(
        self, ids: torch.Tensor, plan: LoadPlan, timings: Timings, hits: HitStats
    ) -> tuple[torch.Tensor, Any, int, set[bytes]]:
        t0 = time.perf_counter()
        deadline = t0 + self.config.fetch_timeout_s
        fetch = ChunkFetch(self.store, self._fetch_pool, [s.span.key for s in plan.prefix],
                           self.config.fetch_batch_chunks, self.device)
        expected = [(chunk_shape(self.n_layers, self.kv_heads, s.span.num_tokens,
                                 self.head_dim), self.kv_dtype) for s in plan.prefix]
        tensors = fetch.collect(deadline, expected, hits.fetch)
        loaded = []
        for slot, tensor in zip(plan.prefix, tensors, strict=True):
            if tensor is None:
                break  # the cache must stay a prefix: later chunks are recomputed too
            loaded.append((slot, tensor))
        t1 = time.perf_counter()
        timings.fetch_s = t1 - t0
        capacity = ids.numel() + DECODE_HEADROOM_ROWS  # suffix + decoded rows append in place
        cache, reused = cache_from_chunks(self.model, loaded, self.dtype, self.device, capacity)
        t2 = time.perf_counter()
        timings.prepare_s = t2 - t1  # host time: the copies it queues run on the GPU later
        logits, cache, reused = forward_rest(self.model, ids, cache, reused, self.device)
        timings.recompute_s = time.perf_counter() - t2
        hits.exact_tokens = reused
        hits.recomputed_tokens = ids.numel() - reused
        return logits, cache, ids.numel(), {s.span.key for s, _ in loaded}

    def _blend(
        self, ids: torch.Tensor, plan: LoadPlan, cfg: EngineConfig, timings: Timings,
        hits: HitStats,
    ) -> tuple[torch.Tensor, Any, int, set[bytes]]:
        assert self.runner is not None  # mode checks above guarantee it
        loader = LayerLoader(
            store=self.store, pool=self._fetch_pool, prefix=plan.prefix, content=plan.content,
            n_rows=ids.numel(), n_layers=self.n_layers, kv_heads=self.kv_heads,
            head_dim=self.head_dim, check_layer=cfg.check_layer, dtype=self.dtype,
            device=self.device, kv_dtype=self.kv_dtype, inv_freq=self.runner.inv_freq,
            pairing=PAIRING, deadline=time.perf_counter() + cfg.fetch_timeout_s,
            batch_chunks=cfg.fetch_batch_chunks, lookahead=cfg.lookahead_layers,
            backend=cfg.kernel_backend,
        )
        try:
            out = blend_prefill(
                self.runner, ids, loader, ratio=cfg.recompute_ratio,
                check_layer=cfg.check_layer, selection=cfg.selection,  # type: ignore[arg-type]
                deviation=cfg.deviation, gradual=cfg.gradual,  # type: ignore[arg-type]
                generator=torch.Generator().manual_seed(cfg.seed), backend=cfg.kernel_backend,
            )
        finally:
            loader.close()
        timings.fetch_s = loader.timings.fetch_wait_s
        timings.prepare_s = loader.timings.prepare_s
        timings.rerotate_s = loader.timings.rerotate_s
        timings.recompute_s, timings.wait_s, timings.select_s = (
            out.compute_s, out.wait_s, out.select_s)
        hits.fetch = loader.stats
        hits.exact_tokens = out.stats.exact_rows
        hits.content_tokens = out.stats.content_rows
        hits.recomputed_tokens = out.stats.recomputed_rows
        # the loader's buffers as they are (a DynamicCache built from them would copy them all)
        cache = reserved_cache(self.model.config, list(zip(out.keys, out.values, strict=True)),
                               ids.numel())
        return out.logits, cache, out.stats.exact_until, loader.loaded_keys()

    # ---- write-back -------------------------------------------------------------------------

    def _schedule_writes(
        self, layout: PromptLayout, plan: LoadPlan | None, loaded: set[bytes], cache: Any,
        exact_until: int,
    ) -> None:
        """Queue the chunks this request computed and the store lacks: those the lookup missed
        and those whose fetch failed (see writeback.py). Chained chunks only from rows whose K/V
        are exact."""
        policy = self.config.write_back
        skip: set[bytes] = set()
        if plan is not None:
            spans = layout.prefix_chunks + layout.content_chunks[: len(plan.content_found)]
            found = plan.prefix_found + plan.content_found
            failed = {s.span.key for s in plan.prefix + plan.content} - loaded
            skip = {s.key for s, hit in zip(spans, found, strict=True) if hit} - failed
        writes: list[ChunkWrite] = []
        if policy in ("all", "prefix"):
            writes += [ChunkWrite(s.key, s.start, s.num_tokens, s.parent, s.start)
                       for s in layout.prefix_chunks
                       if s.end <= exact_until and s.key not in skip]
        if policy in ("all", "content") and self.runner is not None:
            writes += [ChunkWrite(s.key, s.start, s.num_tokens, None, 0)
                       for s in layout.content_chunks if s.key not in skip]
        keys = [layer.keys for layer in cache.layers]
        values = [layer.values for layer in cache.layers]
        self.writer.submit(writes, lambda: self._pack(writes, keys, values, offset=0))

    def _pack(
        self, writes: Sequence[ChunkWrite], keys: Sequence[torch.Tensor],
        values: Sequence[torch.Tensor], offset: int,
    ) -> list[torch.Tensor]:
        """Pack chunks whose rows sit at positions ``offset + row``."""
        shifted = [ChunkWrite(w.key, w.start, w.num_tokens, w.parent, w.canonical_start - offset)
                   for w in writes]
        inv_freq = self.runner.inv_freq if self.runner is not None else None
        return pack_chunks(shifted, keys, values, self.kv_dtype, inv_freq, PAIRING,
                           self.config.kernel_backend)
