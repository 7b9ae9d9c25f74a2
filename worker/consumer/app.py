"""The composition root: builds every part of a running worker from the settings (Kafka clients, the sink,
Redis client and stores, the processor, the health server and its probes) and hands them to the loop, which
only runs them. Nothing else in the worker constructs a client.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient

from worker.config import ConfigError, Settings
from worker.consumer import metrics
from worker.consumer.health import Health, HealthServer
from worker.consumer.loop import Loop, SystemClock
from worker.consumer.sinks import AtLeastOnceSink, Sink, TransactionalId, TransactionalSink
from worker.logs import KAFKA_LOGGER
from worker.processing.processor import Processor
from worker.state.changes import RedisChangeStore
from worker.state.client import NO_EVICTION, Client, ReplicaWait, memory, redis_client
from worker.state.dedupe import Deduper
from worker.state.recency import RedisRecency
from worker.state.tenants import TenantGroups

log = structlog.get_logger("worker.consumer.app")

REPLICA_WAIT_MS = 1_000  # how long a batch waits for WORKER_REDIS_MIN_REPLICAS before it counts as a failure


@dataclass
class App:
    loop: Loop
    health_server: HealthServer


def build(settings: Settings) -> App:
    """Raises `ConfigError` for a setting the worker refuses."""
    kafka, warnings = settings.consumer_config()
    for warning in warnings:
        log.warning("setting_ignored", detail=warning)
    max_poll_s = int(kafka.get("max.poll.interval.ms", 300_000)) / 1000
    # Every blocking Kafka call in the loop must return well within max.poll.interval.ms.
    kafka_timeout = max(1.0, min(30.0, max_poll_s / 3))
    health = Health(max_poll_s)
    consumer = Consumer(
        {
            "group.id": settings.group_id,
            "auto.offset.reset": "earliest",
            # Prefetch bounded to 16 MB (librdkafka's default is 64 MB): memory, not throughput, is short.
            "queued.max.messages.kbytes": 16384,
            "error_cb": _on_kafka_error,
            "logger": KAFKA_LOGGER,
            **kafka,
        }
    )
    producer: dict[str, Any] = {
        "linger.ms": 5,
        "error_cb": _on_kafka_error,
        "logger": KAFKA_LOGGER,
        **settings.kafka_overrides("producer"),
    }
    sink: Sink
    if settings.processing_guarantee == "exactly_once":
        ids = TransactionalId(settings.effective_transactional_id(), configured=bool(settings.transactional_id))
        sink = TransactionalSink(producer, consumer, kafka_timeout, settings.dlq_topic, Producer, ids)
    else:
        sink = AtLeastOnceSink(producer, consumer, kafka_timeout, settings.dlq_topic)
    client = redis_client(settings)
    refuse_evicting_redis(client, settings.redis_allow_eviction)
    processor = redis_processor(settings, client)
    loop = Loop(settings, consumer, sink, processor, health, SystemClock(), functools.partial(report_memory, client))
    return App(loop, _health_server(settings, health))


def redis_processor(settings: Settings, client: Client) -> Processor:
    """`client` is used by the processor only, from one thread (see `ReplicaWait`)."""
    replicas = settings.redis_min_replicas
    ttl_seconds = int(settings.batch_timeout_seconds + settings.dedupe_ttl_seconds)
    return Processor(
        Deduper(client, settings.dedupe_ttl_seconds),
        RedisChangeStore(
            client,
            timeout_ms=int(settings.batch_timeout_seconds * 1000),
            ttl_seconds=ttl_seconds,
            resend_ms=int(settings.flush_lease_seconds * 1000),
        ),
        output_topic=settings.output_topic,
        dlq_topic=settings.dlq_topic,
        control_topic=settings.control_topic,
        tenants=TenantGroups(client, applied_ttl_seconds=ttl_seconds),
        recency=RedisRecency(client, step_ttl_seconds=ttl_seconds),
        formats=settings.topic_formats,
        durable=ReplicaWait(client, replicas, REPLICA_WAIT_MS).wait if replicas else None,
    )


def refuse_evicting_redis(client: Client, allowed: bool) -> None:
    """Raises `ConfigError` when a Redis primary has a `maxmemory-policy` that evicts keys (unless `allowed`,
    `WORKER_REDIS_ALLOW_EVICTION`). A Redis that does not answer yet, or denies INFO, is not held against the
    start: logged, and the loop waits for Redis as in any outage."""
    try:
        nodes = memory(client)
    except redis.RedisError as error:
        log.warning("redis_policy_unknown", error=str(error), needed=NO_EVICTION)
        return
    for node in nodes:
        if node.policy == NO_EVICTION:
            continue
        if allowed:
            log.warning("redis_evicts", node=node.node, policy=node.policy, setting="WORKER_REDIS_ALLOW_EVICTION")
            continue
        raise ConfigError(
            f"Redis ({node.node}) has maxmemory-policy {node.policy}: at maxmemory it would evict the worker's "
            "dedupe claims and open changes (records repeated or lost); set maxmemory-policy noeviction, or "
            "WORKER_REDIS_ALLOW_EVICTION=true to run anyway"
        )


def report_memory(client: Client) -> None:
    """The memory gauges of every Redis primary (`worker_redis_used_memory_bytes`, `worker_redis_maxmemory_bytes`);
    called by the loop between batches. A failure leaves them as they were (the batches report outages)."""
    try:
        nodes = memory(client)
    except redis.RedisError as error:
        log.debug("redis_memory_unknown", error=str(error))
        return
    for node in nodes:
        metrics.REDIS_USED_MEMORY.labels(node.node).set(node.used)
        metrics.REDIS_MAXMEMORY.labels(node.node).set(node.maxmemory)


def _health_server(settings: Settings, health: Health) -> HealthServer:
    probe_redis = redis_client(settings, 1)
    admin_config: dict[str, Any] = {**settings.kafka_overrides("producer"), "logger": KAFKA_LOGGER}
    admin = AdminClient(admin_config)
    topic = settings.input_topics[0]

    def redis_check() -> str | None:
        try:
            probe_redis.ping()
        except redis.RedisError as error:
            return str(error)
        return None

    def kafka_check() -> str | None:
        try:
            admin.list_topics(topic, timeout=1.5)
        except Exception as error:  # any failure to get metadata means "not reachable"
            return str(error)
        return None

    return HealthServer(settings.metrics_port, health, {"redis": redis_check, "kafka": kafka_check})


def _on_kafka_error(error: KafkaError) -> None:
    if error.code() == KafkaError._TRANSPORT:
        return  # librdkafka's own log line says it already; _ALL_BROKERS_DOWN follows if it matters
    level = "error" if error.fatal() else "warning"
    getattr(log, level)("kafka_error", error=str(error), code=error.name())
