"""The topics a command needs, checked at its start (issue 19, defect 8: a worker without its control topic
ran degraded, its timeout commands failing for good).

- `run` writes to the output and DLQ topics: they must exist (their partitions, replication and retention
  are the platform's choice), else it refuses to start, naming the topic and its variable. It also reads and
  writes the control topic, the worker group's own internal topic: created when missing, as Kafka Streams
  creates its internal topics, with `WORKER_CONTROL_TOPIC_PARTITIONS` partitions (default: as many as the
  input topic with the most) and `WORKER_CONTROL_TOPIC_REPLICATION` replicas (default -1: the broker's
  `default.replication.factor`); a creation the broker refuses (no ACL to create topics) is a refusal too.
- `ingest` writes to its topic: it must exist.
Kafka that does not answer yet is waited for (`START_WAIT_S`), then it is a refusal as well: an orchestrator
restarts the command with a back-off.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._metadata import ClusterMetadata
from confluent_kafka.cimpl import NewTopic

from worker.config import Settings
from worker.ops.dlq import QUIET

START_WAIT_S = 60.0  # for Kafka's metadata at start
METADATA_TIMEOUT_S = 5.0  # per attempt
CREATE_TIMEOUT_S = 30.0


class Refusal(Exception):
    """What keeps a command from starting, in words for the operator (the topic, the variable to fix)."""


def worker_topics(settings: Settings) -> list[tuple[str, str, str]]:
    """(role, topic, variable) of every topic `run` uses."""
    roles = [("input", name, "WORKER_INPUT_TOPICS") for name in settings.input_topics]
    roles += [("output", settings.output_topic, "WORKER_OUTPUT_TOPIC"), ("DLQ", settings.dlq_topic, "WORKER_DLQ_TOPIC")]
    roles.append(("control", settings.control_topic, "WORKER_CONTROL_TOPIC"))
    return roles


def prepare_run(settings: Settings, wait_s: float = START_WAIT_S) -> None:
    """The output and DLQ topics exist and the control topic exists or was created; raises `Refusal`. The input
    topics are not required: the group waits for them (they may be created after the workers)."""
    admin = _admin(settings)
    topics = _metadata(admin, settings, wait_s).topics
    for role, name, variable in worker_topics(settings):
        if role in ("output", "DLQ") and not _exists(topics, name):
            raise Refusal(f"the {role} topic {name!r} does not exist — create it, or fix {variable}")
    if not _exists(topics, settings.control_topic):
        _create_control_topic(admin, settings, topics)


def prepare_ingest(settings: Settings, wait_s: float = START_WAIT_S) -> None:
    """The ingest's topic exists; raises `Refusal`."""
    topic = settings.effective_ingest_topic
    if not _exists(_metadata(_admin(settings), settings, wait_s).topics, topic):
        variable = "WORKER_INGEST_TOPIC" if settings.ingest_topic else "WORKER_INPUT_TOPICS (its first topic)"
        raise Refusal(f"the ingest topic {topic!r} does not exist — create it, or fix {variable}")


def _create_control_topic(admin: AdminClient, settings: Settings, topics: dict[str, Any]) -> None:
    name = settings.control_topic
    inputs = [len(topics[t].partitions) for t in settings.input_topics if _exists(topics, t)]
    partitions = settings.control_topic_partitions or max(inputs, default=1)
    replication = settings.control_topic_replication
    future = admin.create_topics([NewTopic(name, partitions, replication)], operation_timeout=CREATE_TIMEOUT_S)[name]
    try:
        future.result()
    except KafkaException as error:
        if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another worker created it meanwhile
            raise Refusal(
                f"the control topic {name!r} does not exist and could not be created ({error.args[0].str()}) — "
                "create it (partitions: as the input topic; WORKER_CONTROL_TOPIC_PARTITIONS, "
                "WORKER_CONTROL_TOPIC_REPLICATION), or fix WORKER_CONTROL_TOPIC"
            ) from error


def _admin(settings: Settings) -> AdminClient:
    config: dict[str, Any] = {**settings.kafka_overrides("producer"), "logger": QUIET}
    return AdminClient(config)


def _metadata(admin: AdminClient, settings: Settings, wait_s: float) -> ClusterMetadata:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return admin.list_topics(timeout=METADATA_TIMEOUT_S)
        except KafkaException as error:
            if time.monotonic() >= deadline:
                raise Refusal(
                    f"Kafka at {settings.kafka_bootstrap_servers} did not answer within {wait_s:g} s "
                    f"({error.args[0].str()}) — check WORKER_KAFKA_BOOTSTRAP_SERVERS and the WORKER_KAFKA_* settings"
                ) from error


def _exists(topics: dict[str, Any], name: str) -> bool:
    topic = topics.get(name)
    return topic is not None and topic.error is None and bool(topic.partitions)
