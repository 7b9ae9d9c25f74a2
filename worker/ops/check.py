"""`python -m worker check`: are Kafka, the topics and Redis there as configured, is Redis durable, and does it keep
the worker's state at its memory limit (noeviction)?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from worker.config import Settings
from worker.ops.dlq import QUIET
from worker.ops.topics import worker_topics
from worker.state.client import NO_EVICTION, Client, memory, on_node, primaries, redis_client


@dataclass
class Report:
    """Lines of a check, printed as they come: `ok:`, `warning:` (exit 0) or `problem:` (exit 1)."""

    problems: int = 0
    warnings: int = 0

    def ok(self, text: str) -> None:
        print(f"ok: {text}")

    def warning(self, text: str) -> None:
        self.warnings += 1
        print(f"warning: {text}")

    def problem(self, text: str) -> None:
        self.problems += 1
        print(f"problem: {text}")


def check(settings: Settings, timeout: float) -> int:
    report = Report()
    check_kafka(settings, timeout, report)
    check_redis(settings, timeout, report)
    verdict = f"{report.problems} problem(s)" if report.problems else "all good"
    print(f"check: {verdict}, {report.warnings} warning(s)")
    return 1 if report.problems else 0


def check_kafka(settings: Settings, timeout: float, report: Report) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    config: dict[str, Any] = {**settings.kafka_overrides("producer"), "logger": QUIET}
    admin = AdminClient(config)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as error:
        report.problem(
            f"Kafka at {bootstrap} did not answer within {timeout:g} s ({error.args[0].str()}) — "
            "check WORKER_KAFKA_BOOTSTRAP_SERVERS and the WORKER_KAFKA_* security settings"
        )
        return
    report.ok(f"Kafka at {bootstrap} answers, {len(metadata.brokers)} broker(s)")
    if overlap := set(settings.input_topics) & {settings.output_topic, settings.dlq_topic, settings.control_topic}:
        report.problem(f"topic(s) {sorted(overlap)} are both input and output — fix WORKER_INPUT_TOPICS")
    for role, name, variable in worker_topics(settings):
        topic = metadata.topics.get(name)
        if topic is None or topic.error is not None or not topic.partitions:
            report.problem(f"{role} topic {name!r} does not exist — create it or fix {variable}")
        else:
            report.ok(f"{role} topic {name!r}: {len(topic.partitions)} partition(s)")


def check_redis(settings: Settings, timeout: float, report: Report) -> None:
    where = redact(settings.redis_url) + (" (cluster)" if settings.redis_cluster else "")
    try:
        client = redis_client(settings, timeout)
        client.ping()
    except redis.RedisError as error:
        report.problem(f"Redis at {where} does not answer PING ({error}) — check WORKER_REDIS_URL")
        return
    try:
        nodes = primaries(client)
        report.ok(f"Redis at {where} answers PING, {len(nodes)} primary node(s)")
        for node in nodes:
            check_redis_node(client, node, settings.redis_min_replicas, report)
        check_redis_memory(client, report)
    except redis.RedisError as error:
        report.problem(f"Redis at {where} failed during the check ({error})")
    finally:
        client.close()


LOSES_WRITES = (
    "a Redis crash or restart loses the dedupe claims and open changes it acknowledged but had not written to disk, "
    "so events already committed in Kafka can be emitted again and parts of open changes forgotten"
)


def check_redis_node(client: Client, node: Any, min_replicas: int, report: Report) -> None:
    """Durability of one primary: AOF with fsync on every write, and the replicas WAIT will ask for."""
    name = "Redis" if node is None else f"Redis node {node.name}"
    try:
        info: dict[str, Any] = {
            **on_node(client, node, "INFO", "server"),
            **on_node(client, node, "INFO", "persistence"),
            **on_node(client, node, "INFO", "replication"),
        }
    except redis.ResponseError as error:  # INFO may be denied (ACL) or renamed on managed services
        report.warning(f"cannot read {name} INFO ({error}): make sure it runs with appendonly yes, appendfsync always")
        return
    if info.get("aof_enabled") != 1:
        report.problem(f"{name} has AOF persistence off (appendonly no): {LOSES_WRITES} — set appendonly yes")
        return
    try:
        reply = on_node(client, node, "CONFIG", "GET", "appendfsync")
        fsync = _text(dict(reply).get(b"appendfsync", dict(reply).get("appendfsync")))
    except redis.ResponseError as error:  # CONFIG is often denied on managed services
        report.warning(f"cannot read {name} appendfsync ({error}): make sure it is always")
        fsync = None
    if fsync is not None and fsync != "always":
        report.problem(
            f"{name} has appendfsync {fsync}: it acknowledges writes before they are on disk, so {LOSES_WRITES} "
            "— set appendfsync always"
        )
        return
    replicas = int(info.get("connected_slaves", 0))
    if replicas < min_replicas:
        report.problem(
            f"{name} has {replicas} connected replica(s), WORKER_REDIS_MIN_REPLICAS asks for {min_replicas}: every "
            "batch would fail waiting for them — add replicas or lower the setting"
        )
        return
    report.ok(f"{name}: version {info.get('redis_version', '?')}, AOF on, appendfsync always, {replicas} replica(s)")
    if replicas and not min_replicas:
        report.warning(
            f"{name} has {replicas} replica(s) but WORKER_REDIS_MIN_REPLICAS is 0: a failover to a replica that "
            "missed the last writes loses them — set WORKER_REDIS_MIN_REPLICAS"
        )


EVICTS = (
    "at maxmemory it evicts keys instead of refusing writes: evicted dedupe claims let copies through as new "
    "records, evicted parts of open changes lose users or leave a change stuck on missing state"
)


def check_redis_memory(client: Client, report: Report) -> None:
    """Every primary: `maxmemory-policy noeviction` (a problem otherwise, and `run` refuses to start), and a
    `maxmemory` below the host's memory (a warning without one)."""
    try:
        nodes = memory(client)
    except redis.ResponseError as error:  # INFO denied
        report.warning(f"cannot read Redis INFO memory ({error}): make sure maxmemory-policy is noeviction")
        return
    for node in nodes:
        name = "Redis" if node.node == "redis" else f"Redis node {node.node}"
        if node.policy != NO_EVICTION:
            report.problem(f"{name} has maxmemory-policy {node.policy}: {EVICTS} — set maxmemory-policy noeviction")
        elif not node.maxmemory:
            report.warning(
                f"{name} has no maxmemory ({_mb(node.used)} used): it grows until the host or its container kills "
                "it, then the workers wait for it — set maxmemory below its memory limit (README: Redis sizing)"
            )
        else:
            share = node.used / node.maxmemory
            report.ok(f"{name}: noeviction, {_mb(node.used)} of maxmemory {_mb(node.maxmemory)} used ({share:.0%})")


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def _text(value: object) -> str | None:
    return value.decode() if isinstance(value, bytes) else None if value is None else str(value)


def redact(url: str) -> str:
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{host}"))
