"""Routing choices on hand-made clusters: DualMap's SLO-aware rule and every baseline."""

from __future__ import annotations

import pytest

from kvstore.router.policy import (
    CacheAffinity,
    ConsistentHash,
    DualMap,
    LeastLoaded,
    MinTTFT,
    Prompt,
    RoundRobin,
    make_policy,
)
from kvstore.router.predictor import TTFTPredictor
from kvstore.router.state import Cluster

BLOCK = 512
PROMPT_BLOCKS = list(range(100, 108))  # 8 blocks = 4096 tokens
PROMPT = Prompt("r1", PROMPT_BLOCKS, 8 * BLOCK, ("a", "b"), key_blocks=1)
SLO_S = 5.0


def make_cluster(pending: dict[str, float], cached: dict[str, int] | None = None) -> Cluster:
    """Workers with given pending tokens; ``cached[w]`` = leading prompt blocks w holds.

    Predictor: 1e-4 s per uncached token, cached tokens and overhead free, so 10k pending tokens
    is 1 s of queue and the 4096-token prompt costs 0.41 s uncached.
    """
    cluster = Cluster(TTFTPredictor(1e-4, 0.0, 0.0), BLOCK)
    for worker, tokens in pending.items():
        state = cluster.add(worker, 1_000_000)
        state.pending_tokens = tokens
        state.index.touch(PROMPT_BLOCKS[: (cached or {}).get(worker, 0)])
    return cluster


def test_affinity_kept_while_predicted_ttft_meets_the_slo():
    # a holds the whole prefix but has 4.5 s queued; b is idle. 4.5 s <= 5 s: stay on a.
    cluster = make_cluster({"a": 45_000, "b": 0}, cached={"a": 8})
    choice = DualMap(SLO_S).choose(PROMPT, cluster)
    assert (choice.worker, choice.reason, choice.hotspot) == ("a", "affinity", False)
    assert choice.cached_tokens == 8 * BLOCK
    assert choice.predicted_ttft_s == pytest.approx(4.5)


def test_affinity_followed_to_the_second_candidate_too():
    cluster = make_cluster({"a": 0, "b": 30_000}, cached={"b": 5})
    assert DualMap(SLO_S).choose(PROMPT, cluster).worker == "b"


def test_switch_to_other_candidate_when_affinity_would_break_the_slo():
    # a: 5.2 s of queue > SLO; b: recompute everything but 0.41 s.
    cluster = make_cluster({"a": 52_000, "b": 0}, cached={"a": 8})
    choice = DualMap(SLO_S).choose(PROMPT, cluster)
    assert (choice.worker, choice.reason, choice.hotspot) == ("b", "slo-switch", False)
    assert choice.cached_tokens == 0


def test_both_over_slo_takes_the_lower_and_flags_a_hotspot():
    cluster = make_cluster({"a": 70_000, "b": 60_000}, cached={"a": 8})
    choice = DualMap(SLO_S).choose(PROMPT, cluster)
    assert (choice.worker, choice.reason, choice.hotspot) == ("b", "both-over-slo", True)


def test_headroom_moves_the_switch_point():
    cluster = make_cluster({"a": 45_000, "b": 0}, cached={"a": 8})
    assert DualMap(SLO_S, headroom=0.8).choose(PROMPT, cluster).worker == "b"


def test_equal_cache_means_power_of_two_choices():
    cluster = make_cluster({"a": 20_000, "b": 10_000}, cached={"a": 1, "b": 1})
    assert DualMap(SLO_S).choose(PROMPT, cluster).worker == "b"


def test_dualmap_never_leaves_its_two_candidates():
    # c is idle and holds the prefix, but it is not a candidate of this prompt.
    cluster = make_cluster({"a": 60_000, "b": 70_000, "c": 0}, cached={"c": 8})
    assert DualMap(SLO_S).choose(PROMPT, cluster).worker in {"a", "b"}


def test_consistent_hash_takes_the_first_candidate_whatever_the_load():
    cluster = make_cluster({"a": 1e9, "b": 0})
    assert ConsistentHash().choose(PROMPT, cluster).worker == "a"


def test_round_robin_cycles_over_sorted_workers():
    cluster = make_cluster({"b": 0, "a": 0, "c": 0})
    rr = RoundRobin()
    assert [rr.choose(PROMPT, cluster).worker for _ in range(4)] == ["a", "b", "c", "a"]


def test_least_loaded_ignores_the_cache():
    cluster = make_cluster({"a": 1_000, "b": 500, "c": 2_000}, cached={"a": 8})
    assert LeastLoaded().choose(PROMPT, cluster).worker == "b"


def test_cache_affinity_takes_the_longest_prefix_whatever_the_load():
    cluster = make_cluster({"a": 90_000, "b": 0, "c": 0}, cached={"a": 6, "b": 2})
    assert CacheAffinity().choose(PROMPT, cluster).worker == "a"


def test_cache_affinity_ignores_the_hot_shared_prefix():
    # The first block is shared by everyone (key_blocks=2): holding only it is no affinity, so
    # the least loaded worker wins instead of the one that happened to cache the system prompt.
    prompt = Prompt("r2", PROMPT_BLOCKS, 8 * BLOCK, ("a", "b"), key_blocks=2)
    cluster = make_cluster({"a": 9_000, "b": 3_000, "c": 5_000}, cached={"a": 1})
    assert CacheAffinity().choose(prompt, cluster).worker == "b"
    cluster = make_cluster({"a": 9_000, "b": 3_000, "c": 5_000}, cached={"a": 2})
    assert CacheAffinity().choose(prompt, cluster).worker == "a"


def test_min_ttft_weighs_cache_against_queue():
    # a: 0.3 s queue + nothing to compute; b: idle but recompute 0.41 s; c: 0.2 s + 0.41 s.
    cluster = make_cluster({"a": 3_000, "b": 0, "c": 2_000}, cached={"a": 8})
    assert MinTTFT().choose(PROMPT, cluster).worker == "a"
    cluster.workers["a"].pending_tokens = 5_000
    assert MinTTFT().choose(PROMPT, cluster).worker == "b"


def test_make_policy_builds_every_named_policy():
    from kvstore.router.config import POLICIES

    assert {make_policy(name, SLO_S, 1.0).name for name in POLICIES} == set(POLICIES)
