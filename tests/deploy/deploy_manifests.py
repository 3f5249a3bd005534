"""Rendering and reading the deployment files under deploy/ for the tests in this directory.

Kustomizations are rendered by the real kustomize built into kubectl (`kubectl kustomize DIR`,
offline: local directories only), exactly as `kubectl apply -k` would render them.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
# What `$(POD_NAME)`-style references resolve to in the tests (the downward API in a pod).
FIELD_VALUES = {"metadata.name": "kvstore-0", "metadata.namespace": "kv-test"}


def kustomizations() -> list[str]:
    """Every kustomization root under deploy/k8s (components are rendered through overlays)."""
    out = []
    for f in sorted(K8S.rglob("kustomization.yaml")):
        if yaml.safe_load(f.read_text()).get("kind", "Kustomization") == "Kustomization":
            out.append(f.parent.relative_to(K8S).as_posix())
    return out


@functools.cache
def _render(rel: str) -> tuple[str, ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, ("kubectl (with its built-in kustomize) is needed to render deploy/k8s; "
                     "every machine kind of this project has it (Debian package kubectl)")
    out = subprocess.run([kubectl, "kustomize", str(K8S / rel)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {rel} failed:\n{out.stderr}"
    return tuple(yaml.safe_dump(d) for d in yaml.safe_load_all(out.stdout) if d)


def render(rel: str) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k deploy/k8s/REL` would send (fresh copies)."""
    return [yaml.safe_load(d) for d in _render(rel)]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in pod_spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"expected one container {name!r}"
    return found[0]


def resolved_env(c: dict[str, Any]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: fieldRefs, then $(VAR) expansion."""
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "valueFrom" in e:
            ref = e["valueFrom"].get("fieldRef")
            assert ref, f"env {e['name']}: only fieldRef sources are expected here"
            env[e["name"]] = FIELD_VALUES[ref["fieldPath"]]
        else:  # $(VAR) refers to variables defined earlier in the list, as in Kubernetes
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], e.get("value", ""))
    return env


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """matchLabels / matchExpressions (In, NotIn, Exists, DoesNotExist) against a label set."""
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for ex in selector.get("matchExpressions", []):
        key, op, values = ex["key"], ex["operator"], ex.get("values", [])
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def quantity_bytes(q: str | int) -> int:
    """A Kubernetes memory/storage quantity (binary or decimal suffix) in bytes."""
    units = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20,
             "Gi": 2**30, "Ti": 2**40}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kMGT]i?|Ki)?", str(q))
    assert m, f"unexpected quantity {q!r}"
    return int(float(m.group(1)) * units[m.group(2) or ""])


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        pending += raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        lines.append(pending.strip())
        pending = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "")
            for ln in lines]
