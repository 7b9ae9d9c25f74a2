"""The webhook watch's deployment files (deploy/k8s/watch): one replica never doubled, the worker's image and
hardening, the tenants file from a required Secret where the code reads it, its probe and metrics port as the
code serves them, a PodMonitor for its job, strict schemas; and its alerts use only what the watch exports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import kustomization_docs, read_yaml

ROOT = Path(__file__).resolve().parents[2]
WATCH = ROOT / "deploy" / "k8s" / "watch"
Docs = dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def watch() -> Docs:
    return kustomization_docs(WATCH)


def pod(watch: Docs) -> dict[str, Any]:
    spec: dict[str, Any] = watch["Deployment"]["spec"]["template"]["spec"]
    return spec


def test_kustomization_lists_exactly_the_manifests() -> None:
    listed = read_yaml(WATCH / "kustomization.yaml")["resources"]
    assert set(listed) == {p.name for p in WATCH.glob("*.yaml")} - {"kustomization.yaml"}


def test_one_replica_never_two_at_once_running_the_watch_of_the_worker_image(watch: Docs, k8s_base: Docs) -> None:
    spec = watch["Deployment"]["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    (container,) = pod(watch)["containers"]
    (worker,) = k8s_base["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["watch"] and container["image"] == worker["image"]
    assert container["securityContext"] == worker["securityContext"]
    assert pod(watch)["enableServiceLinks"] is False
    assert container["envFrom"][0]["configMapRef"]["name"] == k8s_base["ConfigMap"]["metadata"]["name"]


def test_the_tenants_file_comes_from_a_required_secret_where_the_code_reads_it(watch: Docs) -> None:
    from worker.config import Settings

    (container,) = pod(watch)["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    path = Path(env["WORKER_QLIK_TENANTS_FILE"])
    (mount,) = container["volumeMounts"]
    assert Path(mount["mountPath"]) == path.parent and mount["readOnly"]
    (volume,) = [v for v in pod(watch)["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] and not volume["secret"].get("optional")
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "the credentials must not be world-readable"
    assert pod(watch)["securityContext"]["fsGroup"] == pod(watch)["securityContext"]["runAsGroup"]
    assert Settings(watch_reenable=env["WORKER_WATCH_REENABLE"]).watch_reenable is True  # type: ignore[arg-type]


def test_probe_and_metrics_port_agree_with_the_code(watch: Docs, metrics_port: int) -> None:
    (container,) = pod(watch)["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": metrics_port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    monitor = watch["PodMonitor"]["spec"]
    labels = watch["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    assert labels[monitor["jobLabel"]] == "group-events-watch"
    assert monitor["podMetricsEndpoints"][0]["port"] == "metrics"


def test_strict_schema_of_builtin_kinds(watch: Docs) -> None:
    validate = pytest.importorskip("kubernetes_validate")
    validate.validate(watch["Deployment"], validate.latest_version(), strict=True)


def test_the_watch_alerts_use_only_what_the_watch_exports() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from worker.upstream import metrics

    exported = {
        described.name + {"counter": "_total"}.get(described.type, "")
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
        for described in value.describe()
    }
    (group,) = [g for g in read_yaml(ROOT / "deploy" / "prometheus" / "alerts.yml")["groups"]
                if g["name"] == "group-events-watch"]  # fmt: skip
    used = {name for rule in group["rules"] for name in re.findall(r"\bwatch_[a-z_]+", rule["expr"])}
    assert used and used <= exported, used - exported
    names = {rule["alert"] for rule in group["rules"]}
    assert {
        "GroupEventsWebhookDisabled", "GroupEventsWebhookMissing", "GroupEventsWebhookDeliveriesFailing",
        "GroupEventsNoEventAccepted",
    } <= names  # fmt: skip
