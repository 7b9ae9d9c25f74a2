"""Output: getting a batch's records and DLQ messages into Kafka together with its input offsets.

A `Sink` is a checkpoint: `begin`, `send` the batch's outputs, then `commit` makes them durable and commits
the input offsets that caused them, or raises. Two guarantees:
- `AtLeastOnceSink`: idempotent producer; commit = flush (every delivery acknowledged), then commit offsets.
  A crash between the two replays the batch; readers drop the copies by `record_id`.
- `TransactionalSink`: outputs and input offsets commit in one Kafka transaction
  (`send_offsets_to_transaction` with the consumer's group metadata, so a zombie that lost its partitions
  is fenced by the group coordinator). Readers with `isolation.level=read_committed` see each record once.
Errors: `CommitUncertain` (a timeout while committing: back off, then call `commit` again, since the first
attempt may still succeed: redoing the batch could commit its output twice), `RetryBatch` (abort, back off,
run the batch again), `PartitionsLost` (the group moved on: drop the batch, its new owner replays it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from worker.pipeline import Output

log = structlog.get_logger("worker.output")

# Commit failures that mean this member no longer owns what it is committing.
_LOST = {
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError._ASSIGNMENT_LOST,
    KafkaError._FENCED,
    KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
}


class RetryBatch(Exception):
    """The batch was not committed; run it again after a back-off."""


class CommitUncertain(RetryBatch):
    """The commit did not finish in time and may still succeed: call `commit` again, do not redo the batch."""


class PartitionsLost(Exception):
    """The batch was not committed and its partitions belong to another member now."""


NewProducer = Callable[[dict[str, Any]], Any]


class Sink:
    def __init__(
        self, config: dict[str, Any], consumer: Any, timeout: float, new_producer: NewProducer = Producer
    ) -> None:
        self._config, self._consumer, self._timeout = config, consumer, timeout
        self._new_producer = new_producer
        self._producer = new_producer(config)

    def begin(self) -> None:
        """Start a batch."""

    def send(self, outputs: Sequence[Output]) -> None:
        produce = self._producer.produce
        for out in outputs:
            while True:
                try:
                    produce(out.topic, out.value, out.key, headers=out.headers)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    self._producer.poll(0.05)
        self._producer.poll(0)

    def commit(self, offsets: list[TopicPartition]) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Give up the current batch (best effort); its outputs must not count as committed."""

    def close(self, timeout: float) -> None:
        self._producer.flush(timeout)


class AtLeastOnceSink(Sink):
    def __init__(
        self, config: dict[str, Any], consumer: Any, timeout: float, new_producer: NewProducer = Producer
    ) -> None:
        # A delivery report per message only here: the transactional sink learns of failures from its commit.
        config = {**config, "enable.idempotence": True, "acks": "all", "on_delivery": self._delivered}
        config.setdefault("delivery.report.only.error", True)
        super().__init__(config, consumer, timeout, new_producer)
        self._error: KafkaError | None = None

    def commit(self, offsets: list[TopicPartition]) -> None:
        remaining = self._producer.flush(self._timeout)
        if self._error is not None:
            raise RetryBatch(f"output not delivered: {self._error}")
        if remaining:
            raise CommitUncertain(f"output not acknowledged yet: {remaining} pending")
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            if error.args[0].retriable():
                raise CommitUncertain(str(error.args[0])) from error
            _raise_for(error)

    def abort(self) -> None:
        self._producer.purge(in_queue=True, in_flight=False, blocking=False)
        self._producer.poll(0)
        self._error = None

    def _delivered(self, error: KafkaError | None, _message: object) -> None:
        if error is not None and self._error is None:
            self._error = error


class TransactionalSink(Sink):
    def __init__(
        self, config: dict[str, Any], consumer: Any, timeout: float, new_producer: NewProducer = Producer
    ) -> None:
        super().__init__(config, consumer, timeout, new_producer)
        self._ready = False  # init_transactions done for the current producer
        self._open = False  # a transaction is begun and neither committed nor aborted
        self._offsets_sent = False  # this transaction carries its input offsets already

    def begin(self) -> None:
        try:
            if not self._ready:
                self._producer.init_transactions(self._timeout)
                self._ready = True
            if self._open:
                self._producer.abort_transaction(self._timeout)
                self._open = False
            self._producer.begin_transaction()
            self._open, self._offsets_sent = True, False
        except KafkaException as error:
            self._handle(error)

    def commit(self, offsets: list[TopicPartition]) -> None:
        try:
            if offsets and not self._offsets_sent:
                metadata = self._consumer.consumer_group_metadata()
                self._producer.send_offsets_to_transaction(offsets, metadata, self._timeout)
                self._offsets_sent = True
            self._producer.commit_transaction(self._timeout)
            self._open = False
        except KafkaException as error:
            kafka_error: KafkaError = error.args[0]
            if kafka_error.retriable() and not (kafka_error.fatal() or kafka_error.txn_requires_abort()):
                raise CommitUncertain(str(kafka_error)) from error
            self._handle(error)

    def abort(self) -> None:
        if not self._open:
            return
        try:
            self._producer.abort_transaction(self._timeout)
            self._open = False
        except KafkaException as error:
            log.warning("abort_failed", error=str(error))  # begin() aborts again before the next batch
            if error.args[0].fatal():
                self._renew()

    def close(self, timeout: float) -> None:
        self.abort()
        super().close(timeout)

    def _handle(self, error: KafkaException) -> None:
        kafka_error: KafkaError = error.args[0]
        if kafka_error.fatal():
            log.warning("producer_fatal_error", error=str(kafka_error))
            self._renew()
        elif kafka_error.txn_requires_abort():
            self.abort()
        _raise_for(error)

    def _renew(self) -> None:
        """A fatal producer error (fenced, epoch bumped): a new producer with the same transactional.id."""
        self._producer = self._new_producer(self._config)
        self._ready = self._open = False


def _raise_for(error: KafkaException) -> None:
    kafka_error: KafkaError = error.args[0]
    if kafka_error.code() in _LOST:
        raise PartitionsLost(str(kafka_error)) from error
    raise RetryBatch(str(kafka_error)) from error


def offsets_after(messages: Sequence[Any]) -> list[TopicPartition]:
    """The offsets to commit once `messages` are done: one past the last message of each partition."""
    last: dict[tuple[str, int], int] = {}
    for message in messages:
        last[message.topic(), message.partition()] = message.offset()
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in last.items()]
