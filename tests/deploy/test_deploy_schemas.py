"""Every rendered manifest against the Kubernetes API schemas, offline.

Core kinds: the strict JSON schemas (unknown fields rejected) that the kubernetes-validate wheel
ships, generated from the Kubernetes OpenAPI specs, at the oldest and newest version we support.
KubeRay kinds (RayCluster, RayJob): no package ships the KubeRay CRDs, so their top level is
checked against the small schema below (the ray.io/v1 fields we use, from the KubeRay API) and
their pod templates against the core PodTemplateSpec schema.
"""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest
from deploy_manifests import kustomizations, render

K8S_VERSIONS = ("1.30", "1.37")  # gRPC probes are GA since 1.27
KUBERAY_KINDS = {"RayCluster", "RayJob"}

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_TEMPLATE = {"type": "object", "required": ["spec"]}
_HEAD = {"type": "object", "additionalProperties": False, "required": ["template"],
         "properties": {"rayStartParams": _STR_MAP, "template": _TEMPLATE,
                        "serviceType": {"type": "string"}, "enableIngress": {"type": "boolean"}}}
_WORKER = {"type": "object", "additionalProperties": False, "required": ["groupName", "template"],
           "properties": {"groupName": {"type": "string"}, "replicas": {"type": "integer"},
                          "minReplicas": {"type": "integer"}, "maxReplicas": {"type": "integer"},
                          "rayStartParams": _STR_MAP, "template": _TEMPLATE}}
_META = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
KUBERAY_SCHEMAS = {
    "RayCluster": {
        "type": "object", "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayCluster"},
            "metadata": _META,
            "spec": {"type": "object", "additionalProperties": False,
                     "required": ["headGroupSpec"],
                     "properties": {"rayVersion": {"type": "string"}, "headGroupSpec": _HEAD,
                                    "workerGroupSpecs": {"type": "array", "items": _WORKER},
                                    "enableInTreeAutoscaling": {"type": "boolean"}}}}},
    "RayJob": {
        "type": "object", "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"}, "metadata": _META,
            "spec": {"type": "object", "additionalProperties": False, "required": ["entrypoint"],
                     "properties": {"entrypoint": {"type": "string"},
                                    "clusterSelector": _STR_MAP, "rayClusterSpec": {},
                                    "shutdownAfterJobFinishes": {"type": "boolean"},
                                    "runtimeEnvYAML": {"type": "string"}},
                     "oneOf": [{"required": ["clusterSelector"]},
                               {"required": ["rayClusterSpec"]}]}}},
}


def _all_docs() -> list[tuple[str, dict]]:
    return [(rel, d) for rel in kustomizations() for d in render(rel)]


def test_every_kustomization_renders_the_expected_kinds() -> None:
    kinds = {rel: sorted({d["kind"] for d in render(rel)}) for rel in kustomizations()}
    assert {"base", "redis", "kuberay", "overlays/gpu", "overlays/tls",
            "overlays/gpu-tls"} <= set(kinds)
    assert kinds["base"] == ["ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget",
                             "Service", "ServiceAccount", "StatefulSet"]
    assert kinds["kuberay"] == ["ConfigMap", "Deployment", "RayCluster", "RayJob", "Service"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_manifests_match_kubernetes_schemas(version: str) -> None:
    checked = 0
    for rel, doc in _all_docs():
        if doc["kind"] in KUBERAY_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{rel}: {doc['kind']}/{doc['metadata']['name']} invalid for "
                        f"Kubernetes {version} at {list(exc.absolute_path)}: {exc.message}")
        checked += 1
    assert checked >= 40


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kuberay_manifests_structure_and_pod_templates(version: str) -> None:
    docs = [d for rel, d in _all_docs() if d["kind"] in KUBERAY_KINDS]
    assert sorted(d["kind"] for d in docs) == ["RayCluster", "RayJob"]
    for doc in docs:
        jsonschema.validate(doc, KUBERAY_SCHEMAS[doc["kind"]])
        if doc["kind"] != "RayCluster":
            continue
        spec = doc["spec"]
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            pod_template = {"apiVersion": "v1", "kind": "PodTemplate",
                            "metadata": {"name": "check"}, "template": group["template"]}
            kubernetes_validate.validate(pod_template, version, strict=True)


def test_schema_check_rejects_a_misspelt_field() -> None:
    """The validation is strict: a typo in a field name is an error, not silently dropped."""
    sts = copy.deepcopy(next(d for d in render("base") if d["kind"] == "StatefulSet"))
    c = sts["spec"]["template"]["spec"]["containers"][0]
    c["readinesProbe"] = c.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSIONS[-1], strict=True)
    job = copy.deepcopy(next(d for d in render("kuberay") if d["kind"] == "RayJob"))
    job["spec"]["entryPoint"] = job["spec"].pop("entrypoint")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, KUBERAY_SCHEMAS["RayJob"])
