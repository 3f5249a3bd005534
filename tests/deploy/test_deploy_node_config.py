"""The StatefulSet deployments (base and overlays) against what the node actually accepts.

Each rendering is turned into the config its pod would run with: the container's args through the
real `kvstore serve` parser, the ConfigMap's file as the --config file, the container's KVSTORE_*
environment, all through kvstore.cli.serve.config_from_args. Ports, probes, volumes, resources and
the grace period are then checked against that config, so they fail when either side drifts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest
from deploy_manifests import (
    container,
    kustomizations,
    one,
    quantity_bytes,
    render,
    resolved_env,
    selects,
)

from kvstore.cli.main import build_parser
from kvstore.cli.serve import config_from_args
from kvstore.config import ENV_PREFIX, NodeConfig, load_config
from kvstore.server.node import SERVICE_NAME

NODE_RENDERS = [r for r in kustomizations() if r == "base" or r.startswith("overlays/")]
FIELDS = {f.name for f in fields(NodeConfig)}
STOP_GRACE_S = 5.0       # kvstore/cli/serve.py: node.stop(grace_s=5.0) after the drain
PROCESS_OVERHEAD = 1 << 30  # memory beyond the reserved CPU tier: interpreter, torch, gRPC


@dataclass
class NodePod:
    docs: list[dict[str, Any]]
    sts: dict[str, Any]
    pod: dict[str, Any]       # the pod template's spec
    c: dict[str, Any]         # the kvstore container
    env: dict[str, str]
    config: NodeConfig
    config_path: str          # --config as the pod sees it


def node_pod(rel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> NodePod:
    docs = render(rel)
    sts = one(docs, "StatefulSet", "kvstore")
    pod = sts["spec"]["template"]["spec"]
    c = container(pod, "kvstore")
    env = resolved_env(c)
    args = build_parser().parse_args(c["args"])   # SystemExit (a test error) on an unknown flag
    assert args.command == "serve" and args.config
    cm_name = next(v["configMap"]["name"] for v in pod["volumes"]
                   if v["name"] == _mount_for(c, args.config)["name"])
    cm = one(docs, "ConfigMap", cm_name)
    key = PurePosixPath(args.config).relative_to(_mount_for(c, args.config)["mountPath"])
    assert str(key) in cm["data"], f"--config {args.config}: no key {key} in ConfigMap {cm_name}"
    local = tmp_path / str(key)
    local.write_text(cm["data"][str(key)])
    for name in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config_path, args.config = args.config, str(local)
    return NodePod(docs, sts, pod, c, env, config_from_args(args), config_path)


def _mount_for(c: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mount a file path lies under (the longest mount path that contains it)."""
    mounts = [m for m in c.get("volumeMounts", [])
              if PurePosixPath(path).is_relative_to(m["mountPath"])]
    assert mounts, f"{path} is not on any mounted volume"
    return max(mounts, key=lambda m: len(m["mountPath"]))


@pytest.fixture(params=NODE_RENDERS)
def node(request: pytest.FixtureRequest, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> NodePod:
    return node_pod(request.param, tmp_path, monkeypatch)


def test_there_are_node_renders() -> None:
    assert NODE_RENDERS == ["base", "overlays/gpu", "overlays/gpu-tls", "overlays/tls"]


def test_config_file_keys_are_node_settings(tmp_path: Path) -> None:
    """Each key of base/node.yaml is a NodeConfig field, and the file loads on its own."""
    import yaml

    text = one(render("base"), "ConfigMap")["data"]["node.yaml"]
    data = yaml.safe_load(text)
    assert set(data) <= FIELDS, f"unknown settings {sorted(set(data) - FIELDS)}"
    (tmp_path / "node.yaml").write_text(text)
    # host 0.0.0.0 with redis_url needs advertise_host, which only the pod's env supplies
    cfg = load_config(tmp_path / "node.yaml", env={"KVSTORE_ADVERTISE_HOST": "x"})
    assert cfg.redis_url and cfg.host == "0.0.0.0"


def test_env_names_are_settings_or_downward_api(node: NodePod) -> None:
    for name in node.env:
        if name.startswith(ENV_PREFIX):
            # load_config ignores KVSTORE_ names that are no setting: a typo would be silent
            assert name[len(ENV_PREFIX):].lower() in FIELDS, f"{name} is not a node setting"
        else:
            assert name in ("POD_NAME", "POD_NAMESPACE"), f"unexpected env {name}"


def test_identity_and_advertised_address(node: NodePod) -> None:
    """Node id = pod name; the address is the pod's name under the headless Service."""
    headless = one(node.docs, "Service", node.sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True  # draining nodes stay dialable
    assert selects({"matchLabels": headless["spec"]["selector"]},
                   node.sts["spec"]["template"]["metadata"]["labels"])
    assert node.config.node_id == "kvstore-0"
    assert node.config.advertise_host == "kvstore-0.kvstore-headless.kv-test.svc"
    assert node.config.host == "0.0.0.0"


def test_container_and_service_ports_are_the_configured_ones(node: NodePod) -> None:
    cfg = node.config
    want = {"grpc": cfg.port, "data": cfg.data_port, "metrics": cfg.metrics_port}
    assert cfg.data_plane and min(want.values()) > 0   # fixed ports: Services name them
    assert {p["name"]: p["containerPort"] for p in node.c["ports"]} == want
    labels = node.sts["spec"]["template"]["metadata"]["labels"]
    services = [s for s in node.docs if s["kind"] == "Service"
                and selects({"matchLabels": s["spec"]["selector"]}, labels)]
    assert {s["metadata"]["name"] for s in services} == {"kvstore", "kvstore-headless"}
    for s in services:
        for p in s["spec"]["ports"]:
            assert p["targetPort"] in want and p["port"] == want[p["targetPort"]], p


def _probe_port(node: NodePod, port: int | str) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in node.c["ports"]}
    assert port in named, f"probe port {port!r} is not a port of the container"
    return named[port]


def test_probes_use_grpc_health_or_http_health_on_the_metrics_port(node: NodePod) -> None:
    """Without TLS: kubelet's gRPC probes on the gRPC port. With TLS (kubelet's gRPC probes
    speak plaintext only): httpGet on the plaintext metrics port, /readyz for readiness and
    /healthz for liveness and start-up, the paths kvstore/server/metrics.py serves."""
    from kvstore.server.metrics import PROBE_PATHS

    tls = bool(node.config.tls_cert)
    want_path = {"startupProbe": "/healthz", "readinessProbe": "/readyz",
                 "livenessProbe": "/healthz"}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = node.c[kind]
        handlers = [h for h in ("grpc", "tcpSocket", "httpGet", "exec") if h in probe]
        assert len(handlers) == 1, f"{kind}: exactly one handler, got {handlers}"
        if tls:
            assert handlers == ["httpGet"], kind
            get = probe["httpGet"]
            assert _probe_port(node, get["port"]) == node.config.metrics_port, kind
            assert get.get("scheme", "HTTP") == "HTTP", kind  # the metrics port is plaintext
            assert get["path"] == want_path[kind] and get["path"] in PROBE_PATHS, kind
        else:
            assert handlers == ["grpc"] and probe["grpc"]["port"] == node.config.port
            # the names the node registers in grpc.health.v1 (kvstore/server/node.py)
            assert probe["grpc"].get("service", "") in ("", SERVICE_NAME)
    if not tls:  # readiness follows the KVStore service, which turns NOT_SERVING on drain
        assert node.c["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    # /healthz waits up to LIVENESS_WAIT_S for the event loop: the liveness timeout must allow it
    from kvstore.server.health import LIVENESS_WAIT_S

    assert node.c["livenessProbe"].get("timeoutSeconds", 1) > LIVENESS_WAIT_S


def test_http_probe_paths_answer_on_a_real_node(start_node) -> None:
    """Every httpGet probe of every render, asked of a real serving node: 200 (and the same
    port is where the node serves them: the metrics port)."""
    import urllib.request

    probes = set()
    for rel in NODE_RENDERS:
        c = container(one(render(rel), "StatefulSet", "kvstore")["spec"]["template"]["spec"],
                      "kvstore")
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if "httpGet" in c[kind]:
                get = c[kind]["httpGet"]
                assert ports.get(get["port"], get["port"]) == ports["metrics"]
                probes.add(get["path"])
    assert probes == {"/healthz", "/readyz"}  # the TLS renders use both
    node = start_node(metrics_port=0)
    # the probe's own answer, not the metrics exposition every other path gets (also 200)
    answers = {"/healthz": b"alive\n", "/readyz": b"ready\n"}
    for path in sorted(probes):
        url = f"http://127.0.0.1:{node.metrics_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert (resp.status, resp.read()) == (200, answers[path]), path


def test_grace_period_covers_the_drain(node: NodePod) -> None:
    assert "lifecycle" not in node.c   # SIGTERM itself starts the drain: no preStop delay
    assert node.pod["terminationGracePeriodSeconds"] > node.config.drain_timeout_s + STOP_GRACE_S


def test_metrics_scrape_annotations(node: NodePod) -> None:
    ann = node.sts["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == node.config.metrics_port
    assert ann["prometheus.io/path"] == "/metrics"


def test_redis_url_names_the_redis_service(node: NodePod) -> None:
    url = urlparse(node.config.redis_url)
    svc = one(node.docs, "Service", url.hostname)
    port = next(p for p in svc["spec"]["ports"] if p["port"] == (url.port or 6379))
    redis = one(node.docs, "Deployment", "kvstore-redis")
    tmpl = redis["spec"]["template"]
    assert selects({"matchLabels": svc["spec"]["selector"]}, tmpl["metadata"]["labels"])
    rc = container(tmpl["spec"], "redis")
    assert {p["name"]: p["containerPort"] for p in rc["ports"]}[port["targetPort"]] == port["port"]
    assert rc["args"][rc["args"].index("--port") + 1] == str(port["port"])


def test_volumes_hold_config_data_and_tmp(node: NodePod) -> None:
    [claim] = node.sts["spec"]["volumeClaimTemplates"]
    assert _mount_for(node.c, node.config.data_dir)["name"] == claim["metadata"]["name"]
    assert (quantity_bytes(claim["spec"]["resources"]["requests"]["storage"])
            > node.config.disk_capacity_bytes)
    assert node.c["securityContext"]["readOnlyRootFilesystem"] is True
    assert _mount_for(node.c, "/tmp/x")["name"] == "tmp"
    names = {v["name"] for v in node.pod["volumes"]} | {claim["metadata"]["name"]}
    assert {m["name"] for m in node.c["volumeMounts"]} <= names
    for v in node.pod["volumes"]:   # generated ConfigMaps carry a hash: the reference must follow
        if "configMap" in v:
            one(node.docs, "ConfigMap", v["configMap"]["name"])


def test_memory_covers_the_cpu_tier(node: NodePod) -> None:
    res = node.c["resources"]
    need = node.config.cpu_capacity_bytes + PROCESS_OVERHEAD
    for side in ("requests", "limits"):
        assert quantity_bytes(res[side]["memory"]) >= need, side
    assert res["requests"]["memory"] == res["limits"]["memory"]   # no overcommit of the pool


def test_gpu_tier_has_a_gpu(node: NodePod) -> None:
    cfg, res = node.config, node.c["resources"]
    gpus = int(res["limits"].get("nvidia.com/gpu", 0))
    if cfg.gpu_capacity_bytes == 0:
        assert cfg.gpu_device == "none" and gpus == 0
        return
    assert cfg.gpu_device.startswith("cuda") and gpus >= 1
    assert int(cfg.gpu_device.partition(":")[2] or 0) < gpus
    assert res["requests"].get("nvidia.com/gpu") == res["limits"]["nvidia.com/gpu"]
    assert any(t["key"] == "nvidia.com/gpu" for t in node.pod["tolerations"])
    assert node.pod["nodeSelector"]
    assert node.c["image"].endswith("-cuda")   # the CUDA build of torch (deploy/docker)


def test_tls_settings_point_into_mounted_secrets(node: NodePod) -> None:
    keys = ("tls_cert", "tls_key", "tls_client_ca", "tls_ca", "auth_tokens_file",
            "peer_token_file")
    set_keys = [k for k in keys if getattr(node.config, k)]
    if not set_keys:
        return
    assert set(set_keys) == set(keys), "the tls component sets every security file"
    volumes = {v["name"]: v for v in node.pod["volumes"]}
    secret_files = {"kvstore-tls": {"tls.crt", "tls.key", "ca.crt"},
                    "kvstore-auth": {"tokens.yaml", "peer-token"}}
    for k in set_keys:
        path = getattr(node.config, k)
        mount = _mount_for(node.c, path)
        secret = volumes[mount["name"]]["secret"]["secretName"]
        assert mount.get("readOnly") is True
        assert str(PurePosixPath(path).relative_to(mount["mountPath"])) in secret_files[secret]


def test_selectors_match_the_pods(node: NodePod) -> None:
    labels = node.sts["spec"]["template"]["metadata"]["labels"]
    assert selects(node.sts["spec"]["selector"], labels)
    assert selects(one(node.docs, "PodDisruptionBudget")["spec"]["selector"], labels)
    term = node.pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert selects(term[0]["labelSelector"], labels)
    assert term[0]["topologyKey"] == "kubernetes.io/hostname"
    assert one(node.docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert node.pod["serviceAccountName"] == one(node.docs, "ServiceAccount")["metadata"]["name"]


def test_network_policy_opens_exactly_the_node_ports(node: NodePod) -> None:
    cfg = node.config
    labels = node.sts["spec"]["template"]["metadata"]["labels"]
    pol = one(node.docs, "NetworkPolicy", "kvstore-node")["spec"]
    assert selects(pol["podSelector"], labels)
    opened = {p["port"] for rule in pol["ingress"] for p in rule["ports"]}
    assert opened == {cfg.port, cfg.data_port, cfg.metrics_port}
    node_rule = next(r for r in pol["ingress"]
                     if any(selects(f.get("podSelector", {}), labels) and "namespaceSelector"
                            not in f for f in r["from"]))
    assert {p["port"] for p in node_rule["ports"]} == {cfg.port, cfg.data_port}
    redis_port = urlparse(cfg.redis_url).port
    redis_labels = one(node.docs, "Deployment", "kvstore-redis")["spec"]["template"]["metadata"][
        "labels"]
    egress = {p["port"] for r in pol["egress"] for p in r["ports"]
              if any(selects(t.get("podSelector", {"matchLabels": {"-": "-"}}), redis_labels)
                     for t in r["to"])}
    assert egress == {redis_port}
    peers = {p["port"] for r in pol["egress"] for p in r["ports"]
             if any(selects(t.get("podSelector", {"matchLabels": {"-": "-"}}), labels)
                    for t in r["to"])}
    assert peers == {cfg.port, cfg.data_port}
    rpol = one(node.docs, "NetworkPolicy", "kvstore-redis")["spec"]
    assert selects(rpol["podSelector"], redis_labels)
    assert {p["port"] for r in rpol["ingress"] for p in r["ports"]} == {redis_port}
    assert any(selects(f["podSelector"], labels) for r in rpol["ingress"] for f in r["from"])


def test_metrics_port_admits_only_prometheus(node: NodePod) -> None:
    """The metrics port (/metrics with per-tenant usage, /healthz, /readyz; plaintext, no auth)
    is open to Prometheus pods only. Kubelet's probes need no rule: NetworkPolicy never blocks a
    pod's own node (docs/SECURITY.md)."""
    pol = one(node.docs, "NetworkPolicy", "kvstore-node")["spec"]
    rules = [r for r in pol["ingress"]
             if node.config.metrics_port in {p["port"] for p in r.get("ports", [])}]
    assert len(rules) == 1 and rules[0]["from"], "one rule, with sources, opens the metrics port"
    assert all("ports" in r for r in pol["ingress"]), "a rule without ports opens every port"
    for src in rules[0]["from"]:
        assert "ipBlock" not in src, src
        assert src["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    assert {p["port"] for p in rules[0]["ports"]} == {node.config.metrics_port}


def test_overlays_only_add_their_own_settings(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An overlay changes the GPU or security settings, never ports, Redis or sizes."""
    own = {"overlays/gpu": {"gpu_device", "gpu_capacity_bytes"},
           "overlays/tls": {"tls_cert", "tls_key", "tls_client_ca", "tls_ca",
                            "auth_tokens_file", "peer_token_file", "insecure"}}
    own["overlays/gpu-tls"] = own["overlays/gpu"] | own["overlays/tls"]
    base = node_pod("base", tmp_path, monkeypatch).config
    for rel, allowed in own.items():
        cfg = node_pod(rel, tmp_path, monkeypatch).config
        changed = {f for f in FIELDS if getattr(cfg, f) != getattr(base, f)}
        assert changed == allowed, rel


def test_image_user_matches_run_as_user(node: NodePod) -> None:
    from deploy_manifests import dockerfile_instructions

    user = [a for i, a in dockerfile_instructions() if i == "USER"][-1]
    uid, _, gid = user.partition(":")
    sc = node.pod["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert (str(sc["runAsUser"]), str(sc["runAsGroup"])) == (uid, gid)
    assert node.c["image"].split(":")[0] == "kvstore"
