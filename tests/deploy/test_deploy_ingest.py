"""The ingest's deployment files: deploy/k8s/ingest (Deployment, Service, Ingress with TLS, HPA on CPU, the
webhook secret from a Secret), its compose service and scrape job, its alerts, all agreeing with the code."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import kustomization_docs, read_yaml

ROOT = Path(__file__).resolve().parents[2]
INGEST = ROOT / "deploy" / "k8s" / "ingest"
Docs = dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def ingest() -> Docs:
    return kustomization_docs(INGEST)


@pytest.fixture(scope="module")
def container(ingest: Docs) -> dict[str, Any]:
    (only,) = ingest["Deployment"]["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def labels(ingest: Docs) -> dict[str, str]:
    result: dict[str, str] = ingest["Deployment"]["spec"]["template"]["metadata"]["labels"]
    return result


def test_kustomization_lists_exactly_the_manifests() -> None:
    listed = read_yaml(INGEST / "kustomization.yaml")["resources"]
    assert set(listed) == {p.name for p in INGEST.glob("*.yaml")} - {"kustomization.yaml"}


def test_deployment_runs_the_ingest_command_of_the_worker_image(
    ingest: Docs, container: dict[str, Any], k8s_base: Docs
):
    assert container["args"] == ["ingest"]
    (worker,) = k8s_base["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == worker["image"]
    assert container["securityContext"] == worker["securityContext"]
    pod = ingest["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"] == k8s_base["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert pod["enableServiceLinks"] is False
    assert pod["serviceAccountName"] == k8s_base["ServiceAccount"]["metadata"]["name"]
    assert labels(ingest) != k8s_base["Deployment"]["spec"]["template"]["metadata"]["labels"], (
        "the worker's Service, PDB and PodMonitor would select the ingest pods"
    )


def test_port_probes_and_settings_agree_with_the_code(container: dict[str, Any], k8s_base: Docs) -> None:
    from worker.config import Settings

    env = {e["name"]: e for e in container["env"]}
    port = int(env["WORKER_INGEST_PORT"]["value"])
    assert port == Settings.model_fields["ingest_port"].default
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"] == k8s_base["ConfigMap"]["metadata"]["name"]


def test_webhook_secret_comes_from_a_required_secret(container: dict[str, Any]) -> None:
    env = {e["name"]: e for e in container["env"]}
    ref = env["WORKER_INGEST_SECRETS"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"] and not ref.get("optional"), "without it the ingest refuses to start"
    assert "value" not in env["WORKER_INGEST_SECRETS"]


def test_grace_period_covers_the_shutdown_and_the_pre_stop_pause(ingest: Docs, container: dict[str, Any]):
    from worker.config import Settings

    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = ingest["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pause + Settings.model_fields["shutdown_timeout_seconds"].default


def test_service_and_ingress_route_only_the_webhook_path_over_tls(ingest: Docs) -> None:
    from worker.config import Settings
    from worker.ingest.server import WEBHOOK_PATH

    service = ingest["Service"]["spec"]
    assert service["selector"].items() <= labels(ingest).items()
    (port,) = service["ports"]
    assert port["targetPort"] == "http"
    spec = ingest["Ingress"]["spec"]
    (rule,) = spec["rules"]
    (tls,) = spec["tls"]
    assert rule["host"] in tls["hosts"] and tls["secretName"]
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == (WEBHOOK_PATH, "Exact")
    backend = path["backend"]["service"]
    assert backend["name"] == ingest["Service"]["metadata"]["name"]
    assert backend["port"]["name"] == port["name"]
    limit = ingest["Ingress"]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    units = {"k": 1024, "m": 1024 * 1024}
    size = int(limit[:-1]) * units[limit[-1].lower()] if limit[-1].lower() in units else int(limit)
    assert size == Settings.model_fields["ingest_max_body_bytes"].default


def test_hpa_scales_the_deployment_on_cpu(ingest: Docs, container: dict[str, Any]) -> None:
    hpa = ingest["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"]["name"] == ingest["Deployment"]["metadata"]["name"]
    (metric,) = spec["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in container["resources"]["requests"], "Utilization is relative to the request"
    assert 1 <= spec["minReplicas"] <= ingest["Deployment"]["spec"]["replicas"] <= spec["maxReplicas"]


def test_pdb_and_pod_monitor_select_the_ingest_pods(ingest: Docs) -> None:
    assert ingest["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels(ingest).items()
    monitor = ingest["PodMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= labels(ingest).items()
    assert labels(ingest)[monitor["jobLabel"]] == "group-events-ingest"
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")


def test_compose_service_and_scrape_job(compose: dict[str, Any]) -> None:
    service = compose["services"]["ingest"]
    assert service["command"] == ["ingest"]
    assert service["image"] == compose["services"]["worker"]["image"]
    env = service["environment"]
    assert env["WORKER_INGEST_SECRETS"] and env["WORKER_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    port = env["WORKER_INGEST_PORT"]
    assert f"127.0.0.1:{port}:{port}" in service["ports"], "published on this machine only: a demo secret guards it"
    assert f"127.0.0.1:{port}/healthz" in " ".join(service["healthcheck"]["test"])
    assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    (job,) = [j for j in scrape if j["job_name"] == "group-events-ingest"]
    assert job["static_configs"][0]["targets"] == [f"ingest:{port}"]


def test_alerts_watch_401s_and_503s_of_the_webhook() -> None:
    from worker.ingest.metrics import REQUESTS
    from worker.ingest.server import WEBHOOK_PATH

    groups = read_yaml(ROOT / "deploy" / "prometheus" / "alerts.yml")["groups"]
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    name = REQUESTS.describe()[0].name + "_total"
    for alert, status in (("GroupEventsIngestSignaturesRefused", "401"), ("GroupEventsIngestKafkaUnavailable", "503")):
        expr = "".join(rules[alert]["expr"].split())
        assert f'{name}{{route="{WEBHOOK_PATH}",status="{status}"}}' in expr, alert


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_renders() -> None:
    result = subprocess.run(["kubectl", "kustomize", str(INGEST)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(result.stdout)}
    assert kinds == {
        "Deployment",
        "Service",
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "PodMonitor",
        "NetworkPolicy",
    }
