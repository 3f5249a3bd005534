"""Router: the request path in one place (key, candidates, policy, bookkeeping, rebalancing).

    route(request_id, blocks, prompt_tokens, now_s)
      -> hotness tree: key length          (hotness.py)
      -> dual ring: two candidates         (kvstore/ring.py, the same ring as chunk placement)
      -> policy: choose a worker           (policy.py, with predictor.py estimates)
      -> cluster: charge load, index blocks, remember the queued request (state.py)
      -> on a hotspot: one rebalancing round (rebalance.py)

Both the gRPC service and the simulator drive this class; neither has a copy of its logic.
Time is passed in (``now_s``) so the simulator can run on virtual time. Not thread-safe: the
service serializes calls with one lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kvstore.errors import FailedPrecondition, InvalidArgument
from kvstore.ring import DualHashRing
from kvstore.router.blocks import key_bytes
from kvstore.router.config import RouterConfig
from kvstore.router.hotness import HotnessTree
from kvstore.router.policy import Choice, Prompt, make_policy
from kvstore.router.predictor import TTFTPredictor
from kvstore.router.rebalance import HotspotRebalancer, Migration
from kvstore.router.state import Cluster, QueuedRequest


@dataclass(frozen=True, slots=True)
class Decision:
    request_id: str
    worker: str
    candidates: tuple[str, str]
    key_blocks: int
    reason: str
    predicted_ttft_s: float
    cached_tokens: int
    migrations: tuple[Migration, ...] = field(default=())


class Router:
    def __init__(self, config: RouterConfig | None = None) -> None:
        self.config = config or RouterConfig()
        cfg = self.config
        self.ring = DualHashRing(cfg.vnodes_per_weight)
        self.hotness = HotnessTree(cfg.hot_half_life_s, cfg.hot_expand_factor, cfg.hot_prune_factor)
        self.cluster = Cluster(TTFTPredictor.from_config(cfg), cfg.block_tokens)
        self.policy = make_policy(cfg.policy, cfg.slo_ttft_s, cfg.slo_headroom)
        self._rebalancer = (
            HotspotRebalancer(cfg.slo_ttft_s) if cfg.rebalance and cfg.policy == "dualmap" else None
        )
        self.migrations = 0
        self._now_s = 0.0  # latest time the router has been told (route / report_load)

    # -- membership -------------------------------------------------------------------------

    def join(self, worker_id: str, kv_capacity_tokens: int, weight: float = 1.0) -> int:
        """Add a worker (weight scales its share of keys); returns the ring epoch."""
        if kv_capacity_tokens < self.config.block_tokens:
            raise InvalidArgument(
                f"kv_capacity_tokens must hold at least one {self.config.block_tokens}-token "
                f"block, got {kv_capacity_tokens}"
            )
        self.ring.add_node(worker_id, weight)
        self.cluster.add(worker_id, kv_capacity_tokens, self._now_s)
        return self.ring.epoch

    def leave(self, worker_id: str) -> list[str]:
        """Remove a worker; returns the ids of requests the router still had queued there."""
        self.ring.remove_node(worker_id)
        return list(self.cluster.remove(worker_id).queued)

    @property
    def workers(self) -> list[str]:
        return list(self.cluster.order)

    # -- the request path -------------------------------------------------------------------

    def route(
        self, request_id: str, blocks: Sequence[int], prompt_tokens: int, now_s: float
    ) -> Decision:
        if not self.cluster.workers:
            raise FailedPrecondition("no workers have joined the router")
        if not blocks or prompt_tokens <= 0:
            raise InvalidArgument("a prompt needs at least one token")
        if request_id in self.cluster.owner_of:
            raise InvalidArgument(f"request {request_id!r} is already queued")
        self._now_s = max(self._now_s, now_s)
        self.cluster.drain(now_s)
        key_len = self.hotness.observe(blocks, now_s, len(self.cluster.order))
        candidates = self.ring.candidates(key_bytes(blocks[key_len - 1]))
        choice: Choice = self.policy.choose(
            Prompt(request_id, blocks, prompt_tokens, candidates, key_len), self.cluster
        )
        self.cluster.enqueue(
            QueuedRequest(
                request_id,
                blocks,
                prompt_tokens,
                candidates,
                choice.worker,
                prompt_tokens - choice.cached_tokens,
                now_s,
            )
        )
        moves: tuple[Migration, ...] = ()
        if choice.hotspot and self._rebalancer is not None:
            moves = tuple(self._rebalancer.plan(self.cluster, candidates, now_s))
            self.migrations += len(moves)
        return Decision(
            request_id,
            choice.worker,
            candidates,
            key_len,
            choice.reason,
            choice.predicted_ttft_s,
            choice.cached_tokens,
            moves,
        )

    def report_load(
        self,
        worker_id: str,
        pending_prefill_tokens: float,
        started: Iterable[str] = (),
        now_s: float | None = None,
    ) -> None:
        """A worker's load report: its pending prefill tokens and the requests it has started.

        ``now_s`` is when the worker measured the load (the router's clock; default: the latest
        time the router has seen); the router ages it from then on (``Cluster.drain``).
        """
        state = self.cluster.workers.get(worker_id)
        if state is None:
            raise FailedPrecondition(f"worker {worker_id!r} has not joined")
        if pending_prefill_tokens < 0:
            raise InvalidArgument("pending_prefill_tokens must be >= 0")
        for rid in started:
            self.cluster.dequeue(rid)
        if now_s is not None:
            self._now_s = max(self._now_s, now_s)
        state.pending_tokens = float(pending_prefill_tokens)
        state.as_of_s = self._now_s if now_s is None else now_s

    def candidates(self, blocks: Sequence[int]) -> tuple[str, str]:
        """The two candidates of a prompt without counting it (read-only lookup)."""
        return self.ring.candidates(key_bytes(blocks[self.hotness.key_length(blocks) - 1]))
