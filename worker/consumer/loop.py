"""The consumer loop: owns the Kafka consumer (poll, pause/resume, rebalances, shutdown) and nothing else. It
gets its parts ready-made (`worker/consumer/app.py` builds them): the consumer, the sink, the processor, the health
state and a clock, so every failure path can be driven by fakes.

Each batch runs to the end before the next poll: process (Redis) -> send outputs -> commit (flush + offsets,
or one transaction). So nothing is in flight when partitions are revoked, and a stop request is served
between batches. A batch that fails is retried from memory after a back-off, with every partition paused
and the group membership kept alive (polls serve the rebalances meanwhile):
- `RetryBatch` or a Redis error: the batch is run again, unless a partition of the batch was revoked or a
  stop was asked for meanwhile: then it is dropped.
- `CommitUncertain`: only the commit is called again, until it answers for certain, revoked or not: a commit
  in progress can neither be aborted nor redone without risking a second copy.
- `PartitionsLost`: dropped at once.
A dropped batch rewinds each of its partitions assigned all along (seek to the batch's first offset), so
nothing after it is committed past it (a seek that fails stops the loop: `RewindFailed`); partitions revoked
since the batch started, even if assigned again, are replayed by their new owner from the committed offset.
Under the consumer group protocol (KIP-848) revocations are incremental: only a batch holding a revoked
partition is dropped, the others go on. The processing is replay-safe (see `worker/processing/processor.py`).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import redis
import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from worker.config import Settings
from worker.consumer import metrics
from worker.consumer.health import Health
from worker.consumer.kafka import KafkaConsumer, KafkaMessage
from worker.consumer.metrics import TenantMetrics
from worker.consumer.sinks import CommitUncertain, PartitionsLost, RetryBatch, Sink, first_offsets, offsets_after
from worker.processing.processor import BatchResult
from worker.state.client import StateMissing

log = structlog.get_logger("worker.consumer.loop")

TP = tuple[str, int]
MAX_BACKOFF_S = 5.0
# Records one batch may hold in memory: after a batch that emitted more (large users.modified changes), the
# next polls fewer messages, so memory stays bounded whatever the fan-out. The first batch is small (its
# fan-out is not known yet: 1,000 events of 80 records each would be 80,000 records at once); the size then
# at most doubles per batch up to WORKER_BATCH_SIZE.
OUTPUT_BUDGET = 8_000
FIRST_BATCH = 50
LAG_INTERVAL_S = 5.0
LAG_TIMEOUT_S = 1.0  # the committed-offsets look-up of the lag report, between batches
# Every message allocates a burst of short-lived objects (models, records, Redis replies), nearly all freed by
# reference counting: collect the young generations less often (CPython's default is 700, 10, 10), and keep
# what exists when the loop starts (modules, validators, clients) out of every collection with gc.freeze().
# Measured: Processor.process on the flat corpus, 80-100 -> 51 µs per message; flat worker throughput +45%.
GC_THRESHOLDS = (50_000, 20, 10)


class RewindFailed(RuntimeError):
    """A dropped batch's partition could not be rewound: reading on would commit past messages that were never
    committed, so the loop stops (the process exits non-zero; the partition is replayed from its committed
    offset by whoever owns it next)."""


def next_batch_size(limit: int, size: int = 0, messages: int = 0, outputs: int = 0) -> int:
    """How many messages to poll next: FIRST_BATCH to start (size 0), then at most double the last size, and no
    more than would make about OUTPUT_BUDGET records at the last batch's records per message."""
    if size == 0:
        return min(limit, FIRST_BATCH)
    return max(1, min(limit, size * 2, messages * OUTPUT_BUDGET // max(1, outputs)))


class Processor(Protocol):
    """What the loop needs of the processing (`worker/processing/processor.py`). Called from the loop's thread
    only, one call at a time. Every method may raise `redis.RedisError`: the loop then retries the batch after a
    back-off (or, for `settle` and `open_changes`, logs and goes on); any other exception is a bug."""

    def process(self, messages: Sequence[KafkaMessage], now_ms: int) -> BatchResult:
        """The outputs of a batch of input and control messages (no error events), in order; `now_ms` starts new
        changes' timeouts. Called again with the same messages after any failure, before or after a crash: it
        must return the same outputs (its state writes are tagged with the messages' positions). May block on
        Redis."""
        ...

    def scan_timeouts(self, now_ms: int) -> BatchResult:
        """Timeout commands for changes whose deadline passed; committed like a batch without input offsets.
        A command sent twice is harmless."""
        ...

    def settle(self, result: BatchResult) -> None:
        """After Kafka confirmed `result`'s commit, never before: forget what no longer needs a timeout command."""
        ...

    def open_changes(self) -> int:
        """Changes waiting for their final part or their timeout (for the gauge)."""
        ...


class Clock(Protocol):
    """Monotonic seconds for scheduling, wall-clock milliseconds for the processing."""

    def monotonic(self) -> float: ...
    def wall_ms(self) -> int: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return int(time.time() * 1000)


class Loop:
    def __init__(
        self,
        settings: Settings,
        consumer: KafkaConsumer,
        sink: Sink,
        processor: Processor,
        health: Health,
        clock: Clock,
        report: Callable[[], None] = lambda: None,
    ) -> None:
        """`consumer`: not yet subscribed; the loop subscribes it and owns it from then on. `report`: called
        between batches every `LAG_INTERVAL_S` with the lag report, for gauges read from elsewhere (Redis
        memory); must not raise."""
        self.settings = settings
        self.health = health
        self._consumer, self._sink, self._processor, self._clock = consumer, sink, processor, clock
        self._report = report
        self._tenant_metrics = TenantMetrics()
        self._stopping = threading.Event()
        self._stop_by: float | None = None  # when the shutdown must be over
        self._assigned: set[TP] = set()
        self._revoked: set[TP] = set()  # revoked or lost since the current batch started

    # ---- lifecycle -------------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def stop(self) -> None:
        if self._stop_by is None:
            self._stop_by = self._clock.monotonic() + self.settings.shutdown_timeout_seconds
        self._stopping.set()

    def run(self) -> None:
        s = self.settings
        log.info(
            "starting",
            topics=s.subscribed_topics,
            group=s.group_id,
            guarantee=s.processing_guarantee,
            group_protocol=s.group_protocol,
        )
        self._sink.start()
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
                    work = functools.partial(self._processor.process, batch, self._clock.wall_ms())
                    outputs = self._run_batch(work, batch)
                    size = next_batch_size(s.batch_size, size, len(batch), outputs)
                now = self._clock.monotonic()
                if now >= next_scan and self._assigned and not self._stopping.is_set():
                    next_scan = now + s.timeout_scan_interval_seconds
                    self._run_batch(functools.partial(self._processor.scan_timeouts, self._clock.wall_ms()), [])
                    self._report_open_changes()
                if now >= next_lag:
                    next_lag = now + LAG_INTERVAL_S
                    self._report_lag()
                    self._report()
        finally:
            self._shutdown()

    # ---- one batch -------------------------------------------------------------------------------------

    def _run_batch(self, work: Callable[[], BatchResult], messages: Sequence[KafkaMessage]) -> int:
        """Process and commit one batch (retrying as needed); the number of output messages it committed."""
        started = time.perf_counter()
        offsets = offsets_after(messages)
        firsts = first_offsets(messages)
        self._revoked = set()
        attempt = 0
        result: BatchResult | None = None  # set once the outputs are sent: then only the commit is retried
        uncertain = False  # the last commit may still succeed
        failure: Exception
        while True:
            try:
                if result is None:
                    produced = work()
                    if not produced.outputs and not offsets:
                        self._settle(produced)  # nothing for Kafka to confirm
                        return 0
                    self._sink.begin()
                    self._sink.send(produced.outputs)
                    result = produced
                self._sink.commit(offsets)
                break
            except PartitionsLost as error:
                self._drop(firsts, f"partitions lost: {error}")
                return 0
            except CommitUncertain as error:
                uncertain, failure = True, error
            except (RetryBatch, redis.RedisError) as error:
                uncertain, failure, result = False, error, None
            attempt += 1
            cause = "redis" if isinstance(failure, redis.RedisError) else "kafka"
            metrics.RETRIES.labels(cause).inc()
            self.health.retry(f"{cause}: {failure}")
            # Missing Redis state does not heal by itself: an error, naming the key, for whoever is paged.
            (log.error if isinstance(failure, StateMissing) else log.warning)(
                "batch_retry",
                cause=cause,
                error=str(failure),
                attempt=attempt,
                commit_again=uncertain,
                messages=len(messages),
                commit_offsets=[f"{tp.topic}:{tp.partition}:{tp.offset}" for tp in offsets],
            )
            self._back_off(min(MAX_BACKOFF_S, 0.1 * 2**attempt), set(firsts))
            if uncertain:
                if self._stopping.is_set() and self._shutdown_left() <= self.settings.shutdown_timeout_seconds / 2:
                    # Exit as a crash would: the coordinator finishes or aborts the transaction; nothing settled.
                    log.error("batch_outcome_unknown_at_stop", messages=len(messages))
                    self.health.retried()
                    return 0
                continue  # whatever happened to the partitions meanwhile
            if self._stopping.is_set() or self._revoked & set(firsts):
                self._drop(firsts, "stopping" if self._stopping.is_set() else "revoked")
                return 0
        self.health.retried()
        self._count(result)
        self._settle(result)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        return len(result.outputs)

    def _drop(self, firsts: dict[TP, int], reason: str) -> None:
        """Give the batch up: abort it and read its partitions that are still ours again from its start."""
        self.health.retried()
        self._sink.abort(self._abort_timeout())
        assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        rewound = []
        for (topic, partition), offset in firsts.items():
            if (topic, partition) not in assigned or (topic, partition) in self._revoked:
                # Its next owner, this worker included after a revoke and a new assignment, starts from the
                # group's committed offset: rewinding it to the batch's start would read again what other
                # members committed meanwhile (a thawed zombie: a minute of records, twice).
                continue
            self._rewind(topic, partition, offset)
            rewound.append(f"{topic}:{partition}:{offset}")
        log.warning("batch_dropped", reason=reason, rewound=rewound)

    def _rewind(self, topic: str, partition: int, offset: int) -> None:
        """Read `topic:partition` again from `offset`; raises `RewindFailed` when the consumer refuses."""
        try:
            self._consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as error:
            log.error("rewind_failed", topic=topic, partition=partition, offset=offset, error=str(error))
            raise RewindFailed(f"{topic}:{partition} could not be rewound to {offset}: {error}") from error

    def _back_off(self, delay: float, batch: set[TP]) -> None:
        """Wait with every partition paused, serving rebalances; ends early at a stop or when a partition of
        the batch is revoked."""
        self._consumer.pause(self._consumer.assignment())
        deadline = self._clock.monotonic() + delay
        try:
            while self._clock.monotonic() < deadline and not (self._stopping.is_set() or self._revoked & batch):
                stray = [
                    m for m in self._consumer.consume(self.settings.batch_size, min(0.2, delay)) if self._usable(m)
                ]
                self.health.polled()
                for (topic, partition), offset in first_offsets(stray).items():
                    # Fetched before the pause, or from a partition assigned meanwhile: read them again later.
                    self._rewind(topic, partition, offset)
        finally:
            self._consumer.resume(self._consumer.assignment())

    def _settle(self, result: BatchResult) -> None:
        try:
            self._processor.settle(result)
        except redis.RedisError as error:  # a deadline left behind makes a later scan send a harmless command
            log.warning("settle_failed", error=str(error))

    def _shutdown_left(self) -> float:
        if self._stop_by is None:
            return self.settings.shutdown_timeout_seconds
        return max(0.0, self._stop_by - self._clock.monotonic())

    def _abort_timeout(self) -> float | None:
        """While stopping, an abort gets at most half of what is left of the shutdown timeout."""
        return self._shutdown_left() / 2 if self._stopping.is_set() else None

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
    # confluent-kafka assigns and unassigns after these return (incrementally under KIP-848): they only track.

    def _on_assign(self, _consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        metrics.REBALANCES.labels("assign").inc()
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        self._publish_assignment()
        log.info("partitions_assigned", partitions=[f"{p.topic}:{p.partition}" for p in partitions])

    def _on_revoke(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        # A partition paused by a batch's back-off stays paused in librdkafka if it comes back to us: resume it.
        with contextlib.suppress(KafkaException):
            consumer.resume(partitions)
        metrics.REBALANCES.labels("revoke").inc()
        gone = {(p.topic, p.partition) for p in partitions}
        self._revoked |= gone
        self._assigned -= gone
        self._publish_assignment()
        for topic, partition in gone:
            with contextlib.suppress(KeyError):
                metrics.LAG.remove(topic, str(partition))
        log.info("partitions_revoked", partitions=[f"{p.topic}:{p.partition}" for p in partitions])

    def _on_lost(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        log.warning("partitions_lost", partitions=[f"{p.topic}:{p.partition}" for p in partitions])
        self._on_revoke(consumer, partitions)

    def _publish_assignment(self) -> None:
        self.health.assigned = len(self._assigned)
        metrics.ASSIGNED.set(len(self._assigned))

    def _report_lag(self) -> None:
        """High watermark minus the group's committed offset (the position runs ahead while a batch retries)."""
        assignment = self._consumer.assignment()
        if not assignment:
            return
        try:
            committed = self._consumer.committed(assignment, timeout=LAG_TIMEOUT_S)
        except KafkaException as error:  # the next batch reports the outage
            log.debug("lag_unknown", error=str(error))
            return
        for tp in committed:
            low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            start = tp.offset if tp.offset >= 0 else low  # nothing committed yet: all of it
            if start >= 0 and high >= 0:
                metrics.LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - start))

    def _report_open_changes(self) -> None:
        with contextlib.suppress(redis.RedisError):  # the next batch reports the outage
            metrics.OPEN_CHANGES.set(self._processor.open_changes())

    def _usable(self, message: KafkaMessage) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("consume_error", error=str(error), topic=message.topic(), partition=message.partition())
        return False

    def _shutdown(self) -> None:
        """Within the shutdown timeout (from the stop request): abort an open transaction, flush, and close the
        consumer, which leaves the group so that the partitions move at once. A hung call must not keep the
        process alive."""
        log.info("stopping")
        left = self._shutdown_left()

        def close() -> None:
            self._sink.close(left / 2)
            self._consumer.close()

        closer = threading.Thread(target=close, name="close", daemon=True)
        closer.start()
        closer.join(left)
        log.info("stopped", clean=not closer.is_alive())
