"""deploy/docker/Dockerfile against the project (no Docker engine here: checked statically)."""

from __future__ import annotations

import json
import tomllib

from deploy_manifests import ROOT, dockerfile_instructions, one, render
from packaging.requirements import Requirement

from kvstore.cli.main import build_parser
from kvstore.config import NodeConfig

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKER_TEXT = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()


def _args() -> dict[str, str]:
    """ARG defaults."""
    out = {}
    for instr, rest in dockerfile_instructions():
        if instr == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            out[name] = value
    return out


def _json_form(instr: str) -> list[str]:
    [value] = [a for i, a in dockerfile_instructions() if i == instr]
    return json.loads(value)   # exec form: no shell between the container runtime and kvstore


def _requirement(name: str, reqs: list[str]) -> Requirement:
    return next(r for r in map(Requirement, reqs) if r.name == name)


def test_entrypoint_is_the_project_script() -> None:
    assert _json_form("ENTRYPOINT") == ["kvstore"]
    assert PYPROJECT["project"]["scripts"]["kvstore"] == "kvstore.cli.main:main"


def test_default_command_is_a_valid_serve() -> None:
    args = build_parser().parse_args(_json_form("CMD"))
    assert args.command == "serve" and args.host == "0.0.0.0"


def test_copied_sources_exist_and_cover_the_packages() -> None:
    copies = [rest.split() for instr, rest in dockerfile_instructions()
              if instr == "COPY" and not rest.startswith("--from")]
    sources = {s for c in copies for s in c[:-1]}
    for s in sources:
        assert (ROOT / s).exists(), f"COPY {s}: no such file in the repository"
    wheres = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["where"]
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"]}
    needed |= {"kvstore"} | {w for w in wheres if w != "."}
    assert needed <= sources, f"not copied: {needed - sources}"
    # .dockerignore ignores everything but what is re-included: each source must be
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:] and "*" in ignore
    for s in sources:
        assert f"!{s}" in ignore or f"!{s}/" in ignore, f"{s} excluded by .dockerignore"


def test_torch_pin_matches_setup_and_project_range() -> None:
    torch = _args()["TORCH_VERSION"]
    # the lock scripts/setup.sh installs (and its constraint) pin the same torch, CPU build
    lock = (ROOT / "requirements" / "lock.txt").read_text()
    assert f"\ntorch=={torch}+cpu \\\n" in lock
    assert f"torch=={torch}+cpu" in (ROOT / "requirements" / "constraints.txt").read_text()
    assert _requirement("torch", PYPROJECT["project"]["dependencies"]).specifier.contains(torch)
    assert _args()["TORCH_INDEX_URL"].endswith("/cpu")   # the default image is the CPU build
    assert 'pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in DOCKER_TEXT


def test_ray_version_matches_kuberay_and_project_range() -> None:
    ray = _args()["RAY_VERSION"]
    raycluster = one(render("kuberay"), "RayCluster")
    assert raycluster["spec"]["rayVersion"] == ray
    extra = PYPROJECT["project"]["optional-dependencies"]["ray"]
    assert _requirement("ray", extra).specifier.contains(ray)


def test_base_image_and_exposed_ports() -> None:
    assert _args()["PYTHON_IMAGE"] == "python:3.11-slim"   # CI's Python
    [exposed] = [rest for instr, rest in dockerfile_instructions() if instr == "EXPOSE"]
    d = NodeConfig()
    assert sorted(map(int, exposed.split())) == sorted([d.port, d.data_port, d.metrics_port])


def test_runs_as_non_root() -> None:
    [user] = [rest for instr, rest in dockerfile_instructions() if instr == "USER"]
    uid = user.partition(":")[0]
    assert uid.isdigit() and int(uid) != 0   # numeric, so runAsNonRoot can verify it
    assert f"--uid {uid}" in DOCKER_TEXT

