"""Fixtures for the tests of the deployment artifacts: Dockerfile, compose, Prometheus, Grafana, Kubernetes,
and the built image. No cluster or network: files are parsed here, and external validators (promtool,
kubectl kustomize, docker compose, hadolint, kubernetes-validate) run only where installed. The image is
built once per session, with Docker where an engine answers, else with buildah (`built_image`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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


def kustomization_docs(directory: Path) -> dict[str, dict[str, Any]]:
    """The documents of a kustomization's resources, by kind (one of each)."""
    docs: dict[str, dict[str, Any]] = {}
    for name in read_yaml(directory / "kustomization.yaml")["resources"]:
        for doc in read_yaml_all(directory / name):
            assert doc["kind"] not in docs
            docs[doc["kind"]] = doc
    return docs


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


# ---- the built image (tests/deploy/test_image.py) ----------------------------------------------------------

IMAGE_SUMMARY = pytest.StashKey[str]()


@dataclass(frozen=True)
class BuiltImage:
    """The image `deploy/image/build.py` built for this session, and its config as the runtime reads it."""

    ref: str
    tool: str  # "docker" or "buildah"
    config: dict[str, Any]  # Docker image config: User, Entrypoint, Cmd, Env, Healthcheck, StopSignal, Labels


def _answers(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def image_tools_missing() -> str | None:
    """Why no image can be built here, or None. buildah builds without an engine; debootstrap (as root) makes
    its base when the official one cannot be pulled."""
    if shutil.which("docker") and _answers(["docker", "info"]):
        return None
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing:
        return f"no Docker engine and {' and '.join(missing)} not installed"
    if os.geteuid() != 0:
        return "no Docker engine, and debootstrap needs root"
    return None


@pytest.fixture(scope="session")
def built_image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltImage]:
    """Built once per session by `make image`'s own script, under a tag of its own, removed afterwards."""
    if reason := image_tools_missing():
        pytest.skip(reason)
    tag = f"localhost/group-events-worker:test-{uuid.uuid4().hex[:8]}"
    log = tmp_path_factory.mktemp("image") / "build.log"
    with log.open("w") as stderr:
        done = subprocess.run(
            [sys.executable, str(ROOT / "deploy/image/build.py"), "--tag", tag, "--json"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=1200,
        )
    assert done.returncode == 0, "image build failed:\n" + "\n".join(log.read_text().splitlines()[-30:])
    result = json.loads(done.stdout.splitlines()[-1])
    request.config.stash[IMAGE_SUMMARY] = (
        f"{result['tool']} on {result['base']}: {result['why']}\n"
        f"{tag}: built in {result['seconds']} s, {result['size_mb']} MB (build log: {log})"
    )
    if result["tool"] == "docker":
        inspect = ["docker", "image", "inspect", "--format", "{{json .Config}}", tag]
        config = json.loads(subprocess.run(inspect, capture_output=True, text=True, check=True).stdout)
    else:
        inspect = ["buildah", "inspect", "--type", "image", tag]
        config = json.loads(subprocess.run(inspect, capture_output=True, text=True, check=True).stdout)["Docker"]
        config = config["config"]
    yield BuiltImage(tag, result["tool"], config)
    subprocess.run([result["tool"], "rmi", tag], capture_output=True, timeout=120, check=True)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if summary := config.stash.get(IMAGE_SUMMARY, None):
        terminalreporter.write_sep("-", "container image")
        terminalreporter.write_line(summary)


def megabytes(size: str) -> float:
    """A memory size as Redis, compose and Kubernetes write it (640mb, 1g, 1Gi), in MiB (Redis's mb is 1024 kB)."""
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]+)", size)
    assert match, size
    return float(match[1]) * {"mb": 1, "m": 1, "mi": 1, "gb": 1024, "g": 1024, "gi": 1024}[match[2].lower()]
