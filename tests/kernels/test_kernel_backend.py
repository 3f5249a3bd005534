"""Backend selection (kvstore_kernels._backend) and the package's import rule."""

import ast
from pathlib import Path

import pytest
import torch

import kvstore_kernels
from kvstore_kernels import _backend
from kvstore_kernels.errors import BackendUnavailableError, KernelError, KernelInputError
from kvstore_kernels.rope import _rerotate_kernel, rerotate_keys, rope_inv_freq
from kvstore_kernels.rows import gather_rows, scatter_rows
from kvstore_kernels.select import deviation_topk

CPU = torch.device("cpu")
PACKAGE_DIR = Path(kvstore_kernels.__file__).parent


def test_auto_picks_triton_in_interpreter_mode():
    assert _backend.select_backend("auto", CPU, _rerotate_kernel) == "triton"
    assert _backend.select_backend("triton", CPU, _rerotate_kernel) == "triton"
    assert _backend.select_backend("torch", CPU, _rerotate_kernel) == "torch"


def test_auto_picks_torch_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    assert _backend.select_backend("auto", CPU, _rerotate_kernel) == "torch"
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        _backend.select_backend("triton", CPU, _rerotate_kernel)


def test_kernel_defined_before_the_interpreter_flag_is_refused():
    class CompiledKernel:  # what @triton.jit returns without TRITON_INTERPRET=1
        pass

    for backend in ("auto", "triton"):
        with pytest.raises(BackendUnavailableError, match="set it before importing"):
            _backend.select_backend(backend, CPU, CompiledKernel())


def test_unknown_backend_is_an_input_error():
    with pytest.raises(KernelInputError, match="backend must be one of"):
        _backend.select_backend("cuda", CPU, _rerotate_kernel)


def test_error_hierarchy_has_one_root():
    assert issubclass(KernelInputError, KernelError) and issubclass(KernelInputError, ValueError)
    assert issubclass(BackendUnavailableError, KernelError)


def test_torch_backend_runs_everywhere(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    kv = torch.randn(1, 2, 8, 16)
    assert rerotate_keys(kv, torch.zeros(8, dtype=torch.int64), rope_inv_freq(16)).equal(kv)
    idx, _ = deviation_topk(kv, kv + 1, 2)
    assert idx.shape == (2,)
    rows = gather_rows(kv, torch.tensor([1, 3]))
    assert scatter_rows(kv.clone(), torch.tensor([1, 3]), rows).equal(kv)


def test_lazy_package_exports():
    assert kvstore_kernels.rerotate_keys is rerotate_keys
    with pytest.raises(AttributeError):
        _ = kvstore_kernels.no_such_kernel


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_kernels_import_neither_server_nor_client():
    files = sorted(PACKAGE_DIR.glob("*.py"))
    assert len(files) >= 5
    for path in files:
        for name in _imported_modules(path):
            top = name.split(".")[0]
            assert top not in ("kvstore", "kvstore_client"), f"{path.name} imports {name}"
