"""The sinks: getting a batch's records and DLQ messages into Kafka together with its input offsets.

A `Sink` is a checkpoint. The loop calls, per batch, `begin`, `send`, `commit` (and on giving a batch up,
`abort`); each method's docstring is its contract. Two guarantees:
- `AtLeastOnceSink`: idempotent producer; commit = flush (every delivery acknowledged), then commit offsets.
  A crash between the two replays the batch; readers drop the copies by `record_id`.
- `TransactionalSink`: outputs and input offsets commit in one Kafka transaction
  (`send_offsets_to_transaction` with the consumer's group metadata, so a zombie that lost its partitions
  is fenced by the group coordinator). Readers with `isolation.level=read_committed` see each record once.

`commit` returns once the batch is committed, or raises one of three outcomes (siblings: none is a kind of
another):
- `CommitUncertain`: the commit was asked for and may still succeed (`commit_transaction` or the offset commit
  timed out): call `commit` again, never redo the batch. A timeout before that (`send_offsets_to_transaction`)
  is a `RetryBatch`: nothing of the batch is committed until `commit_transaction`.
- `RetryBatch`: the batch is certainly not committed (the sink has aborted it): run it again.
- `PartitionsLost`: not committed, and the group moved on (generation or membership changed): drop the
  batch and rewind; whatever partitions are still ours are read again.
A fatal producer error (fencing included) means a new producer. If it happened inside `commit_transaction`,
the commit may have succeeded on the broker: the new producer's `init_transactions` finishes that
transaction either way, and then the group's committed offsets tell: at the batch's end means committed.
"""

from __future__ import annotations

import contextlib
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from worker.consumer import metrics
from worker.consumer.kafka import KafkaConsumer, KafkaProducer, NewProducer
from worker.processing.deadletter import dead_letter_fields, dead_letter_headers
from worker.processing.processor import Output

log = structlog.get_logger("worker.consumer.sinks")

# Commit failures that mean this member's generation is over: the partitions may be somebody else's now.
GROUP_MOVED = {
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError._ASSIGNMENT_LOST,
    KafkaError.FENCED_MEMBER_EPOCH,  # KIP-848
    KafkaError.STALE_MEMBER_EPOCH,  # KIP-848
}
# Another producer with our transactional.id started after us (or the coordinator bumped our epoch).
FENCING = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
TOO_LARGE = "too_large"

# An output the broker refused as too large, recognised when the batch is sent again.
OutputId = tuple[str | None, bytes | None, int]


class CommitUncertain(Exception):
    """The commit did not finish in time and may still succeed: call `commit` again, do not redo the batch."""


class RetryBatch(Exception):
    """The batch was not committed; run it again after a back-off."""


class PartitionsLost(Exception):
    """The batch was not committed and its partitions may belong to another member now: drop and rewind."""


class TransactionalId:
    """This process's `transactional.id`, and what a fencing says about it.

    Two live processes with one id fence each other in turn: nothing is lost or repeated (every fenced batch
    is resolved by the group's offsets and redone), but both crawl. Without `WORKER_TRANSACTIONAL_ID` the
    default (`<group>-<hostname>-<pid>`) collides for host-network pods (one hostname, pid 1 each): at the
    first fencing this process takes a unique id. A configured id is the operator's: it is kept, and every
    further fencing logs an error naming the setting.
    """

    def __init__(self, default: str, configured: bool, suffix: Callable[[], str] = lambda: uuid.uuid4().hex[:8]):
        self._id, self._configured, self._suffix = default, configured, suffix
        self._unique = False
        self.fencings = 0

    def current(self) -> str:
        return self._id

    def fenced(self) -> None:
        self.fencings += 1
        metrics.PRODUCER_FENCED.inc()
        if not self._configured and not self._unique:
            shared, self._id, self._unique = self._id, f"{self._id}-{self._suffix()}", True
            log.warning("transactional_id_shared", shared=shared, now=self._id)
        elif self._configured and self.fencings > 1:
            log.error(
                "transactional_id_shared",
                transactional_id=self._id,
                fencings=self.fencings,
                fix="another process uses WORKER_TRANSACTIONAL_ID; give each replica its own, or leave it unset",
            )
        else:
            log.warning("producer_fenced", transactional_id=self._id)


class Sink:
    """Called from the loop's thread only, one batch at a time: `begin`, `send`, then `commit` until it returns
    or raises `RetryBatch`/`PartitionsLost`; `abort` when the loop gives the batch up."""

    def __init__(
        self,
        config: dict[str, Any],
        consumer: KafkaConsumer,
        timeout: float,
        dlq_topic: str,
        new_producer: NewProducer = Producer,
    ) -> None:
        # A delivery report only for failures: an output the broker refuses as too large is found there.
        self._config = {"delivery.report.only.error": True, **config, "on_delivery": self._delivered}
        self._consumer, self._timeout, self._dlq_topic = consumer, timeout, dlq_topic
        self._new_producer = new_producer
        self._producer: KafkaProducer = new_producer(self._producer_config())
        self._too_large: set[OutputId] = set()  # until the batch that held them commits
        self._stubs = 0
        self._error: KafkaError | None = None  # first failed delivery of the batch

    def _producer_config(self) -> dict[str, Any]:
        return self._config

    def start(self) -> None:
        """Once, before the first poll: get ready for the first batch. Never raises (a failure is retried by the
        first `begin`)."""

    def begin(self) -> None:
        """Start a batch: outputs sent from now on belong to it. Raises `RetryBatch` when Kafka cannot start one
        (the loop backs off and runs the batch again)."""
        self._stubs = 0
        self._error = None

    def send(self, outputs: Sequence[Output]) -> None:
        """Queue the outputs in the current batch, in order. Blocks only while the producer's local queue is
        full. An output too large for Kafka is replaced by its DLQ stub. Raises `RetryBatch` when an output
        cannot be queued (the batch is aborted: run it again)."""
        produce = self._producer.produce
        for out in outputs:
            if self._too_large and _identity(out) in self._too_large:
                out = self._stub(out, "the topic's max.message.bytes (refused by the broker)")
            try:  # the common case without the retry loop: a fan-out batch sends thousands
                produce(out.topic, out.value, out.key, headers=out.headers)
            except (BufferError, KafkaException):
                self._produce(out)  # nothing was queued: the loop below waits, retries or stubs it
        self._poll(0)

    def _poll(self, timeout: float) -> None:
        """Serve delivery reports. A fatal error is raised by the poll that serves it (a fencing often
        surfaces here, after the produce calls): the batch is not sent."""
        try:
            self._producer.poll(timeout)
        except KafkaException as error:
            self._not_sent(error)

    def commit(self, offsets: list[TopicPartition]) -> None:
        """Make the batch's outputs durable together with `offsets` (the input positions after the batch; none
        for a timeout scan). Blocks on Kafka up to the sink's timeout. Returns once committed, or raises:
        `CommitUncertain` (the commit itself was asked for and may still succeed: call `commit` again, never
        redo nor abort the batch),
        `RetryBatch` (certainly not committed, already aborted: run the batch again) or `PartitionsLost` (not
        committed and the group moved on: drop the batch and rewind)."""
        raise NotImplementedError

    def abort(self, timeout: float | None = None) -> None:
        """Give up the current batch, best effort: its outputs never count as committed. Never raises; a commit
        whose outcome is unknown is not aborted (its outcome decides)."""

    def close(self, timeout: float) -> None:
        """At shutdown, within `timeout` seconds: end what is open, deliver what was queued."""
        if not _drain(self._producer, timeout):  # else the process exits with it: close() would wait without limit
            _close(self._producer)

    def _replace_producer(self) -> None:
        """A new producer after a fatal error. The old one is closed first, deliberately, never left to the
        garbage collector (issue 19, defect 6: a worker whose fenced producer was dropped died of heap
        corruption; `tests/integration/consumer/fence_loop.py` reproduced it). The order librdkafka documents:
        purge what is queued and in flight, serve the purged messages' delivery reports (poll), then close
        (rd_kafka_destroy). The fatal error surfaces once, at the first poll: confluent-kafka raises it there,
        and a `flush` that serves it goes on calling callbacks with the exception set (SystemError). Nothing
        of the old producer counts: its batch is aborted or resolved anyway."""
        old = self._producer
        old.purge(in_queue=True, in_flight=True, blocking=True)
        if pending := _drain(old, self._timeout):
            log.warning("old_producer_not_drained", pending=pending)  # close() waits for librdkafka's timeouts
        _close(old)
        self._error = None  # the purged deliveries' reports belong to the old producer
        self._producer = self._new_producer(self._producer_config())

    def _produce(self, out: Output) -> None:
        while True:
            try:
                self._producer.produce(out.topic, out.value, out.key, headers=out.headers)
                return
            except BufferError:  # local queue full: let deliveries drain
                self._poll(0.05)
            except KafkaException as error:
                if error.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE or out.value is None:
                    self._not_sent(error)
                out = self._stub(out, "the producer's message.max.bytes")

    def _not_sent(self, error: KafkaException) -> NoReturn:
        """A produce call failed for another reason than size: the batch is not committed; raises."""
        raise RetryBatch(str(error.args[0])) from error

    def _stub(self, out: Output, limit: str) -> Output:
        """The DLQ stand-in of an output too large for Kafka: its headers, why, and no value."""
        size = len(out.value or b"")
        earlier = dead_letter_fields(out.headers)
        detail = f"{size} bytes for {out.topic}, over {limit}"
        if "reason" in earlier:
            detail += f"; dead-lettered as {earlier['reason']}: {earlier.get('detail', '')}"[:300]
        partition, offset = earlier.get("source.partition"), earlier.get("source.offset")
        headers = dead_letter_headers(
            out.headers,
            TOO_LARGE,
            detail,
            earlier.get("source.topic"),
            int(partition) if partition and partition.isdigit() else None,
            int(offset) if offset and offset.isdigit() else None,
        )
        self._stubs += 1
        log.warning("output_too_large", topic=out.topic, size=size, source_offset=offset, limit=limit)
        return Output(self._dlq_topic, out.key, None, headers)

    def _delivered(self, error: KafkaError | None, message: Any) -> None:
        if error is None:
            return
        if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            self._too_large.add((message.topic(), message.key(), hash(message.value())))
        if self._error is None:
            self._error = error

    def _committed(self) -> None:
        if self._stubs:
            metrics.DLQ.labels(TOO_LARGE).inc(self._stubs)
        self._too_large.clear()


class AtLeastOnceSink(Sink):
    def _producer_config(self) -> dict[str, Any]:
        return {**self._config, "enable.idempotence": True, "acks": "all"}

    def commit(self, offsets: list[TopicPartition]) -> None:
        try:
            remaining = self._producer.flush(self._timeout)
        except KafkaException as error:  # a fatal error, raised by the poll that serves it
            self._not_sent(error)
        if self._error is not None:
            raise RetryBatch(f"output not delivered: {self._error}")
        if remaining:
            raise CommitUncertain(f"output not acknowledged yet: {remaining} pending")
        if offsets:
            try:
                self._consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as error:
                kafka_error: KafkaError = error.args[0]
                if kafka_error.code() in GROUP_MOVED:
                    raise PartitionsLost(str(kafka_error)) from error
                if kafka_error.retriable():
                    raise CommitUncertain(str(kafka_error)) from error
                raise RetryBatch(str(kafka_error)) from error
        self._committed()

    def abort(self, timeout: float | None = None) -> None:
        self._producer.purge(in_queue=True, in_flight=False, blocking=False)
        with contextlib.suppress(KafkaException):  # a fatal error stays: the next produce raises it again
            self._producer.poll(0)
        self._error = None

    def _not_sent(self, error: KafkaException) -> NoReturn:
        if error.args[0].fatal():  # the idempotent producer gave up its guarantees: a new one
            log.warning("producer_fatal_error", error=str(error.args[0]))
            self._replace_producer()
        super()._not_sent(error)


class TransactionalSink(Sink):
    def __init__(
        self,
        config: dict[str, Any],
        consumer: KafkaConsumer,
        timeout: float,
        dlq_topic: str,
        new_producer: NewProducer,
        ids: TransactionalId,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock`: monotonic seconds, to tell a fencing by the coordinator's transaction timeout from a twin's."""
        self._ids, self._clock = ids, clock
        # librdkafka's default; the coordinator aborts a transaction open longer (and bumps the producer's epoch)
        self._transaction_timeout = int(config.get("transaction.timeout.ms", 60_000)) / 1000
        self._began = 0.0  # when the open transaction began
        super().__init__(config, consumer, timeout, dlq_topic, new_producer)
        self._ready = False  # init_transactions done for the current producer
        self._open = False  # a transaction is begun and neither committed nor aborted
        self._offsets_sent = False  # this transaction carries its input offsets already
        self._committing = False  # commit_transaction was called and has not given a definite answer
        self._unresolved = False  # a fatal error inside commit_transaction: committed or not is unknown

    def _producer_config(self) -> dict[str, Any]:
        return {**self._config, "transactional.id": self._ids.current()}

    def start(self) -> None:
        """`init_transactions` now, not at the first batch: it aborts the transaction a killed predecessor with
        the same transactional.id left open, and until then the consumer's committed-offset fetch (RequireStable
        under read_committed) waits for that transaction, up to `transaction.timeout.ms`. A failure here is
        retried by the first `begin`."""
        try:
            self._init()
        except KafkaException as error:
            log.warning("init_transactions_failed", error=str(error))

    def begin(self) -> None:
        super().begin()
        try:
            self._init()
            if self._open:  # an abort that failed earlier
                self._producer.abort_transaction(self._timeout)
                self._open = False
            self._producer.begin_transaction()
            self._open, self._offsets_sent, self._began = True, False, self._clock()
        except KafkaException as error:
            self._not_sent(error)

    def commit(self, offsets: list[TopicPartition]) -> None:
        if not self._unresolved:
            try:
                if offsets and not self._offsets_sent:
                    metadata = self._consumer.consumer_group_metadata()
                    self._producer.send_offsets_to_transaction(offsets, metadata, self._timeout)
                    self._offsets_sent = True
                self._committing = True
                self._producer.commit_transaction(self._timeout)
            except KafkaException as error:
                self._commit_failed(error)
            else:
                self._open = self._committing = False
                self._committed()
                return
        self._resolve(offsets)
        self._committed()

    def abort(self, timeout: float | None = None) -> None:
        """Abort the open transaction; never one being committed (its outcome decides, see `commit`)."""
        if not self._open or self._committing:
            return
        try:
            self._producer.abort_transaction(self._timeout if timeout is None else timeout)
            self._open = False
        except KafkaException as error:
            log.warning("abort_failed", error=str(error))  # begin() aborts again before the next batch
            if error.args[0].fatal():
                self._renew(error.args[0])

    def close(self, timeout: float) -> None:
        self.abort(timeout / 2)
        if not self._open:  # else a commit whose outcome is unknown: close() would abort it, without limit
            super().close(timeout / 2)

    def _init(self) -> None:
        if not self._ready:
            self._producer.init_transactions(self._timeout)
            self._ready = True

    def _commit_failed(self, error: KafkaException) -> None:
        """Raises the outcome, or marks the commit unresolved (a fatal error while committing)."""
        kafka_error: KafkaError = error.args[0]
        if kafka_error.fatal() or not (kafka_error.retriable() or kafka_error.txn_requires_abort()):
            # librdkafka: an error that is neither retriable nor abortable is to be taken as fatal.
            committing = self._committing
            self._renew(kafka_error)
            if committing:
                self._unresolved = True
                return
            raise RetryBatch(str(kafka_error)) from error
        if kafka_error.txn_requires_abort() or not self._committing:
            # Before commit_transaction (a retriable error of send_offsets_to_transaction: "retriable but not
            # resumable") nothing of this transaction can commit without us: abort it and redo the batch, or
            # drop it if a partition moved meanwhile. Sending its offsets again later would attach them with
            # the consumer's group metadata of then, which the coordinator accepts even for a partition that
            # moved (it checks the member's generation, not the partition's owner).
            self._committing = False
            self.abort()
            if kafka_error.code() in GROUP_MOVED:
                raise PartitionsLost(str(kafka_error)) from error
            raise RetryBatch(str(kafka_error)) from error
        raise CommitUncertain(str(kafka_error)) from error

    def _resolve(self, offsets: list[TopicPartition]) -> None:
        """After a fatal error inside commit_transaction: returns if the batch committed, else raises."""
        if not offsets:
            self._unresolved = False
            raise RetryBatch("commit outcome unknown and the batch has no input offsets to tell: run it again")
        try:
            self._init()  # the new producer's init_transactions completes or aborts the old transaction
            committed = self._consumer.committed(
                [TopicPartition(tp.topic, tp.partition) for tp in offsets], self._timeout
            )
        except KafkaException as error:
            if error.args[0].fatal():
                self._renew(error.args[0])
            raise CommitUncertain(f"outcome of the last commit not known yet: {error.args[0]}") from error
        self._unresolved = False
        ends = {(tp.topic, tp.partition): tp.offset for tp in offsets}
        behind = [
            f"{tp.topic}:{tp.partition}:{tp.offset}" for tp in committed if tp.offset != ends[tp.topic, tp.partition]
        ]
        log.info("commit_resolved", committed=not behind, group_offsets_behind=behind)
        if behind:
            raise RetryBatch(f"the fatal error came before the commit: group offsets {behind}")

    def _not_sent(self, error: KafkaException) -> NoReturn:
        kafka_error: KafkaError = error.args[0]
        if kafka_error.fatal():
            self._renew(kafka_error)
        else:
            self.abort()
        super()._not_sent(error)

    def _renew(self, error: KafkaError) -> None:
        """A fatal producer error (fenced, epoch bumped): a new producer, with a new transactional.id if the
        old one is shared (see `TransactionalId`). A transaction open longer than `transaction.timeout.ms` was
        aborted by the coordinator, which bumped the epoch: librdkafka reports that as the same `_FENCED`, but
        no other producer is involved, so the id is kept (a restart with it aborts what is open at once)."""
        log.warning("producer_fatal_error", error=str(error), code=error.name())
        open_s = self._clock() - self._began if self._open else 0.0
        if error.code() in FENCING and open_s >= self._transaction_timeout:
            log.warning("transaction_timed_out", open_s=round(open_s, 1), timeout_s=self._transaction_timeout)
        elif error.code() in FENCING:
            self._ids.fenced()
        self._replace_producer()
        self._ready = self._open = self._committing = self._offsets_sent = False


def _drain(producer: KafkaProducer, timeout: float) -> int:
    """Serve `producer`'s delivery reports and events until none is left or `timeout` passed; what is left. A
    fatal error raised by a poll is the one the sink already handled (or a last one at shutdown): served."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(KafkaException):
            producer.poll(min(0.1, max(0.0, deadline - time.monotonic())))
        if not (left := len(producer)) or time.monotonic() >= deadline:
            return left


def _close(producer: KafkaProducer) -> None:
    """Destroy the client and its threads. Its open transaction, if any, is aborted by close() or by the next
    producer's init_transactions; a fenced one cannot abort (confluent-kafka warns: expected, not shown)."""
    with warnings.catch_warnings(), contextlib.suppress(KafkaException):
        warnings.simplefilter("ignore", RuntimeWarning)
        producer.close()


def _identity(out: Output) -> OutputId:
    return out.topic, out.key, hash(out.value)


def offsets_after(messages: Sequence[Any]) -> list[TopicPartition]:
    """The offsets to commit once `messages` are done: one past the last message of each partition."""
    last: dict[tuple[str, int], int] = {}
    for message in messages:
        last[message.topic(), message.partition()] = message.offset()
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in last.items()]


def first_offsets(messages: Sequence[Any]) -> dict[tuple[str, int], int]:
    """Where each partition of `messages` starts: the position to rewind to when the batch is dropped."""
    first: dict[tuple[str, int], int] = {}
    for message in messages:
        first.setdefault((message.topic(), message.partition()), message.offset())
    return first
