"""Kernel tests run the Triton kernels on CPU through triton's interpreter.

TRITON_INTERPRET must be set before any kvstore_kernels kernel module is imported: @triton.jit
picks interpreted or compiled mode when the kernel is defined (see kvstore_kernels/_backend.py).
On a GPU machine, run the compiled kernels with `TRITON_INTERPRET=0 pytest -m gpu tests/kernels`.

The root tests/conftest.py sets the flag before any test module is imported (other directories
import the kernels too) and restores it once collection ends, so other test directories keep
backend "auto" -> torch on CPU; here it is set again around each test.
"""

import os

import pytest
import torch

# Read while collecting, when the root conftest has the flag set ("1", or "0" given on a GPU).
_KERNEL_TESTS_VALUE = os.environ.get("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _triton_interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", _KERNEL_TESTS_VALUE)

# (atol, rtol) of the triton kernel against the plain-torch reference, per kernel and dtype.
# rope: both sides compute in fp32 and round once to the output dtype, so allow about one ulp of
#   that dtype. scores: fp32 sums of exact fp32 differences; only the summation order differs.
# compose: rerotating keys from p0 to p1 vs RoPE at p1 directly (positions < 2048); each fp32
#   angle p * theta carries up to ~1.2e-4 rad of rounding, plus the output rounding.
# rows are copies and are compared exactly (torch.equal), so they have no entry.
TOLERANCES = {
    "rope": {
        torch.float32: (1e-5, 1e-5),
        torch.float16: (1e-3, 2e-3),
        torch.bfloat16: (8e-3, 1.6e-2),
    },
    "scores": {
        torch.float32: (1e-4, 1e-5),
        torch.float16: (1e-4, 1e-5),
        torch.bfloat16: (1e-4, 1e-5),
    },
    "compose": {
        torch.float32: (2e-3, 1e-3),
        torch.float16: (1e-2, 4e-3),
        torch.bfloat16: (5e-2, 2e-2),
    },
}


@pytest.fixture
def assert_close():
    """assert_close(actual, expected, kernel) with the TOLERANCES entry for expected's dtype."""

    def check(actual: torch.Tensor, expected: torch.Tensor, kernel: str) -> None:
        atol, rtol = TOLERANCES[kernel][expected.dtype]
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)

    return check
