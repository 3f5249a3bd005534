"""deviation_scores / deviation_topk: triton vs reference, planted deviations, candidates, k."""

import pytest
import torch

from kvstore_kernels.errors import KernelInputError
from kvstore_kernels.select import (
    deviation_scores,
    deviation_scores_ref,
    deviation_topk,
    random_select,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _pair(shape, dtype, seed=0, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    new = torch.randn(shape, generator=g)
    old = new + noise * torch.randn(shape, generator=g)
    return new.to(dtype), old.to(dtype)


@pytest.mark.parametrize(
    "shape", [(1, 3, 45, 64), (2, 2, 21, 160)], ids=["B1-D64", "B2-D160-two-tiles"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scores_match_reference(dtype, shape, assert_close):
    new, old = _pair(shape, dtype)
    scores = deviation_scores(new, old, backend="triton")
    assert scores.dtype == torch.float32 and scores.shape == (shape[2],)
    assert_close(scores, deviation_scores_ref(new, old), "scores")


def test_scores_reference_is_the_definition():
    new, old = _pair((2, 3, 7, 8), torch.float32)
    expected = torch.tensor([((new[:, :, t] - old[:, :, t]) ** 2).sum().item() for t in range(7)])
    torch.testing.assert_close(deviation_scores_ref(new, old), expected)


def test_scores_strided_and_3d(assert_close):
    new, old = _pair((1, 30, 2, 32), torch.float16)
    new, old = new.transpose(1, 2), old.transpose(1, 2)
    assert_close(deviation_scores(new, old, backend="triton"), deviation_scores_ref(new, old),
                 "scores")
    assert_close(deviation_scores(new[0], old[0], backend="triton"),
                 deviation_scores_ref(new[0], old[0]), "scores")


def _planted(T=40, planted=(3, 17, 29, 38), dtype=torch.float16):
    new, old = _pair((1, 2, T, 64), dtype, noise=0.01)
    for rank, t in enumerate(planted):
        old[:, :, t] += 1.0 + rank  # distinct, far above the noise
    return new, old


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_topk_finds_planted_tokens_sorted(backend):
    new, old = _planted()
    idx, scores = deviation_topk(new, old, 3, backend=backend)
    assert idx.dtype == torch.int64
    assert idx.tolist() == [17, 29, 38]  # the three largest plants, ascending
    assert scores.argmax().item() == 38


def test_candidates_exclude_tokens_but_keep_real_scores():
    new, old = _planted()
    candidates = torch.ones(40, dtype=torch.bool)
    candidates[38] = False  # the largest deviation is not a candidate (e.g. uncached suffix)
    idx, scores = deviation_topk(new, old, 3, candidates=candidates, backend="triton")
    assert idx.tolist() == [3, 17, 29]
    assert scores[38] == scores.max() and torch.isfinite(scores).all()


def test_triton_and_torch_select_the_same_tokens():
    new, old = _pair((1, 3, 64, 32), torch.float32, seed=7)
    candidates = torch.rand(64, generator=torch.Generator().manual_seed(8)) < 0.7
    a, _ = deviation_topk(new, old, 10, candidates, backend="triton")
    b, _ = deviation_topk(new, old, 10, candidates, backend="torch")
    assert a.tolist() == b.tolist()
    assert candidates[a].all()


def test_k_zero_returns_empty():
    new, old = _pair((1, 2, 12, 32), torch.float32)
    idx, scores = deviation_topk(new, old, 0, backend="triton")
    assert idx.shape == (0,) and idx.dtype == torch.int64
    assert scores.shape == (12,)


def test_k_equal_to_candidates_selects_all_of_them():
    new, old = _pair((1, 2, 12, 32), torch.float32)
    candidates = torch.zeros(12, dtype=torch.bool)
    candidates[[1, 5, 6]] = True
    idx, _ = deviation_topk(new, old, 3, candidates, backend="triton")
    assert idx.tolist() == [1, 5, 6]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 13}, r"k must be in \[0, 12\]"),
        ({"k": -1}, r"k must be in \[0, 12\]"),
        ({"k": True}, "k must be an int"),
        ({"k": 2.0}, "k must be an int"),
        ({"k": 3, "candidates": torch.tensor([True] * 2 + [False] * 10)}, r"k must be in \[0, 2\]"),
        ({"candidates": torch.ones(12)}, "candidates dtype"),
        ({"candidates": torch.ones(11, dtype=torch.bool)}, "candidates must have 12 entries"),
        ({"old": torch.zeros(1, 2, 12, 16)}, "old shape"),
        ({"old": torch.zeros(1, 2, 12, 32, dtype=torch.float16)}, "old dtype"),
        ({"new": torch.zeros(1, 2, 12, 32, dtype=torch.int32),
          "old": torch.zeros(1, 2, 12, 32, dtype=torch.int32)}, "new dtype"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_topk_rejects_bad_input(kwargs, message):
    args = {"new": torch.zeros(1, 2, 12, 32), "old": torch.zeros(1, 2, 12, 32), "k": 1} | kwargs
    with pytest.raises(KernelInputError, match=message):
        deviation_topk(**args)


def test_random_select_is_a_seeded_sample_of_candidates():
    candidates = torch.arange(50) % 3 != 0
    picks = random_select(50, 12, candidates, torch.Generator().manual_seed(0))
    again = random_select(50, 12, candidates, torch.Generator().manual_seed(0))
    assert picks.tolist() == again.tolist()
    assert picks.tolist() == sorted(set(picks.tolist())) and len(picks) == 12
    assert candidates[picks].all()
    assert random_select(50, 0, candidates).shape == (0,)
    assert random_select(5, 5).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(KernelInputError, match=r"k must be in \[0, 33\]"):
        random_select(50, 34, candidates)
