"""deploy/k8s/kuberay: the RayCluster, the RayJob and its entrypoint against ray_nodes.py.

Ray itself is not started (a KubeRay operator cannot run here); the entrypoint's calls and
settings are checked against the code they drive.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import shlex
from pathlib import PurePosixPath
from types import ModuleType
from urllib.parse import urlparse

from deploy_manifests import K8S, container, one, quantity_bytes, render

from kvstore.cluster import ray_nodes
from kvstore.config import load_config

SCRIPT = K8S / "kuberay" / "start_store_nodes.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("start_store_nodes", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)   # imports no ray: that happens in main()
    return mod


def _cluster() -> tuple[list[dict], dict, dict, dict]:
    docs = render("kuberay")
    rc = one(docs, "RayCluster")
    [workers] = rc["spec"]["workerGroupSpecs"]
    return docs, rc, rc["spec"]["headGroupSpec"], workers


def _actor_config(mod: ModuleType):
    """The config a StoreNodeActor builds: its own defaults, then the script's settings."""
    from kvstore.cluster.ray_nodes import node_settings

    args = mod.build_parser().parse_args(_entrypoint()[2:])
    return load_config(env={}, overrides=node_settings("10.0.0.7", mod.node_config(args),
                                                       "/tmp/x"))


def _entrypoint() -> list[str]:
    return shlex.split(one(render("kuberay"), "RayJob")["spec"]["entrypoint"])


def test_entrypoint_is_the_mounted_script() -> None:
    docs, rc, head, _ = _cluster()
    job = one(docs, "RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": rc["metadata"]["name"]}
    argv = _entrypoint()
    assert argv[0] == "python"
    c = container(head["template"]["spec"], "ray-head")
    mount = next(m for m in c["volumeMounts"]
                 if PurePosixPath(argv[1]).is_relative_to(m["mountPath"]))
    volume = next(v for v in head["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    cm = one(docs, "ConfigMap", volume["configMap"]["name"])
    key = str(PurePosixPath(argv[1]).relative_to(mount["mountPath"]))
    assert cm["data"][key] == SCRIPT.read_text()
    _script().build_parser().parse_args(argv[2:])


def test_script_calls_start_store_nodes_with_real_parameters() -> None:
    params = inspect.signature(ray_nodes.start_store_nodes).parameters
    calls = [n for n in ast.walk(ast.parse(SCRIPT.read_text()))
             if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "start_store_nodes"]
    assert len(calls) == 1
    assert {k.arg for k in calls[0].keywords} <= set(params)
    assert len(calls[0].args) <= 1   # count is the only positional parameter


def test_node_settings_load_and_match_the_worker_pods() -> None:
    mod = _script()
    cfg = _actor_config(mod)
    docs, _, head, workers = _cluster()
    c = container(workers["template"]["spec"], "ray-worker")
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "grpc": cfg.port, "data": cfg.data_port, "metrics": cfg.metrics_port}
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == cfg.data_dir)
    vol = next(v for v in workers["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert quantity_bytes(vol["emptyDir"]["sizeLimit"]) > cfg.disk_capacity_bytes
    assert quantity_bytes(c["resources"]["limits"]["memory"]) >= cfg.cpu_capacity_bytes + (1 << 30)
    url = urlparse(cfg.redis_url)
    svc = one(docs, "Service", url.hostname)
    assert url.port in {p["port"] for p in svc["spec"]["ports"]}
    # every worker pod offers the resource the script places one node on; the head none
    assert f'\\"{mod.RESOURCE}\\": 1' in workers["rayStartParams"]["resources"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    head_env = {e["name"]: e["value"]
                for e in container(head["template"]["spec"], "ray-head")["env"]}
    # `ray job stop` waits this long before killing the driver, which is draining the nodes
    assert float(head_env["RAY_JOB_STOP_WAIT_TIME_S"]) > cfg.drain_timeout_s + 5


def test_one_store_pod_per_machine() -> None:
    _, _, _, workers = _cluster()
    spec = workers["template"]["spec"]
    term = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    labels = workers["template"]["metadata"]["labels"]
    assert term[0]["labelSelector"]["matchLabels"].items() <= labels.items()
    assert term[0]["topologyKey"] == "kubernetes.io/hostname"
