"""Prefix hotness tree: hot prefixes get longer keys, cooled ones fall back, cold leaves go."""

from __future__ import annotations

from kvstore.router.hotness import HotnessTree

WORKERS = 8  # expand above 2/8 = 25% of traffic, collapse below 1/8 = 12.5%


def test_shared_first_block_gets_a_longer_key():
    tree = HotnessTree(half_life_s=60.0)
    lengths = [tree.observe([0, 1000 + i, 5000 + i], float(i), WORKERS) for i in range(50)]
    # Until the shared block has been seen min_expand_count (8) times it is not "hot" yet.
    assert lengths[:7] == [1] * 7
    assert set(lengths[8:]) == {2}
    assert tree.expanded_prefixes() == [(0,)]
    assert tree.key_length([0, 77, 78]) == 2


def test_a_hot_second_level_expands_again():
    tree = HotnessTree(half_life_s=60.0)
    for i in range(200):
        # Half of all traffic shares (0, 7); the rest only shares block 0.
        second = 7 if i % 2 else 1000 + i
        tree.observe([0, second, 9000 + i], i * 0.1, WORKERS)
    assert tree.key_length([0, 7, 12345]) == 3
    assert tree.key_length([0, 8, 12345]) == 2


def test_cooled_prefix_collapses_back():
    tree = HotnessTree(half_life_s=10.0)
    for i in range(100):
        tree.observe([5, 100 + i], i * 0.01, WORKERS)
    assert tree.key_length([5, 1]) == 2
    # Later traffic moves elsewhere; after a few half-lives block 5 carries < 1/8 of it.
    for i in range(200):
        tree.observe([6 + i % 50, 100 + i], 60.0 + i * 0.5, WORKERS)
    tree.observe([5, 1], 170.0, WORKERS)
    assert tree.key_length([5, 1]) == 1


def test_single_worker_never_expands_and_empty_prompt_has_no_key():
    tree = HotnessTree()
    assert {tree.observe([0, i], float(i), 1) for i in range(50)} == {1}
    assert tree.observe([], 0.0, WORKERS) == 0


def test_key_never_longer_than_the_prompt():
    tree = HotnessTree()
    for i in range(50):
        assert tree.observe([0, 1], float(i), WORKERS) <= 2


def test_sweep_drops_cold_leaves_only():
    tree = HotnessTree(half_life_s=1.0)
    lengths = [tree.observe([0, 1000 + i], i * 0.001, WORKERS) for i in range(100)]
    leaves = lengths.count(2)  # requests seen once block 0 had expanded
    assert leaves > 80
    assert tree.size() == 1 + leaves
    assert tree.sweep(now_s=60.0) == leaves
    assert tree.expanded_prefixes() == [(0,)]
