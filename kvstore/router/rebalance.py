"""Hotspot rebalancing: move queued requests off an overloaded pair to their alternate candidate.

Triggered when a new request finds *both* of its candidates over the SLO. For every queued request
on those two workers (not yet started, never moved before) the rebalancer predicts its TTFT where
it waits now and on its own alternate candidate (the other member of its pair; nowhere else), and
keeps the moves that gain time and still meet the SLO there (time already waited included). Moves
are applied best gain first in one round; each move charges its work to the target before the next
is checked, and a moved request is never moved again (no cascades, no ping-pong).

Cost: one pass over at most ``max_scan`` of the newest requests of each of the two queues, stopping
at the first that has already waited past the SLO. Requests that cannot meet the SLO on their
alternate even with everything cached are skipped before any prefix lookup, and a round with no
worker under the SLO ends at once, so a round is cheap exactly when it would be useless.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kvstore.router.state import Cluster, QueuedRequest


@dataclass(frozen=True, slots=True)
class Migration:
    request_id: str
    source: str
    target: str
    gain_s: float  # predicted TTFT saved by the move
    predicted_ttft_s: float  # predicted TTFT on the target, from now


@dataclass(slots=True)
class _Proposal:
    gain_s: float
    here_s: float  # predicted TTFT where it waits, from now, at the start of the round
    position: int  # place in the source queue
    request: QueuedRequest
    target: str


class HotspotRebalancer:
    def __init__(self, slo_s: float, max_scan: int = 256) -> None:
        self._slo_s = slo_s
        self._max_scan = max_scan  # newest queued requests considered per source, per round

    def plan(self, cluster: Cluster, sources: Iterable[str], now_s: float) -> list[Migration]:
        """Choose and apply (to the router's state) one round of moves off ``sources``."""
        proposals: list[_Proposal] = []
        for source in dict.fromkeys(sources):
            if source in cluster.workers:
                proposals.extend(self._proposals(cluster, source, now_s))
        proposals.sort(key=lambda p: p.gain_s, reverse=True)
        predictor = cluster.predictor
        moved_ahead: dict[str, list[tuple[int, int]]] = {}
        moves: list[Migration] = []
        for p in proposals:
            q = p.request
            done = moved_ahead.setdefault(q.worker, [])
            # Moves earlier in this round from ahead of q in the same queue shortened its wait.
            here_s = p.here_s - predictor.queue_s(sum(w for pos, w in done if pos < p.position))
            est = cluster.estimate(p.target, q.blocks, q.prompt_tokens)  # target load grew
            if est.ttft_s >= here_s or now_s - q.enqueued_s + est.ttft_s > self._slo_s:
                continue
            moves.append(
                Migration(q.request_id, q.worker, p.target, here_s - est.ttft_s, est.ttft_s)
            )
            done.append((p.position, q.work_tokens))
            self._apply(cluster, q, p.target, est.cached_tokens)
        return moves

    def _proposals(self, cluster: Cluster, source: str, now_s: float) -> list[_Proposal]:
        predictor = cluster.predictor
        state = cluster.workers[source]
        # A target whose queue alone breaks the SLO can take nothing; when the whole cluster is
        # overloaded this ends the round before any queue is scanned.
        viable = {
            w
            for w, ws in cluster.workers.items()
            if w != source
            and predictor.queue_s(ws.pending_tokens) + predictor.overhead_s < self._slo_s
        }
        if not viable:
            return []
        out: list[_Proposal] = []
        behind = 0
        size = len(state.queued)
        # Newest first: they wait longest here and have waited least so far. Queues are FIFO, so
        # once a (never moved) request has waited past the SLO every older one has too.
        for i, q in enumerate(reversed(state.queued.values())):
            if i >= self._max_scan:
                break
            waited_s = now_s - q.enqueued_s
            ahead = state.pending_tokens - behind - q.work_tokens
            behind += q.work_tokens
            if q.migrated:
                continue
            if waited_s > self._slo_s:
                break
            target = q.candidates[1] if q.candidates[0] == source else q.candidates[0]
            if target not in viable:
                continue
            here_s = predictor.queue_s(max(ahead, 0.0)) + predictor.prefill_s(
                q.prompt_tokens, q.prompt_tokens - q.work_tokens
            )
            floor_s = predictor.queue_s(cluster.workers[target].pending_tokens)
            if floor_s >= here_s or waited_s + floor_s > self._slo_s:
                continue  # cannot help, or cannot meet the SLO there whatever is cached
            there_s = cluster.estimate(target, q.blocks, q.prompt_tokens).ttft_s
            if there_s < here_s:
                out.append(_Proposal(here_s - there_s, here_s, size - 1 - i, q, target))
        return out

    @staticmethod
    def _apply(cluster: Cluster, q: QueuedRequest, target: str, cached: int) -> None:
        cluster.dequeue(q.request_id)
        cluster.workers[q.worker].pending_tokens -= q.work_tokens
        moved = QueuedRequest(
            q.request_id,
            q.blocks,
            q.prompt_tokens,
            q.candidates,
            target,
            q.prompt_tokens - cached,
            q.enqueued_s,
            migrated=True,
        )
        cluster.enqueue(moved)
