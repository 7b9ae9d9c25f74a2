"""The consumer loop: owns the Kafka consumer (poll, pause/resume, rebalances, shutdown) and nothing else.

Each batch runs to the end before the next poll: process (Redis) -> send outputs -> commit (flush + offsets,
or one transaction). So nothing is in flight when partitions are revoked, and a stop request is served
between batches. A batch that fails on Redis or Kafka is retried from memory after a back-off, with every
partition paused and the group membership kept alive; if its partitions move meanwhile it is dropped and its
new owner replays it. The processing is replay-safe (see `worker/pipeline.py`).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from worker import metrics
from worker.config import Settings
from worker.health import Health, HealthServer
from worker.logs import KAFKA_LOGGER
from worker.output import (
    AtLeastOnceSink,
    CommitUncertain,
    PartitionsLost,
    RetryBatch,
    Sink,
    TransactionalSink,
    offsets_after,
)
from worker.pipeline import BatchResult, Processor
from worker.state import redis_client, redis_processor
from worker.tenants import TenantMetrics

log = structlog.get_logger("worker.consumer")

MAX_BACKOFF_S = 5.0
# Records one batch may hold in memory: after a batch that emitted more (large users.modified changes), the
# next polls fewer messages, so memory stays bounded whatever the fan-out. The first batch is small (its
# fan-out is not known yet: 1,000 events of 80 records each would be 80,000 records at once); the size then
# at most doubles per batch up to WORKER_BATCH_SIZE.
OUTPUT_BUDGET = 8_000
FIRST_BATCH = 50
LAG_INTERVAL_S = 5.0
# Every message allocates a burst of short-lived objects (models, records, Redis replies), nearly all freed by
# reference counting: collect the young generations less often (CPython's default is 700, 10, 10), and keep
# what exists when the loop starts (modules, validators, clients) out of every collection with gc.freeze().
# Measured: Processor.process on the flat corpus, 80-100 -> 51 µs per message; flat worker throughput +45%.
GC_THRESHOLDS = (50_000, 20, 10)


def next_batch_size(limit: int, size: int = 0, messages: int = 0, outputs: int = 0) -> int:
    """How many messages to poll next: FIRST_BATCH to start (size 0), then at most double the last size, and no
    more than would make about OUTPUT_BUDGET records at the last batch's records per message."""
    if size == 0:
        return min(limit, FIRST_BATCH)
    return max(1, min(limit, size * 2, messages * OUTPUT_BUDGET // max(1, outputs)))


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        kafka = settings.kafka_overrides("consumer")
        max_poll_s = int(kafka.get("max.poll.interval.ms", 300_000)) / 1000
        # Every blocking Kafka call in the loop must return well within max.poll.interval.ms.
        self._kafka_timeout = max(1.0, min(30.0, max_poll_s / 3))
        self.health = Health(max_poll_s)
        self._consumer = Consumer(
            {
                "group.id": settings.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "partition.assignment.strategy": "range",
                # Prefetch bounded to 16 MB (librdkafka's default is 64 MB): memory, not throughput, is short.
                "queued.max.messages.kbytes": 16384,
                "error_cb": self._on_kafka_error,
                "logger": KAFKA_LOGGER,
                **kafka,
            }
        )
        producer: dict[str, Any] = {
            "linger.ms": 5,
            "error_cb": self._on_kafka_error,
            "logger": KAFKA_LOGGER,
            **settings.kafka_overrides("producer"),
        }
        self._sink: Sink
        if settings.processing_guarantee == "exactly_once":
            producer["transactional.id"] = settings.effective_transactional_id()
            self._sink = TransactionalSink(producer, self._consumer, self._kafka_timeout)
        else:
            self._sink = AtLeastOnceSink(producer, self._consumer, self._kafka_timeout)
        self._processor: Processor = redis_processor(settings, redis_client(settings))
        self._tenant_metrics = TenantMetrics()
        self._stopping = threading.Event()
        self._lost = False  # set by the rebalance callbacks while a batch waits for its retry

    # ---- lifecycle -------------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def stop(self) -> None:
        self._stopping.set()

    def serve_health(self) -> HealthServer:
        probe_redis = redis_client(self.settings, timeout=1)
        admin_config: dict[str, Any] = {**self.settings.kafka_overrides("producer"), "logger": KAFKA_LOGGER}
        admin = AdminClient(admin_config)
        topic = self.settings.input_topics[0]

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

        return HealthServer(self.settings.metrics_port, self.health, {"redis": redis_check, "kafka": kafka_check})

    def run(self) -> None:
        s = self.settings
        log.info("starting", topics=s.input_topics, group=s.group_id, guarantee=s.processing_guarantee)
        self._consumer.subscribe(
            s.subscribed_topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        wait_s = s.batch_max_wait_ms / 1000
        next_scan = next_lag = 0.0
        size = next_batch_size(s.batch_size)
        try:
            while not self._stopping.is_set():
                messages = self._consumer.consume(size, wait_s)
                self.health.polled()
                batch = [m for m in messages if self._usable(m)]
                if batch:
                    work = functools.partial(self._processor.process, batch, int(time.time() * 1000))
                    outputs = self._run_batch(work, batch)
                    size = next_batch_size(s.batch_size, size, len(batch), outputs)
                now = time.monotonic()
                if now >= next_scan and self.health.assigned:
                    next_scan = now + s.timeout_scan_interval_seconds
                    self._run_batch(functools.partial(self._processor.scan_timeouts, int(time.time() * 1000)), [])
                    self._report_open_changes()
                if now >= next_lag:
                    next_lag = now + LAG_INTERVAL_S
                    self._report_lag()
        finally:
            self._shutdown()

    # ---- one batch -------------------------------------------------------------------------------------

    def _run_batch(self, work: Callable[[], BatchResult], messages: Sequence[Message]) -> int:
        """Process and commit one batch (retrying as needed); the number of output messages it committed."""
        started = time.perf_counter()
        offsets = offsets_after(messages)
        self._lost = False
        attempt = 0
        result: BatchResult | None = None  # set once the outputs are sent: then only the commit is retried
        while True:
            try:
                if result is None:
                    produced = work()
                    if not produced.outputs and not offsets and not produced.closed:
                        return 0
                    self._sink.begin()
                    self._sink.send(produced.outputs)
                    result = produced
                self._sink.commit(offsets)
                break
            except PartitionsLost as error:
                self._sink.abort()
                log.warning("batch_dropped_partitions_lost", error=str(error), messages=len(messages))
                return 0
            except (RetryBatch, redis.RedisError) as error:
                if not isinstance(error, CommitUncertain):
                    self._sink.abort()
                    result = None
                cause = "redis" if isinstance(error, redis.RedisError) else "kafka"
                metrics.RETRIES.labels(cause).inc()
                attempt += 1
                self.health.retrying = f"{cause}: {error}"
                log.warning(
                    "batch_retry",
                    cause=cause,
                    error=str(error),
                    attempt=attempt,
                    messages=len(messages),
                    commit_offsets=[f"{tp.topic}:{tp.partition}:{tp.offset}" for tp in offsets],
                )
                if not self._back_off(min(MAX_BACKOFF_S, 0.1 * 2**attempt)):
                    self._sink.abort()
                    self.health.retrying = None
                    log.warning("batch_abandoned", reason="stopping" if self._stopping.is_set() else "revoked")
                    return 0
        self.health.retrying = None
        self._count(result)
        try:
            self._processor.settle(result)
        except redis.RedisError as error:  # leases expire and deadlines are re-checked: nothing is lost
            log.warning("settle_failed", error=str(error))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        return len(result.outputs)

    def _back_off(self, delay: float) -> bool:
        """Wait with every partition paused, serving rebalances; False if the batch must be given up."""
        self._consumer.pause(self._consumer.assignment())
        deadline = time.monotonic() + delay
        try:
            while time.monotonic() < deadline and not (self._lost or self._stopping.is_set()):
                stray = self._consumer.consume(self.settings.batch_size, min(0.2, delay))
                self.health.polled()
                for tp in offsets_after(stray):  # fetched before the pause: read them again later
                    self._consumer.seek(TopicPartition(tp.topic, tp.partition, _first(stray, tp)))
        finally:
            self._consumer.resume(self._consumer.assignment())
        return not (self._lost or self._stopping.is_set())

    def _count(self, result: BatchResult) -> None:
        for (event_type, outcome), n in result.events.items():
            metrics.EVENTS.labels(event_type, outcome).inc(n)
        for schema, n in result.records.items():
            metrics.RECORDS.labels(schema).inc(n)
        for reason, n in result.dlq.items():
            metrics.DLQ.labels(reason).inc(n)
        for outcome, n in result.changes_closed.items():
            metrics.CHANGES_CLOSED.labels(outcome).inc(n)
        self._tenant_metrics.publish(result.tenant_groups, result.tenant_limit_exceeded)

    # ---- Kafka callbacks and reports -------------------------------------------------------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        metrics.REBALANCES.labels("assign").inc()
        self.health.assigned = len(partitions)
        metrics.ASSIGNED.set(len(partitions))
        log.info("partitions_assigned", partitions=[f"{p.topic}:{p.partition}" for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Batches commit before the next poll, so nothing is in flight unless a batch waits for a retry.
        # A partition paused by that wait stays paused in librdkafka if it comes back to us: resume it now.
        with contextlib.suppress(KafkaException):
            consumer.resume(partitions)
        metrics.REBALANCES.labels("revoke").inc()
        self._lost = True
        self.health.assigned = 0
        metrics.ASSIGNED.set(0)
        for p in partitions:
            with contextlib.suppress(KeyError):
                metrics.LAG.remove(p.topic, str(p.partition))
        log.info("partitions_revoked", partitions=[f"{p.topic}:{p.partition}" for p in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("partitions_lost", partitions=[f"{p.topic}:{p.partition}" for p in partitions])
        self._on_revoke(consumer, partitions)

    def _on_kafka_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._TRANSPORT:
            return  # librdkafka's own log line says it already; _ALL_BROKERS_DOWN follows if it matters
        level = "error" if error.fatal() else "warning"
        getattr(log, level)("kafka_error", error=str(error), code=error.name())

    def _report_lag(self) -> None:
        assignment = self._consumer.assignment()
        if not assignment:
            return
        for tp in self._consumer.position(assignment):
            _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset >= 0 and high >= 0:
                metrics.LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - tp.offset))

    def _report_open_changes(self) -> None:
        with contextlib.suppress(redis.RedisError):  # the next batch reports the outage
            metrics.OPEN_CHANGES.set(self._processor.open_changes())

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("consume_error", error=str(error), topic=message.topic(), partition=message.partition())
        return False

    def _shutdown(self) -> None:
        """Close within the shutdown timeout; a hung close must not keep the process alive."""
        log.info("stopping")

        def close() -> None:
            self._sink.close(self.settings.shutdown_timeout_seconds / 2)
            self._consumer.close()

        closer = threading.Thread(target=close, name="close", daemon=True)
        closer.start()
        closer.join(self.settings.shutdown_timeout_seconds)
        log.info("stopped", clean=not closer.is_alive())


def _first(messages: Sequence[Message], tp: TopicPartition) -> int:
    return min(m.offset() or 0 for m in messages if (m.topic(), m.partition()) == (tp.topic, tp.partition))
