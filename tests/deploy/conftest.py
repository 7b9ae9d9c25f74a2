"""Fixtures for the offline tests of the deployment artifacts: Dockerfile, compose, Prometheus,
Grafana, Kubernetes. No Docker engine, cluster or network: files are parsed here, and external
validators (promtool, kubectl kustomize, docker compose, hadolint, kubernetes-validate) run only
where installed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# Import `worker` from the checkout when it is not installed (a plain `pytest` run).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

K8S = ROOT / "deploy" / "k8s"


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def read_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def settings_fields() -> dict[str, Any]:
    """Defaults of the worker's Settings: the single source the artifacts must agree with."""
    from worker.config import Settings

    return {name: field.default for name, field in Settings.model_fields.items()}


@pytest.fixture(scope="session")
def metrics_port() -> int:
    from worker.config import Settings

    port = Settings.model_fields["metrics_port"].default
    assert isinstance(port, int)
    return port


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = read_yaml(ROOT / "docker-compose.yml")
    return data


@pytest.fixture(scope="session")
def k8s_base() -> dict[str, dict[str, Any]]:
    """Base manifests listed in the kustomization, by kind (each kind appears once in the base)."""
    kustomization = read_yaml(K8S / "base" / "kustomization.yaml")
    docs: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in read_yaml_all(K8S / "base" / name):
            assert doc["kind"] not in docs, f"two {doc['kind']} manifests in the base"
            docs[doc["kind"]] = doc
    return docs


@pytest.fixture(scope="session")
def input_partitions(k8s_base: dict[str, dict[str, Any]]) -> int:
    annotations = k8s_base["ConfigMap"]["metadata"]["annotations"]
    return int(annotations["group-events-worker/input-topic-partitions"])
