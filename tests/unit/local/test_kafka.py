"""The local Apache Kafka broker's pure parts: Java version parsing, the broker choice, its configuration."""

from __future__ import annotations

import base64
import re
import uuid
from importlib.resources import files
from pathlib import Path

import pytest

from worker.local import kafka as localkafka
from worker.local.stack import choose_broker


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime Environment', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_402"', 8),
        ("no version here", None),
    ],
)
def test_parse_java_major(output: str, major: int | None) -> None:
    assert localkafka.parse_java_major(output) == major


def test_the_pom_pins_the_version_the_code_caches_under() -> None:
    pom = (files("worker.local") / "pom.xml").read_text()
    assert re.search(r"<kafka.version>(.+)</kafka.version>", pom)[1] == localkafka.KAFKA_VERSION  # type: ignore[index]
    assert localkafka.cache_dir().name == f"kafka-{localkafka.KAFKA_VERSION}"


def test_choice_follows_the_setting_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_broker({"WORKER_LOCAL_BROKER": "Tansu"}) == ("tansu", "WORKER_LOCAL_BROKER=tansu")
    monkeypatch.setattr(localkafka, "unavailable_reason", lambda: "no java on PATH")
    assert choose_broker({}) == ("tansu", "no java on PATH")
    monkeypatch.setattr(localkafka, "unavailable_reason", lambda: None)
    assert choose_broker({})[0] == "kafka"
    with pytest.raises(ValueError, match="WORKER_LOCAL_BROKER must be one of kafka, tansu"):
        choose_broker({"WORKER_LOCAL_BROKER": "redpanda"})


def test_old_java_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localkafka, "java_major", lambda: 11)
    assert localkafka.unavailable_reason() == "java 11 on PATH, Apache Kafka 4.1.1 needs 17+"


def test_server_properties_single_node_on_loopback(tmp_path: Path) -> None:
    lines = dict(line.split("=", 1) for line in localkafka.server_properties(tmp_path, 9092, 9093).splitlines())
    assert lines["process.roles"] == "broker,controller"
    assert lines["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert lines["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert lines["log.dirs"] == str(tmp_path / "data")
    assert lines["transaction.state.log.replication.factor"] == lines["transaction.state.log.min.isr"] == "1"
    assert lines["group.initial.rebalance.delay.ms"] == "0"


def test_cluster_id_is_sixteen_bytes_url_safe() -> None:
    value = localkafka.cluster_id()
    assert len(base64.urlsafe_b64decode(value + "==")) == 16 and "=" not in value


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """`kafka-storage format -t -X…` reads a leading-dash id as an option (a CI run failed on one in 64 ids):
    like Kafka's own Uuid.randomUuid, draw again."""
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x10" + bytes(15))])
    monkeypatch.setattr(localkafka.uuid, "uuid4", lambda: next(draws))
    drawn = localkafka.cluster_id()
    assert not drawn.startswith("-")
    assert base64.urlsafe_b64decode(drawn + "==")[0] == 0x10
