"""Kubernetes manifests: schema basics, cross-references between them, and agreement with the image
and the worker's settings. Rendering (kubectl kustomize) and strict schema validation
(kubernetes-validate) run only where installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import megabytes

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE, OVERLAY = K8S / "base", K8S / "overlays" / "example"
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")

Docs = dict[str, dict[str, Any]]
# librdkafka sasl.mechanism -> KEDA kafka scaler `sasl`
KEDA_SASL = {
    "PLAIN": "plaintext",
    "SCRAM-SHA-256": "scram_sha256",
    "SCRAM-SHA-512": "scram_sha512",
    "OAUTHBEARER": "oauthbearer",
    "GSSAPI": "gssapi",
}


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def pod_spec(docs: Docs) -> dict[str, Any]:
    spec: dict[str, Any] = docs["Deployment"]["spec"]["template"]["spec"]
    return spec


def container(docs: Docs) -> dict[str, Any]:
    worker: dict[str, Any]
    (worker,) = pod_spec(docs)["containers"]
    return worker


def pod_labels(docs: Docs) -> dict[str, str]:
    labels: dict[str, str] = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    return labels


def selects_pods(selector: dict[str, str], docs: Docs) -> bool:
    return bool(selector) and selector.items() <= pod_labels(docs).items()


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_every_manifest_has_api_version_kind_and_name(directory: Path) -> None:
    files = sorted(directory.glob("*.yaml"))
    assert files
    for path in files:
        for doc in load_all(path):
            assert doc.get("apiVersion") and doc.get("kind"), path.name
            if doc["kind"] != "Kustomization":
                name = doc["metadata"]["name"]
                assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), path.name


def test_base_kustomization_lists_exactly_the_manifests() -> None:
    listed = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    present = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert len(listed) == len(set(listed))
    assert set(listed) == present


def test_overlay_kustomization_references_resolve(k8s_base: Docs) -> None:
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    local = [r for r in kustomization["resources"] if not r.startswith("..")]
    patches = [p["path"] for p in kustomization["patches"]]
    assert {*local, *patches} == {p.name for p in OVERLAY.glob("*.yaml")} - {"kustomization.yaml"}
    assert "../../base" in kustomization["resources"]
    for path in patches:  # a patch must target something the base defines
        for doc in load_all(OVERLAY / path):
            assert doc["metadata"]["name"] == k8s_base[doc["kind"]]["metadata"]["name"], path
    (image,) = kustomization["images"]
    assert container(k8s_base)["image"].split(":")[0] == image["name"]
    (replicas,) = kustomization["replicas"]
    assert replicas["name"] == k8s_base["Deployment"]["metadata"]["name"]


def test_probes_and_port(k8s_base: Docs, metrics_port: int) -> None:
    worker = container(k8s_base)
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert ports == {"metrics": metrics_port}
    assert int(k8s_base["ConfigMap"]["data"]["WORKER_METRICS_PORT"]) == metrics_port
    expected = {
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        get = worker[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ("metrics", metrics_port), probe


def test_grace_period_exceeds_shutdown_timeout(k8s_base: Docs) -> None:
    shutdown = float(k8s_base["ConfigMap"]["data"]["WORKER_SHUTDOWN_TIMEOUT_SECONDS"])
    assert pod_spec(k8s_base)["terminationGracePeriodSeconds"] > shutdown


def test_security_context(k8s_base: Docs, root: Path) -> None:
    pod, worker = pod_spec(k8s_base), container(k8s_base)
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = worker["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # The pod's UID is the one the image was built with.
    users = re.findall(r"^USER\s+(\d+)", (root / "Dockerfile").read_text(), re.M)
    assert users and pod["securityContext"]["runAsUser"] == int(users[-1])
    assert pod["enableServiceLinks"] is False
    resources = worker["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]


def test_env_from_configmap_and_secrets(k8s_base: Docs) -> None:
    """SASL credentials optional (a plaintext cluster has none); the Redis password required (deploy/k8s/redis
    lets no client in without it: tests/deploy/test_deploy_security.py)."""
    worker = container(k8s_base)
    (source,) = worker["envFrom"]
    assert source["configMapRef"]["name"] == k8s_base["ConfigMap"]["metadata"]["name"]
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in worker["env"]}
    assert set(secret_env) == {"WORKER_KAFKA_SASL_USERNAME", "WORKER_KAFKA_SASL_PASSWORD", "WORKER_REDIS_PASSWORD"}
    assert all(secret_env[name]["optional"] is True for name in secret_env if name.startswith("WORKER_KAFKA_"))
    assert not secret_env["WORKER_REDIS_PASSWORD"].get("optional")


def test_configmap_is_valid_worker_config(k8s_base: Docs, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.config import Settings

    data = k8s_base["ConfigMap"]["data"]
    assert all(isinstance(value, str) for value in data.values()), "values must be strings"
    for key, value in data.items():
        assert key.startswith("WORKER_"), key
        # Every WORKER_KAFKA_* goes to librdkafka; the rest must be a real setting (no typos).
        if key.startswith("WORKER_KAFKA_"):
            assert value, f"{key} is empty: librdkafka would reject it"
        else:
            assert key.removeprefix("WORKER_").lower() in Settings.model_fields, key
    for key in [k for k in os.environ if k.startswith("WORKER_")]:
        monkeypatch.delenv(key)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # raises on a value the worker would refuse at start
    assert settings.metrics_port == int(data["WORKER_METRICS_PORT"])


def test_selectors_match_pod_labels(k8s_base: Docs) -> None:
    deployment = k8s_base["Deployment"]
    assert selects_pods(deployment["spec"]["selector"]["matchLabels"], k8s_base)
    pdb = k8s_base["PodDisruptionBudget"]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert selects_pods(pdb["selector"]["matchLabels"], k8s_base)
    service = k8s_base["Service"]["spec"]
    assert selects_pods(service["selector"], k8s_base)
    port_names = {p["name"] for p in container(k8s_base)["ports"]}
    assert {p["targetPort"] for p in service["ports"]} <= port_names
    monitor = k8s_base["PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert selects_pods(monitor["spec"]["selector"]["matchLabels"], k8s_base)
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"


def test_scaled_object(k8s_base: Docs, input_partitions: int) -> None:
    scaled = k8s_base["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == k8s_base["Deployment"]["metadata"]["name"]
    # Consumers beyond the partition count get nothing to do; every worker process of a pod is one.
    processes = int(k8s_base["ConfigMap"]["data"]["WORKER_PROCESSES"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= input_partitions // processes
    replicas = k8s_base["Deployment"]["spec"]["replicas"]
    assert spec["minReplicaCount"] <= replicas <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    check_trigger_agrees_with_config(trigger["metadata"], k8s_base["ConfigMap"]["data"])


def check_trigger_agrees_with_config(meta: dict[str, str], config: dict[str, str]) -> None:
    """KEDA must measure the lag of the group, topic and cluster the workers consume."""
    assert meta["bootstrapServers"] == config["WORKER_KAFKA_BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == config["WORKER_GROUP_ID"]
    assert meta["topic"] in config["WORKER_INPUT_TOPICS"].split(",")
    assert int(meta["lagThreshold"]) > 0
    mechanism = config.get("WORKER_KAFKA_SASL_MECHANISM")
    if mechanism:
        assert meta["sasl"] == KEDA_SASL[mechanism.upper()]
    if config.get("WORKER_KAFKA_SECURITY_PROTOCOL", "").endswith("SSL"):
        assert meta["tls"] == "enable"


def readme_yaml_blocks() -> list[dict[str, Any]]:
    text = (K8S / "README.md").read_text()
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def test_readme_hpa_alternative(k8s_base: Docs, input_partitions: int) -> None:
    (hpa,) = [doc for doc in readme_yaml_blocks() if doc["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == k8s_base["Deployment"]["metadata"]["name"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= input_partitions


def render(directory: Path) -> Docs:
    """The rendered manifests by kind (one of each), Secrets by name (`Secret/<name>` without kustomize's hash)."""
    command = ["kubectl", "kustomize", str(directory)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    docs: Docs = {}
    for doc in yaml.safe_load_all(result.stdout):
        kind = doc["kind"]
        if kind == "Secret":
            kind = "Secret/" + re.sub(r"-[a-z0-9]{10}$", "", doc["metadata"]["name"])
        assert kind not in docs, f"two {kind} after rendering"
        docs[kind] = doc
    return docs


kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")


@kubectl
def test_base_renders(k8s_base: Docs) -> None:
    assert set(render(BASE)) == set(k8s_base)


@kubectl
def test_overlay_renders_consistently(input_partitions: int) -> None:
    docs = render(OVERLAY)
    namespace = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())["namespace"]
    assert {doc["metadata"].get("namespace") for doc in docs.values()} == {namespace}
    assert "/" in container(docs)["image"], "overlay should point the image at a registry"
    scaled = docs["ScaledObject"]["spec"]
    assert scaled["minReplicaCount"] <= docs["Deployment"]["spec"]["replicas"] <= input_partitions
    (trigger,) = scaled["triggers"]
    check_trigger_agrees_with_config(trigger["metadata"], docs["ConfigMap"]["data"])
    # The secretKeyRefs, the generated Secrets and KEDA's TriggerAuthentication line up.
    secrets = {name.split("/")[1]: doc for name, doc in docs.items() if name.startswith("Secret/")}
    for env in container(docs)["env"]:
        ref = env["valueFrom"]["secretKeyRef"]
        named = [doc for doc in secrets.values() if doc["metadata"]["name"] == ref["name"]]
        assert named and ref["key"] in named[0]["data"], ref
    secret = secrets["group-events-worker-kafka"]
    auth = docs["TriggerAuthentication"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    for target in auth["spec"]["secretTargetRef"]:
        assert target["name"] == secret["metadata"]["name"] and target["key"] in secret["data"]
    assert {t["parameter"] for t in auth["spec"]["secretTargetRef"]} == {"username", "password"}


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_strict_schema_of_builtin_kinds(directory: Path) -> None:
    validate = pytest.importorskip("kubernetes_validate")
    docs = [doc for path in directory.glob("*.yaml") for doc in load_all(path)]
    docs += [doc for doc in readme_yaml_blocks() if directory == BASE]
    checked = 0
    for doc in docs:
        # CRDs (KEDA, Prometheus Operator) have no bundled schema.
        if doc["kind"] == "Kustomization" or doc["apiVersion"].startswith(CRD_GROUPS):
            continue
        validate.validate(doc, validate.latest_version(), strict=True)
        checked += 1
    assert checked


def test_the_example_redis_fsyncs_every_write_and_serves_the_base_url(k8s_base: Docs) -> None:
    """Defect 6: a Redis that acknowledges writes before they are on disk loses claims on a crash."""
    redis_dir = K8S / "redis"
    kustomization = yaml.safe_load((redis_dir / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in redis_dir.glob("*.yaml")} - {"kustomization.yaml"}
    statefulset = yaml.safe_load((redis_dir / "statefulset.yaml").read_text())
    args = statefulset["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes" and args[args.index("--appendfsync") + 1] == "always"
    # issue 19, defect 3: refuse writes at a limit below the container's instead of evicting or being OOM-killed
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    limit = statefulset["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert megabytes(args[args.index("--maxmemory") + 1]) <= 0.7 * megabytes(limit)
    assert statefulset["spec"]["volumeClaimTemplates"]
    service = yaml.safe_load((redis_dir / "service.yaml").read_text())
    url = k8s_base["ConfigMap"]["data"]["WORKER_REDIS_URL"]
    assert url.startswith(f"redis://{service['metadata']['name']}.{kustomization['namespace']}.svc:")


def test_cpu_fits_the_worker_processes(k8s_base: Docs) -> None:
    """One core per worker process: a process that gets less is throttled (README "Every core of a pod")."""
    processes = int(k8s_base["ConfigMap"]["data"]["WORKER_PROCESSES"])
    limit = container(k8s_base)["resources"]["limits"]["cpu"]
    cores = int(limit[:-1]) / 1000 if str(limit).endswith("m") else float(limit)
    assert cores >= processes
