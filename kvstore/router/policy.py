"""Routing policies: DualMap and the baselines, as small strategy classes with one interface.

Every policy sees the same ``Prompt`` (blocks, size, the two ring candidates of its adaptive key)
and the same ``Cluster`` (load, prefix index, TTFT predictor), and returns a ``Choice``. The router
picks one class at construction; nothing branches on the policy name in the request path.

* ``DualMap``: of the two candidates, prefer the one with more cached prefix (equal prefix: the
  lower predicted TTFT, i.e. the power of two choices); keep it unless its predicted TTFT breaks
  the SLO, then take the other; if both break it, take the lower and flag a hotspot so the
  rebalancer can move queued work off the pair.
* ``ConsistentHash``: the ring-1 owner of the same adaptive key (one ring, no choice).
* ``RoundRobin``, ``LeastLoaded`` (fewest pending prefill tokens), ``CacheAffinity`` (most cached
  prefix over all workers, then fewest pending tokens), ``MinTTFT`` (lowest predicted TTFT over
  all workers).

CacheAffinity ignores the leading blocks that the hotness tree has found shared by a large share
of all traffic (the blocks before the last block of the adaptive key). Without that, the Mooncake
trace's common first block makes the first worker that caches it the "most cached" choice for every
later request, and the baseline degenerates into sending all traffic to one worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvstore.router.state import Cluster, Estimate


@dataclass(frozen=True, slots=True)
class Prompt:
    request_id: str
    blocks: Sequence[int]
    prompt_tokens: int
    candidates: tuple[str, str]
    key_blocks: int = 1  # adaptive key length; blocks before the last are hot shared prefixes


@dataclass(frozen=True, slots=True)
class Choice:
    worker: str
    reason: str
    predicted_ttft_s: float
    cached_tokens: int
    hotspot: bool = False


def _choice(est: Estimate, reason: str, hotspot: bool = False) -> Choice:
    return Choice(est.worker, reason, est.ttft_s, est.cached_tokens, hotspot)


class Policy:
    name = "policy"

    def choose(self, prompt: Prompt, cluster: Cluster) -> Choice:
        raise NotImplementedError


class DualMap(Policy):
    name = "dualmap"

    def __init__(self, slo_s: float, headroom: float = 1.0) -> None:
        self._limit_s = slo_s * headroom

    def choose(self, prompt: Prompt, cluster: Cluster) -> Choice:
        c1, c2 = prompt.candidates
        e1 = cluster.estimate(c1, prompt.blocks, prompt.prompt_tokens)
        if c2 == c1:
            return _choice(e1, "single-worker")
        e2 = cluster.estimate(c2, prompt.blocks, prompt.prompt_tokens)
        if e1.cached_tokens != e2.cached_tokens:
            affine, other = (e1, e2) if e1.cached_tokens > e2.cached_tokens else (e2, e1)
        else:
            affine, other = (e1, e2) if e1.ttft_s <= e2.ttft_s else (e2, e1)
        if affine.ttft_s <= self._limit_s:
            return _choice(affine, "affinity")
        if other.ttft_s <= self._limit_s:
            return _choice(other, "slo-switch")
        best = affine if affine.ttft_s <= other.ttft_s else other
        return _choice(best, "both-over-slo", hotspot=True)


class ConsistentHash(Policy):
    name = "consistent_hash"

    def choose(self, prompt: Prompt, cluster: Cluster) -> Choice:
        return _choice(
            cluster.estimate(prompt.candidates[0], prompt.blocks, prompt.prompt_tokens), "ring"
        )


class RoundRobin(Policy):
    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, prompt: Prompt, cluster: Cluster) -> Choice:
        worker = cluster.order[self._next % len(cluster.order)]
        self._next += 1
        return _choice(cluster.estimate(worker, prompt.blocks, prompt.prompt_tokens), "turn")


class _ScanAll(Policy):
    """Base of the policies that score every worker; ties rotate so no worker is favoured."""

    def __init__(self) -> None:
        self._rotate = 0

    def _scan(self, prompt: Prompt, cluster: Cluster) -> list[Estimate]:
        order = cluster.order
        self._rotate = (self._rotate + 1) % len(order)
        rotated = order[self._rotate :] + order[: self._rotate]
        return [cluster.estimate(w, prompt.blocks, prompt.prompt_tokens) for w in rotated]


class LeastLoaded(_ScanAll):
    name = "least_loaded"

    def choose(self, prompt: Prompt, cluster: Cluster) -> Choice:
        workers = cluster.workers
        best = min(self._scan(prompt, cluster), key=lambda e: workers[e.worker].pending_tokens)
        return _choice(best, "least-pending")


class CacheAffinity(_ScanAll):
    name = "cache_affinity"

    def choose(self, prompt: Prompt, cluster: Cluster) -> Choice:
        workers = cluster.workers
        # Cached tokens within the hot shared prefix count as zero: every worker needs them.
        shared = (prompt.key_blocks - 1) * cluster.block_tokens
        best = min(
            self._scan(prompt, cluster),
            key=lambda e: (-max(e.cached_tokens - shared, 0), workers[e.worker].pending_tokens),
        )
        return _choice(best, "most-cached")


class MinTTFT(_ScanAll):
    name = "min_ttft"

    def choose(self, prompt: Prompt, cluster: Cluster) -> Choice:
        return _choice(min(self._scan(prompt, cluster), key=lambda e: e.ttft_s), "min-ttft")


def make_policy(name: str, slo_s: float, headroom: float) -> Policy:
    if name == "dualmap":
        return DualMap(slo_s, headroom)
    table: dict[str, type[Policy]] = {
        "consistent_hash": ConsistentHash,
        "round_robin": RoundRobin,
        "least_loaded": LeastLoaded,
        "cache_affinity": CacheAffinity,
        "min_ttft": MinTTFT,
    }
    return table[name]()
