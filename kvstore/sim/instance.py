"""One simulated inference instance: an FCFS prefill queue and an LRU prefix cache.

Cost model (stated in docs/BENCHMARKS.md):

* prefill of one request takes ``overhead + uncached * s_per_token + cached * s_per_cached_token``;
  prefills run one after another in arrival order (FCFS), which is what a throughput-bound
  chunked-prefill engine amounts to;
* decode runs in a separate continuous batch at ``decode_s_per_token`` per output token and does
  not delay prefills (prefill-first scheduling, as in vLLM's default); it only sets completion time;
* the prefix cache holds ``kv_capacity_tokens`` worth of 512-token blocks with LRU eviction; a
  request's cached prefix is the longest run of its leading blocks present when its prefill
  *starts*; its blocks enter the cache when its prefill ends. A fully cached prompt still computes
  its last token.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from kvstore.errors import ConfigError
from kvstore.sim.trace import TRACE_BLOCK_TOKENS, TraceRequest


@dataclass(frozen=True)
class InstanceConfig:
    """Per-instance costs; defaults model Qwen2.5-7B on one A100-80GB (see BENCHMARKS.md)."""

    prefill_s_per_token: float = 1.0e-4
    prefill_s_per_cached_token: float = 5.0e-6
    prefill_overhead_s: float = 0.02
    decode_s_per_token: float = 0.025
    kv_capacity_tokens: int = 1_000_000

    def __post_init__(self) -> None:
        if not self.prefill_s_per_token > 0:
            raise ConfigError("prefill_s_per_token must be > 0")
        for name in ("prefill_s_per_cached_token", "prefill_overhead_s", "decode_s_per_token"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")
        if self.kv_capacity_tokens < TRACE_BLOCK_TOKENS:
            raise ConfigError(f"kv_capacity_tokens must be >= {TRACE_BLOCK_TOKENS}")


@dataclass(slots=True)
class Completed:
    request: TraceRequest
    worker: str
    cached_tokens: int
    prefill_start_s: float
    prefill_end_s: float
    decode_end_s: float

    @property
    def ttft_s(self) -> float:
        return self.prefill_end_s - self.request.arrival_s


class Instance:
    def __init__(self, worker_id: str, config: InstanceConfig) -> None:
        self.worker_id = worker_id
        self.config = config
        self._capacity_blocks = config.kv_capacity_tokens // TRACE_BLOCK_TOKENS
        self._cache: OrderedDict[int, None] = OrderedDict()
        self._queue: OrderedDict[str, tuple[TraceRequest, int]] = OrderedDict()  # id -> (req, work)
        self._queued_work = 0
        self._running: tuple[TraceRequest, int, float, float] | None = None  # req, cached, t0, t1
        self.busy_s = 0.0

    # -- cache ------------------------------------------------------------------------------

    def cached_tokens(self, request: TraceRequest) -> int:
        n = 0
        for block in request.blocks:
            if block not in self._cache:
                break
            n += 1
        return min(n * TRACE_BLOCK_TOKENS, request.input_tokens - 1)

    def _touch(self, blocks: tuple[int, ...]) -> None:
        cache = self._cache
        for block in blocks:
            if block in cache:
                cache.move_to_end(block)
            else:
                cache[block] = None
        while len(cache) > self._capacity_blocks:
            cache.popitem(last=False)

    # -- queue ------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return self._running is None

    def enqueue(self, request: TraceRequest) -> None:
        work = request.input_tokens - self.cached_tokens(request)
        self._queue[request.request_id] = (request, work)
        self._queued_work += work

    def remove(self, request_id: str) -> TraceRequest | None:
        """Take a queued (not started) request out, for migration; None if it already started."""
        item = self._queue.pop(request_id, None)
        if item is None:
            return None
        self._queued_work -= item[1]
        return item[0]

    def start_next(self, now_s: float) -> tuple[TraceRequest, float] | None:
        """Start the next queued prefill; returns (request, end time) or None when empty."""
        if self._running is not None or not self._queue:
            return None
        _, (request, work) = self._queue.popitem(last=False)
        self._queued_work -= work
        cached = self.cached_tokens(request)
        self._touch(request.blocks[: cached // TRACE_BLOCK_TOKENS])  # protect the hit blocks
        cfg = self.config
        duration = (
            cfg.prefill_overhead_s
            + (request.input_tokens - cached) * cfg.prefill_s_per_token
            + cached * cfg.prefill_s_per_cached_token
        )
        self._running = (request, cached, now_s, now_s + duration)
        self.busy_s += duration
        return request, now_s + duration

    def finish(self) -> Completed:
        if self._running is None:
            raise RuntimeError(f"{self.worker_id}: finish() without a running prefill")
        request, cached, start, end = self._running
        self._running = None
        self._touch(request.blocks)
        decode_end = end + request.output_tokens * self.config.decode_s_per_token
        return Completed(request, self.worker_id, cached, start, end, decode_end)

    def pending_tokens(self, now_s: float) -> float:
        """Uncached tokens still to prefill: the queue plus what is left of the running one."""
        left = 0.0
        if self._running is not None:
            left = max(self._running[3] - now_s, 0.0) / self.config.prefill_s_per_token
        return self._queued_work + left

    def queued_ids(self) -> list[str]:
        return list(self._queue)
