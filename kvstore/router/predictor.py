"""TTFT prediction: queueing behind pending prefill work plus this prompt's own prefill.

    ttft = pending_prefill_tokens * s_per_token                     (queue ahead of it)
         + overhead + (prompt - cached) * s_per_token + cached * s_per_cached_token

``pending_prefill_tokens`` is what the worker still has to compute (uncached tokens of queued and
running prefills) as reported by the worker and advanced by the router between reports; ``cached``
is the router's estimate of the prompt prefix the worker holds. The same formula serves the
DualMap policy, the min-TTFT baseline and the rebalancer, so they never disagree about a worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.router.config import RouterConfig


@dataclass(frozen=True, slots=True)
class TTFTPredictor:
    s_per_token: float
    s_per_cached_token: float
    overhead_s: float

    @classmethod
    def from_config(cls, config: RouterConfig) -> TTFTPredictor:
        return cls(
            config.prefill_s_per_token, config.prefill_s_per_cached_token, config.prefill_overhead_s
        )

    def prefill_s(self, prompt_tokens: int, cached_tokens: int) -> float:
        """Compute time of one prompt with ``cached_tokens`` of its prefix already cached."""
        miss = prompt_tokens - cached_tokens
        return self.overhead_s + miss * self.s_per_token + cached_tokens * self.s_per_cached_token

    def queue_s(self, pending_tokens: float) -> float:
        return pending_tokens * self.s_per_token

    def ttft_s(self, pending_tokens: float, prompt_tokens: int, cached_tokens: int) -> float:
        return self.queue_s(pending_tokens) + self.prefill_s(prompt_tokens, cached_tokens)
