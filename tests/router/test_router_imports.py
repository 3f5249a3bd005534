"""Dependencies point one way: ring <- router <- sim <- bench; the router never imports the sim."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "kvstore"

FORBIDDEN = {
    "ring.py": ("kvstore.router", "kvstore.sim", "kvstore.bench"),
    "router": ("kvstore.sim", "kvstore.bench"),
    "sim": ("kvstore.bench", "kvstore.router.service", "grpc"),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("where", sorted(FORBIDDEN))
def test_no_backward_imports(where):
    target = PKG / where
    files = [target] if target.is_file() else sorted(target.glob("*.py"))
    assert files
    for path in files:
        bad = {
            m for m in _imports(path) for f in FORBIDDEN[where] if m == f or m.startswith(f + ".")
        }
        assert not bad, f"{path.name} imports {sorted(bad)}"
