"""The router's view of its workers: load, an approximate prefix index, and queued requests.

The router never reads a worker's real cache. Like SGLang's cache-aware router it keeps, per
worker, an LRU index of the prefix blocks it has sent there, sized to the worker's reported KV
capacity; a prompt's cached prefix on a worker is the longest run of its blocks found in that
index. Load is the worker's reported pending prefill tokens, advanced by what the router sends
between two reports.

Queued requests (routed, not yet started, as far as the router knows) are what the hotspot
rebalancer may move; a worker's report of started requests removes them.

Load ages between reports. A report says how much prefill work a worker had *when it sent it*; a
busy worker computes through that work at ``1 / s_per_token`` tokens per second, so ``drain``
lowers each worker's pending tokens by the time elapsed since it was last brought up to date.
Without this, a worker that reported 3 s of work looks 3 s busy until its next report, even when
it is nearly idle (measured on the Mooncake trace at 2.6x load with event-driven reports: the
predicted queueing delay was >1 s too long for 10% of requests, which made DualMap switch away
from cached prefixes and flag hotspots that were not there).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kvstore.router.predictor import TTFTPredictor


class PrefixIndex:
    """LRU set of prefix block hashes with a capacity in blocks."""

    __slots__ = ("capacity_blocks", "_blocks")

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity_blocks = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def match(self, blocks: Sequence[int]) -> int:
        """Number of leading blocks present (a prefix hit on block i implies blocks < i)."""
        index = self._blocks
        n = 0
        for block in blocks:
            if block not in index:
                break
            n += 1
        return n

    def touch(self, blocks: Iterable[int]) -> None:
        index = self._blocks
        for block in blocks:
            if block in index:
                index.move_to_end(block)
            else:
                index[block] = None
        while len(index) > self.capacity_blocks:
            index.popitem(last=False)

    def __len__(self) -> int:
        return len(self._blocks)


@dataclass(slots=True)
class QueuedRequest:
    request_id: str
    blocks: Sequence[int]
    prompt_tokens: int
    candidates: tuple[str, str]
    worker: str
    work_tokens: int  # uncached tokens the router charged to ``worker``
    enqueued_s: float
    migrated: bool = False


@dataclass(slots=True)
class WorkerState:
    worker_id: str
    kv_capacity_tokens: int
    index: PrefixIndex
    pending_tokens: float = 0.0
    as_of_s: float = 0.0  # time at which ``pending_tokens`` was last brought up to date
    queued: OrderedDict[str, QueuedRequest] = field(default_factory=OrderedDict)

    def cached_tokens(self, blocks: Sequence[int], prompt_tokens: int, block_tokens: int) -> int:
        return min(self.index.match(blocks) * block_tokens, prompt_tokens)

    def tokens_ahead(self, request_id: str) -> float:
        """Pending work ahead of a queued request: running work plus earlier queued requests."""
        queued_work = 0
        ahead = 0
        seen = False
        for rid, q in self.queued.items():
            queued_work += q.work_tokens
            if rid == request_id:
                seen = True
            elif not seen:
                ahead += q.work_tokens
        running = max(self.pending_tokens - queued_work, 0.0)
        return running + ahead


class Cluster:
    """Workers by id plus the estimates every policy uses (one predictor, one prefix index)."""

    def __init__(self, predictor: TTFTPredictor, block_tokens: int) -> None:
        self.predictor = predictor
        self.block_tokens = block_tokens
        self.workers: dict[str, WorkerState] = {}
        self.order: list[str] = []  # sorted ids: deterministic iteration for baselines
        self.owner_of: dict[str, str] = {}  # queued request id -> worker id

    def add(self, worker_id: str, kv_capacity_tokens: int, now_s: float = 0.0) -> WorkerState:
        state = WorkerState(
            worker_id,
            kv_capacity_tokens,
            PrefixIndex(kv_capacity_tokens // self.block_tokens),
            as_of_s=now_s,
        )
        self.workers[worker_id] = state
        self.order = sorted(self.workers)
        return state

    def remove(self, worker_id: str) -> WorkerState:
        state = self.workers.pop(worker_id)
        self.order = sorted(self.workers)
        for rid in state.queued:
            self.owner_of.pop(rid, None)
        return state

    def drain(self, now_s: float) -> None:
        """Age every worker's pending work to ``now_s`` (a busy worker works through it)."""
        per_s = 1.0 / self.predictor.s_per_token
        for state in self.workers.values():
            elapsed = now_s - state.as_of_s
            if elapsed > 0:
                state.pending_tokens = max(state.pending_tokens - elapsed * per_s, 0.0)
                state.as_of_s = now_s

    def estimate(self, worker_id: str, blocks: Sequence[int], prompt_tokens: int) -> Estimate:
        state = self.workers[worker_id]
        cached = state.cached_tokens(blocks, prompt_tokens, self.block_tokens)
        ttft = self.predictor.ttft_s(state.pending_tokens, prompt_tokens, cached)
        return Estimate(worker_id, cached, ttft)

    def enqueue(self, q: QueuedRequest) -> None:
        state = self.workers[q.worker]
        state.queued[q.request_id] = q
        state.pending_tokens += q.work_tokens
        state.index.touch(q.blocks)
        self.owner_of[q.request_id] = q.worker

    def dequeue(self, request_id: str) -> QueuedRequest | None:
        """Forget a queued request (started, finished or moved); the worker keeps its load."""
        worker = self.owner_of.pop(request_id, None)
        if worker is None:
            return None
        return self.workers[worker].queued.pop(request_id, None)


@dataclass(frozen=True, slots=True)
class Estimate:
    worker: str
    cached_tokens: int
    ttft_s: float
