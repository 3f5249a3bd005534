"""gather_rows / scatter_rows: exact copies vs reference, round trip, validation."""

import pytest
import torch

from kvstore_kernels.errors import KernelInputError
from kvstore_kernels.rows import gather_rows, gather_rows_ref, scatter_rows, scatter_rows_ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8]


def _kv(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.int8:
        return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)
    return torch.randn(shape, generator=g).to(dtype)


@pytest.mark.parametrize("idx_dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gather_matches_reference(dtype, idx_dtype):
    kv = _kv((2, 3, 40, 72), dtype)  # D = 72: a masked tail in the D tile
    idx = torch.tensor([39, 0, 7, 8, 21, 5, 33, 1, 2, 3, 4, 6, 9, 10, 11, 12, 13, 30],
                       dtype=idx_dtype)  # unsorted, 18 > one block of indices
    out = gather_rows(kv, idx, backend="triton")
    assert out.shape == (2, 3, 18, 72) and out.dtype == dtype
    assert torch.equal(out, gather_rows_ref(kv, idx))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scatter_matches_reference_and_round_trips(dtype):
    kv = _kv((1, 2, 50, 64), dtype)
    idx = torch.tensor([49, 3, 17, 0, 25])
    rows = _kv((1, 2, 5, 64), dtype, seed=1)
    expected = scatter_rows_ref(kv.clone(), idx, rows)
    returned = scatter_rows(kv, idx, rows, backend="triton")
    assert returned is kv
    assert torch.equal(kv, expected)
    assert torch.equal(gather_rows(kv, idx, backend="triton"), rows)


def test_scatter_leaves_other_rows_untouched():
    kv = _kv((1, 3, 30, 32), torch.float16)
    before = kv.clone()
    idx = torch.tensor([2, 11, 29], dtype=torch.int32)
    scatter_rows(kv, idx, torch.zeros(1, 3, 3, 32, dtype=torch.float16), backend="triton")
    untouched = torch.ones(30, dtype=torch.bool)
    untouched[idx.long()] = False
    assert torch.equal(kv[:, :, untouched], before[:, :, untouched])
    assert (kv[:, :, idx.long()] == 0).all()


def test_rows_3d_and_strided():
    kv = _kv((1, 20, 2, 32), torch.float32).transpose(1, 2)  # [B, H, T, D] view of [B, T, H, D]
    idx = torch.tensor([4, 0, 19])
    assert torch.equal(gather_rows(kv[0], idx, backend="triton"), gather_rows_ref(kv[0], idx))
    rows = _kv((2, 3, 32), torch.float32, seed=2)
    expected = scatter_rows_ref(kv[0].clone(), idx, rows)
    scatter_rows(kv[0], idx, rows, backend="triton")
    assert torch.equal(kv[0], expected)


def test_empty_idx():
    kv = _kv((1, 2, 10, 16), torch.float16)
    idx = torch.empty(0, dtype=torch.int64)
    assert gather_rows(kv, idx, backend="triton").shape == (1, 2, 0, 16)
    before = kv.clone()
    scatter_rows(kv, idx, kv[:, :, :0], backend="triton")
    assert torch.equal(kv, before)


@pytest.mark.parametrize(
    ("idx", "message"),
    [
        (torch.tensor([0, 10]), r"idx values must be in \[0, 10\).*max 10"),
        (torch.tensor([-1, 3]), r"idx values must be in \[0, 10\).*min -1"),
        (torch.tensor([1.0, 2.0]), "idx dtype"),
        (torch.tensor([[1, 2]]), "idx must be a 1-D tensor"),
    ],
    ids=["too-large", "negative", "float", "2-d"],
)
def test_gather_and_scatter_reject_bad_idx(idx, message):
    kv = torch.zeros(1, 2, 10, 16)
    with pytest.raises(KernelInputError, match=message):
        gather_rows(kv, idx)
    rows = torch.zeros(1, 2, max(idx.numel(), 1), 16)[:, :, : idx.numel()]
    with pytest.raises(KernelInputError, match=message):
        scatter_rows(kv, idx, rows)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"idx": torch.tensor([1, 4, 1])}, "duplicate"),
        ({"rows": torch.zeros(1, 2, 2, 16)}, r"rows must have shape \(1, 2, 3, 16\)"),
        ({"rows": torch.zeros(2, 3, 16)}, r"rows must have shape \(1, 2, 3, 16\)"),
        ({"rows": torch.zeros(1, 2, 3, 16, dtype=torch.float16)}, "rows dtype"),
        ({"kv": torch.zeros(1, 2, 10, 16, dtype=torch.float64)}, "kv dtype"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_scatter_rejects_bad_input(kwargs, message):
    args = {"kv": torch.zeros(1, 2, 10, 16), "idx": torch.tensor([1, 4, 6]),
            "rows": torch.zeros(1, 2, 3, 16)} | kwargs
    with pytest.raises(KernelInputError, match=message):
        scatter_rows(**args)


def test_gather_and_scatter_with_two_d_tiles():
    kv = _kv((1, 2, 12, 160), torch.float16)  # D = 160 > one 128-wide tile
    idx = torch.tensor([11, 0, 6])
    assert torch.equal(gather_rows(kv, idx, backend="triton"), gather_rows_ref(kv, idx))
    rows = _kv((1, 2, 3, 160), torch.float16, seed=3)
    expected = scatter_rows_ref(kv.clone(), idx, rows)
    assert torch.equal(scatter_rows(kv, idx, rows, backend="triton"), expected)
