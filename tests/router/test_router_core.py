"""Router facade: request path bookkeeping, load reports, membership changes, errors."""

from __future__ import annotations

import pytest

from kvstore.errors import ConfigError, FailedPrecondition, InvalidArgument
from kvstore.router import Router, RouterConfig
from kvstore.router.blocks import block_hashes, chain_block_ids

CAPACITY = 1_000_000


def _router(n: int, **overrides) -> Router:
    router = Router(RouterConfig(**overrides))
    for i in range(n):
        router.join(f"w{i}", CAPACITY)
    return router


def _prompts(count: int) -> list[list[int]]:
    # Conversation-like prompts: a shared system block, then a per-session block and a tail.
    return [chain_block_ids([0, 10_000 + i, 20_000 + i]) for i in range(count)]


def test_route_charges_load_indexes_the_prefix_and_keeps_affinity():
    router = _router(8)
    blocks = chain_block_ids([1, 2, 3, 4])
    first = router.route("r1", blocks, 2048, now_s=0.0)
    assert first.worker in first.candidates and first.candidates[0] != first.candidates[1]
    assert router.cluster.workers[first.worker].pending_tokens == 2048
    assert router.cluster.owner_of == {"r1": first.worker}
    # The worker starts r1 and finishes it; the next turn of the conversation follows its cache.
    router.report_load(first.worker, 0.0, started=["r1"])
    assert router.cluster.owner_of == {}
    second = router.route("r2", blocks + chain_block_ids([1, 2, 3, 4, 5])[4:], 2400, now_s=1.0)
    assert second.worker == first.worker
    assert second.reason == "affinity"
    assert second.cached_tokens == 2048


def test_leave_remaps_only_pairs_that_contained_the_leaver():
    router = _router(8)
    prompts = _prompts(3000)
    for i, blocks in enumerate(prompts):  # warm the hotness tree as traffic would
        router.route(f"r{i}", blocks, 1500, now_s=i * 0.01)
    before = [router.candidates(b) for b in prompts]
    epoch = router.ring.epoch
    router.leave("w3")
    after = [router.candidates(b) for b in prompts]
    assert router.ring.epoch == epoch + 1
    changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert changed and all("w3" in b for b, _ in changed)
    assert all("w3" not in a for a in after)
    # Only the arcs w3 owned move: its share of first and second candidates (~2/8 of pairs).
    assert len(changed) / len(prompts) <= 1.1 * 2 / 8


def test_join_moves_about_its_share_of_primaries():
    router = _router(8)
    prompts = _prompts(3000)
    for i, blocks in enumerate(prompts):
        router.route(f"r{i}", blocks, 1500, now_s=i * 0.01)
    before = [router.candidates(b)[0] for b in prompts]
    router.join("w8", CAPACITY)
    after = [router.candidates(b)[0] for b in prompts]
    moved = [a for b, a in zip(before, after, strict=True) if a != b]
    assert set(moved) == {"w8"}
    assert len(moved) / len(prompts) <= 1.1 / 9 + 0.02  # 3000 samples: allow sampling noise


def _prompt_with_pair(router: Router, pair: set[str], skip: int = 0) -> list[int]:
    found = (
        chain_block_ids([50_000 + i])
        for i in range(10_000)
        if set(router.candidates(chain_block_ids([50_000 + i]))) == pair
    )
    for _ in range(skip):
        next(found)
    return next(found)


def test_hotspot_moves_queued_requests_to_their_own_alternate():
    # 1 ms per token, nothing else: a 1000-token prompt is 1 s of work.
    router = Router(
        RouterConfig(
            prefill_s_per_token=1e-3, prefill_s_per_cached_token=0.0, prefill_overhead_s=0.0
        )
    )
    for w in ("a", "b", "c"):
        router.join(w, CAPACITY)
    # Four requests whose pair is {a, c} land on a while c reports a long queue.
    router.report_load("c", 10_000)
    for i in range(4):
        d = router.route(f"ac{i}", _prompt_with_pair(router, {"a", "c"}, i), 1000, now_s=0.0)
        assert d.worker == "a"
    router.report_load("c", 0)  # c drained; b now reports a long queue
    router.report_load("b", 10_000)
    d = router.route("ab0", _prompt_with_pair(router, {"a", "b"}, 0), 1000, now_s=0.0)
    assert (d.worker, d.reason, d.migrations) == ("a", "affinity", ())  # 5 s: just within
    d = router.route("ab1", _prompt_with_pair(router, {"a", "b"}, 1), 1000, now_s=0.0)
    assert d.reason == "both-over-slo"
    # Each request may only go to its own alternate: the {a, c} ones to c, ab0 nowhere (b is
    # overloaded), and nothing to b.
    assert d.migrations and {(m.source, m.target) for m in d.migrations} == {("a", "c")}
    assert {m.request_id for m in d.migrations} <= {"ac0", "ac1", "ac2", "ac3"}
    gains = [m.gain_s for m in d.migrations]
    assert gains == sorted(gains, reverse=True)  # best gain first
    assert router.cluster.owner_of["ab0"] == "a"
    assert router.migrations == len(d.migrations)


def test_reported_load_ages_between_reports_as_the_worker_computes():
    # Regression: a report used to stand until the next one, so a worker that reported 3 s of
    # work looked 3 s busy long after it had finished it (stale queueing predictions).
    router = _router(2, prefill_s_per_token=1e-3, prefill_overhead_s=0.0)
    router.report_load("w0", 3000, now_s=10.0)  # 3 s of prefill work at t = 10 s
    router.report_load("w1", 0, now_s=10.0)
    state = router.cluster.workers["w0"]
    router.route("r1", chain_block_ids([1]), 100, now_s=11.0)  # 1 s later: 2 s left on w0
    assert state.pending_tokens in (2000, 2100)  # 2000 left, + 100 if r1 went to w0
    assert state.as_of_s == 11.0
    router.route("r2", chain_block_ids([2]), 100, now_s=20.0)  # long done: never below zero
    assert all(0 <= w.pending_tokens <= 100 for w in router.cluster.workers.values())
    # A report without a time counts as of the latest time the router has seen.
    router.report_load("w0", 500)
    assert (state.pending_tokens, state.as_of_s) == (500, 20.0)
    # A worker that joins later is not aged from time zero.
    router.join("w2", CAPACITY)
    assert router.cluster.workers["w2"].as_of_s == 20.0


def test_leave_returns_the_requests_still_queued_there():
    router = _router(2)
    d = router.route("r1", chain_block_ids([9]), 100, now_s=0.0)
    assert router.leave(d.worker) == ["r1"]
    assert router.cluster.owner_of == {}
    assert router.route("r2", chain_block_ids([9]), 100, now_s=1.0).worker != d.worker


def test_bad_calls_are_refused():
    with pytest.raises(ConfigError):
        RouterConfig(policy="random")
    with pytest.raises(ConfigError):
        RouterConfig(slo_ttft_s=0)
    with pytest.raises(ConfigError):
        RouterConfig(hot_prune_factor=3.0)
    router = Router()
    with pytest.raises(FailedPrecondition):
        router.route("r", [1], 10, 0.0)
    with pytest.raises(InvalidArgument):
        router.join("w", kv_capacity_tokens=10)
    router.join("w", CAPACITY)
    with pytest.raises(InvalidArgument):
        router.route("r", [], 0, 0.0)
    router.route("r", [1], 10, 0.0)
    with pytest.raises(InvalidArgument):
        router.route("r", [1], 10, 0.0)  # already queued
    with pytest.raises(FailedPrecondition):
        router.report_load("nobody", 0.0)
    with pytest.raises(InvalidArgument):
        router.report_load("w", -1.0)


def test_block_hashes_are_chained_and_stable():
    a = block_hashes(list(range(1100)), 512)
    b = block_hashes(list(range(1024)) + [7] * 76, 512)
    assert len(a) == 3 and a[:2] == b[:2] and a[2] != b[2]
    assert block_hashes(list(range(10)), 512) != block_hashes(list(range(1, 11)), 512)
    assert chain_block_ids([0, 1])[0] == chain_block_ids([0, 2])[0]
    with pytest.raises(InvalidArgument):
        block_hashes([-1], 512)
