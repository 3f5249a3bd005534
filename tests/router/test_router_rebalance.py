"""Hotspot rebalancing: only to the alternate, only when it helps, best gain first, once."""

from __future__ import annotations

from kvstore.router.predictor import TTFTPredictor
from kvstore.router.rebalance import HotspotRebalancer
from kvstore.router.state import Cluster, QueuedRequest

SLO_S = 5.0
NOW_S = 100.0


def _cluster() -> Cluster:
    """Source s: 1 s running + four queued 1000-token requests (1 ms per token, no cache cost).

    Predicted TTFT where they wait: qa 2 s, qb 3 s, qc 4 s, qd 5 s. Alternates: qa, qd -> a
    (idle), qb -> b (4.5 s queued: cannot help), qc -> c (2 s queued: 3 s there).
    """
    cluster = Cluster(TTFTPredictor(1e-3, 0.0, 0.0), 512)
    for worker, pending in {"s": 1_000, "a": 0, "b": 4_500, "c": 2_000, "x": 0}.items():
        cluster.add(worker, 100_000).pending_tokens = pending
    for i, (rid, alt) in enumerate([("qa", "a"), ("qb", "b"), ("qc", "c"), ("qd", "a")]):
        cluster.enqueue(
            QueuedRequest(rid, [1000 + i, 2000 + i], 1000, ("s", alt), "s", 1000, NOW_S)
        )
    return cluster


def test_moves_best_gain_first_only_to_alternates_and_only_when_it_helps():
    cluster = _cluster()
    moves = HotspotRebalancer(SLO_S).plan(cluster, ["s"], NOW_S)
    # qd gains most (5 s -> 1 s) and takes a; then qa no longer gains on a (2 s -> 2 s); qb
    # cannot gain on b; qc gains 1 s on c. The idle worker x is nobody's candidate: untouched.
    assert [(m.request_id, m.target) for m in moves] == [("qd", "a"), ("qc", "c")]
    assert [round(m.gain_s, 6) for m in moves] == [4.0, 1.0]
    assert cluster.owner_of == {"qa": "s", "qb": "s", "qc": "c", "qd": "a"}
    assert cluster.workers["s"].pending_tokens == 3_000
    assert cluster.workers["a"].pending_tokens == 1_000
    assert cluster.workers["x"].pending_tokens == 0
    assert all(
        q.migrated for q in (cluster.workers["a"].queued["qd"], cluster.workers["c"].queued["qc"])
    )


def test_moved_requests_never_move_again():
    cluster = _cluster()
    HotspotRebalancer(SLO_S).plan(cluster, ["s"], NOW_S)
    # Overload a and c; their moved requests would gain by going back to s, but may not.
    cluster.workers["a"].pending_tokens = 40_000
    cluster.workers["c"].pending_tokens = 40_000
    cluster.workers["s"].pending_tokens = 0
    assert HotspotRebalancer(SLO_S).plan(cluster, ["a", "c"], NOW_S) == []


def test_no_move_that_would_still_break_the_slo():
    cluster = _cluster()
    # Everyone has waited 4.5 s already: even 1 s on an idle alternate ends past 5 s.
    for q in cluster.workers["s"].queued.values():
        q.enqueued_s = NOW_S - 4.5
    assert HotspotRebalancer(SLO_S).plan(cluster, ["s"], NOW_S) == []


def test_no_move_when_every_worker_is_overloaded():
    cluster = _cluster()
    for state in cluster.workers.values():
        state.pending_tokens += 10_000
    assert HotspotRebalancer(SLO_S).plan(cluster, ["s"], NOW_S) == []


def test_cached_prefix_on_the_alternate_counts():
    cold = _cluster()
    cold.workers["b"].pending_tokens = 2_500  # there: 2.5 s + 1 s recompute > 3 s here
    assert "qb" not in {m.request_id for m in HotspotRebalancer(SLO_S).plan(cold, ["s"], NOW_S)}
    warm = _cluster()
    warm.workers["b"].pending_tokens = 2_500
    warm.workers["b"].index.touch([1001, 2001])  # b holds qb's prefix: 2.5 s there
    moves = HotspotRebalancer(SLO_S).plan(warm, ["s"], NOW_S)
    assert ("qb", "b") in {(m.request_id, m.target) for m in moves}
