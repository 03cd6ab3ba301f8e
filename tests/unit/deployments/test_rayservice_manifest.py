"""``deploy/rayservice.yaml``: the KubeRay RayService is the application of ``serve_config.yaml``.

Its ``spec.serveConfigV2`` (a YAML string) must carry only args the app accepts (``AppArgs``) and must not
drift from ``serve_config.yaml``: every key and value is compared, and the intended differences are listed
in ``INTENDED`` below. The pods must carry what the app reads from its environment (``REDIS_URL`` from the
Secret, ``TCRAG_DATA_DIR`` on a ReadWriteMany volume mounted at the same path everywhere), and the image
must be built by ``deploy/Dockerfile``, which installs the project.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.registry import AGENTS
from deployments.app import AppArgs

REPO = Path(__file__).resolve().parents[3]
MANIFEST = REPO / "deploy" / "rayservice.yaml"
SECRET_EXAMPLE = REPO / "deploy" / "redis-secret.example.yaml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"

INTENDED: dict[str, Any] = {"llm.max_replicas_per_node": 1}
"""Args paths ("llm.num_replicas") whose manifest value differs from serve_config.yaml on purpose, with the
manifest's value: one vLLM engine per worker pod. Otherwise the pods differ by environment (REDIS_URL,
TCRAG_DATA_DIR, TCRAG_HOME), not by args."""


def manifest_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def rayservice() -> dict[str, Any]:
    (svc,) = [d for d in manifest_docs() if d["kind"] == "RayService"]
    return svc


def serve_config_v2() -> dict[str, Any]:
    text = rayservice()["spec"]["serveConfigV2"]
    assert isinstance(text, str), "KubeRay takes serveConfigV2 as a YAML string"
    return yaml.safe_load(text)


def serve_config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "serve_config.yaml").read_text())


def leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"llm.engine.dtype": "bfloat16", ...} for every leaf of a YAML mapping."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def pods() -> dict[str, dict[str, Any]]:
    """The pod specs by group: "head" and each worker group's name."""
    cluster = rayservice()["spec"]["rayClusterConfig"]
    out = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    out.update({g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]})
    return out


def ray_container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["containers"][0]  # KubeRay runs Ray in the first container


def env_of(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in ray_container(pod).get("env", [])}


# ------------------------------------------------------------------ the application


def test_the_manifest_is_a_kuberay_rayservice_v1():
    svc = rayservice()
    assert svc["apiVersion"] == "ray.io/v1"
    spec = svc["spec"]
    assert set(spec) >= {"serveConfigV2", "rayClusterConfig"}
    cluster = spec["rayClusterConfig"]
    assert "headGroupSpec" in cluster and len(cluster["workerGroupSpecs"]) == 1
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values()), \
            "rayStartParams values are strings in the CRD"


def test_the_manifest_args_are_accepted_by_the_app():
    (app,) = serve_config_v2()["applications"]
    args = AppArgs.model_validate(app["args"])
    assert sorted(args.agents) == sorted(a.name for a in AGENTS)


def test_the_manifest_serves_the_same_application_as_serve_config():
    ours, theirs = serve_config_v2(), serve_config()
    for key in ("proxy_location", "http_options", "logging_config"):
        assert ours.get(key) == theirs.get(key), key
    assert ours["proxy_location"] == "EveryNode"  # an HTTP proxy on every pod: the serve service spans them
    (app,), (ref,) = ours["applications"], theirs["applications"]
    assert {k: v for k, v in app.items() if k != "args"} == {k: v for k, v in ref.items() if k != "args"}
    assert app["import_path"] == "deployments.app:build"
    assert set(app["args"]) == set(ref["args"])
    assert set(app["args"]["agents"]) == set(ref["args"]["agents"])


def test_the_manifest_args_do_not_drift_from_serve_config():
    (app,), (ref,) = serve_config_v2()["applications"], serve_config()["applications"]
    ours, theirs = leaves(app["args"]), leaves(ref["args"])
    assert set(ours) - set(INTENDED) == set(theirs) - set(INTENDED), "keys differ beyond INTENDED"
    drift = {path: (ours[path], theirs[path]) for path in ours
             if path not in INTENDED and ours[path] != theirs.get(path)}
    assert not drift, f"manifest vs serve_config.yaml (list on-purpose ones in INTENDED): {drift}"
    assert {path: ours.get(path) for path in INTENDED} == INTENDED


def test_the_manifest_leaves_redis_store_and_model_to_the_pods_environment():
    (app,) = serve_config_v2()["applications"]
    args = AppArgs.model_validate(app["args"])
    assert args.cache.redis_url is None        # $REDIS_URL, from the Secret
    assert args.retrieval.db_path is None      # $TCRAG_DATA_DIR, the shared volume
    assert args.model.path is None             # $TCRAG_HOME, the model prepared in the image


def test_one_llm_replica_per_node():
    (app,) = serve_config_v2()["applications"]
    assert AppArgs.model_validate(app["args"]).llm.options()["max_replicas_per_node"] == 1


# ------------------------------------------------------------------ the cluster


def test_ray_version_matches_the_project_pin():
    pin = re.search(r'"ray\[serve\]==([0-9.]+)\.\*"', (REPO / "pyproject.toml").read_text()).group(1)
    assert rayservice()["spec"]["rayClusterConfig"]["rayVersion"].startswith(pin + ".")


def test_head_and_two_workers_with_the_ports_kuberay_expects():
    cluster = rayservice()["spec"]["rayClusterConfig"]
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["replicas"] == 2 and workers["minReplicas"] <= 2 <= workers["maxReplicas"]
    head_ports = {p["name"]: p["containerPort"] for p in ray_container(pods()["head"])["ports"]}
    assert head_ports.items() >= {"gcs-server": 6379, "dashboard": 8265, "serve": 8000}.items()
    http_port = serve_config_v2()["http_options"]["port"]
    for name, pod in pods().items():
        ports = {p["name"]: p["containerPort"] for p in ray_container(pod)["ports"]}
        assert ports.get("serve") == http_port, f"{name}: every pod runs a Serve proxy (EveryNode)"


def test_every_pod_has_resources_and_the_same_image():
    images = set()
    for name, pod in pods().items():
        container = ray_container(pod)
        images.add(container["image"])
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name}: {kind}"
    assert len(images) == 1


def test_redis_url_comes_from_the_secret_on_every_pod():
    secret = yaml.safe_load(SECRET_EXAMPLE.read_text())
    assert secret["kind"] == "Secret"
    for name, pod in pods().items():
        ref = env_of(pod)["REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"], name
        assert ref["key"] in secret["stringData"], name
    assert secret["stringData"]["REDIS_URL"].startswith("redis+cluster://")


def test_the_store_is_one_readwritemany_volume_at_the_same_path_on_every_pod():
    (claim,) = [d for d in manifest_docs() if d["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    data_dirs = set()
    for name, pod in pods().items():
        data_dir = env_of(pod)["TCRAG_DATA_DIR"]["value"]
        data_dirs.add(data_dir)
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounted = [m for m in ray_container(pod)["volumeMounts"] if m["mountPath"] == data_dir]
        assert len(mounted) == 1, f"{name}: nothing mounted at TCRAG_DATA_DIR={data_dir}"
        claim_ref = volumes[mounted[0]["name"]]["persistentVolumeClaim"]["claimName"]
        assert claim_ref == claim["metadata"]["name"], name
    assert len(data_dirs) == 1, "the store path must be the same on every node"


# ------------------------------------------------------------------ the image


def test_the_dockerfile_installs_the_project_and_prepares_the_model():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.1[1-9]", text, re.M)
    install = re.search(r"pip install .*-e \"?\.\[([^\]]+)\]", text)
    assert install, "the Dockerfile must pip install the project (-e .[...])"
    extras = install.group(1).replace("${ENGINE}", "engine").split(",")
    assert {"engine", "model"} <= set(extras)
    assert "ARG ENGINE=engine" in text
    assert "scripts.prepare_model" in text
    assert "wget" in text  # KubeRay's probes run wget inside the Ray container
