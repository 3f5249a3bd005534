"""Import direction (STYLE.md habit 2, kvstore/README.md), checked by parsing every source file,
and generated protobuf code in sync with proto/ (scripts/gen_proto.sh --check)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package name -> directory that holds it
PACKAGES = {"kvstore": ROOT / "kvstore", "kvstore_client": ROOT / "client" / "kvstore_client",
            "kvstore_kernels": ROOT / "kernels" / "kvstore_kernels"}
GENERATED = ROOT / "kvstore" / "v1"


def module_name(path: Path) -> str:
    for pkg, root in PACKAGES.items():
        if path.is_relative_to(root):
            parts = [pkg, *path.relative_to(root).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(path)


def imported_modules(path: Path) -> set[str]:
    """Every module a file may import: import statements anywhere in the file (also inside
    functions), `from a import b` as both a and a.b, and importlib.import_module("...")."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name)
                       and node.func.id in ("import_module", "__import__")))):
            found.add(node.args[0].value)
    return found


def sources(pkg: str, under: str = "") -> list[Path]:
    root = PACKAGES[pkg] / under if under else PACKAGES[pkg]
    files = [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))
    return [f for f in files if not f.is_relative_to(GENERATED)]


def is_within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{f.relative_to(ROOT)} imports {name}" for f in files
            for name in sorted(imported_modules(f)) if is_within(name, forbidden)]


# ---- the checker itself ---------------------------------------------------------------------
def test_the_checker_sees_real_imports():
    """Guards against a vacuous pass: known edges of the tree must be found."""
    assert all(sources(pkg) for pkg in PACKAGES)
    assert "kvstore.tiers.manager" in imported_modules(ROOT / "kvstore/server/core.py")
    assert "kvstore.keys" in imported_modules(PACKAGES["kvstore_client"] / "aio.py")
    cli = imported_modules(ROOT / "kvstore/cli/main.py")
    assert "kvstore.demo" in cli and "kvstore.cli.serve" in cli  # importlib + lazy imports


def test_relative_imports_are_resolved(tmp_path, monkeypatch):
    pkg = tmp_path / "kvstore"
    (pkg / "tiers").mkdir(parents=True)
    f = pkg / "tiers" / "x.py"
    f.write_text("from ..server import core\nfrom . import pool\nfrom .. import tiers\n")
    monkeypatch.setitem(PACKAGES, "kvstore", pkg)
    assert {"kvstore.server.core", "kvstore.tiers.pool", "kvstore.tiers"} <= imported_modules(f)


# ---- the rules ------------------------------------------------------------------------------
def test_kernels_import_neither_server_nor_client():
    assert violations(sources("kvstore_kernels"), ("kvstore", "kvstore_client")) == []


def test_client_never_imports_node_side_packages():
    forbidden = ("kvstore.server", "kvstore.tiers", "kvstore.cli", "kvstore.bench",
                 "kvstore.cluster")
    assert violations(sources("kvstore_client"), forbidden) == []


def test_tiers_never_import_the_service():
    assert violations(sources("kvstore", "tiers"), ("kvstore.server", "kvstore_client")) == []


def test_server_never_imports_the_client_or_cluster_code():
    assert violations(sources("kvstore", "server"), ("kvstore_client", "kvstore.cluster")) == []


def test_only_applications_inside_kvstore_import_the_client():
    # cluster/ runs beside a node (membership agent, rebalancer) and talks to other nodes as a
    # client; it is wired in by cli/serve.py, never by server/ or tiers/. chaos/ drives a
    # cluster from outside, as its clients do.
    allowed = [PACKAGES["kvstore"] / "cli", PACKAGES["kvstore"] / "bench",
               PACKAGES["kvstore"] / "cluster", PACKAGES["kvstore"] / "demo.py",
               PACKAGES["kvstore"] / "chaos"]
    files = [f for f in sources("kvstore") if not any(f.is_relative_to(a) for a in allowed)]
    assert violations(files, ("kvstore_client",)) == []


@pytest.mark.parametrize("shared", ["keys.py", "chunk.py", "wire.py", "errors.py",
                                    "dataplane.py", "ring.py", "codecs"])
def test_shared_modules_import_nothing_node_side(shared):
    if not (PACKAGES["kvstore"] / shared).exists():
        pytest.fail(f"kvstore/{shared} is listed as shared in kvstore/README.md but is missing")
    forbidden = ("kvstore.server", "kvstore.tiers", "kvstore.cli", "kvstore.bench")
    assert violations(sources("kvstore", shared), forbidden) == []


# ---- generated code -------------------------------------------------------------------------
def test_generated_protobuf_code_matches_protos():
    pytest.importorskip("grpc_tools", reason="grpc_tools is a dev dependency (pip install "
                        "-e .[dev])")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}"
                                f"{os.environ.get('PATH', '')}")
    proc = subprocess.run(["bash", "scripts/gen_proto.sh", "--check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "matches" in proc.stdout
