"""Both sinks with a fake producer and consumer: the outcome of each librdkafka error at the call that raises it."""

from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition
from structlog.testing import capture_logs

from tests.support.clock import ManualClock
from tests.support.kafka_fakes import (
    ABORTABLE,
    FATAL,
    FENCED,
    ILLEGAL_GENERATION,
    PRODUCER_FENCED,
    TIMED_OUT,
    FakeConsumer,
    FakeKafka,
    error,
)
from worker.consumer.sinks import (
    AtLeastOnceSink,
    CommitUncertain,
    PartitionsLost,
    RetryBatch,
    TransactionalId,
    TransactionalSink,
)
from worker.processing.deadletter import dead_letter_fields
from worker.processing.processor import Output

OFFSETS = [TopicPartition("in", 0, 11)]
RECORD = Output("out", b"k", b"v", [("content-type", b"application/json")])


def transactional(kafka: FakeKafka, ids: TransactionalId | None = None) -> TransactionalSink:
    ids = ids or TransactionalId("tx", configured=True)
    return TransactionalSink({}, FakeConsumer(kafka), 1.0, "dlq", kafka.new_producer, ids)


def sent(sink: TransactionalSink | AtLeastOnceSink) -> TransactionalSink | AtLeastOnceSink:
    """The sink with a batch of one record begun and sent."""
    sink.begin()
    sink.send([RECORD])
    return sink


def test_the_outcomes_are_siblings_not_kinds_of_each_other() -> None:
    for a in (CommitUncertain, RetryBatch, PartitionsLost):
        for b in (CommitUncertain, RetryBatch, PartitionsLost):
            assert issubclass(a, b) == (a is b)


def test_a_commit_in_progress_is_never_aborted_and_is_called_again() -> None:
    kafka = FakeKafka()
    kafka.plan("commit_transaction", TIMED_OUT)
    sink = transactional(kafka)
    sent(sink)
    with pytest.raises(CommitUncertain):
        sink.commit(OFFSETS)
    sink.abort()  # a revoke or a stop meanwhile: must not abort a commit whose outcome is open
    assert "abort_transaction" not in kafka.calls
    sink.commit(OFFSETS)
    assert kafka.values() == [b"v"] and kafka.group_offsets == {("in", 0): 11}


def test_a_fatal_error_before_commit_transaction_is_a_retry_with_a_new_producer() -> None:
    kafka = FakeKafka()
    kafka.plan("send_offsets_to_transaction", PRODUCER_FENCED)
    sink = transactional(kafka)
    sent(sink)
    with pytest.raises(RetryBatch):
        sink.commit(OFFSETS)
    assert len(kafka.producers) == 2 and "committed" not in kafka.calls


def test_a_fatal_commit_of_a_batch_without_input_offsets_is_run_again() -> None:
    """Nothing tells whether it committed: timeout-scan output (commands to the control topic) is redone."""
    kafka = FakeKafka()
    kafka.plan("commit_transaction", FATAL)
    sink = transactional(kafka)
    sent(sink)
    with pytest.raises(RetryBatch):
        sink.commit([])


def test_an_abortable_commit_error_of_the_group_is_partitions_lost() -> None:
    kafka = FakeKafka()
    kafka.plan("send_offsets_to_transaction", ILLEGAL_GENERATION)
    sink = transactional(kafka)
    sent(sink)
    with pytest.raises(PartitionsLost):
        sink.commit(OFFSETS)
    assert kafka.producers[-1].state == "ready"  # aborted: the next batch can begin
    sink.begin()


def test_a_configured_transactional_id_fenced_again_logs_an_error_naming_the_setting() -> None:
    kafka = FakeKafka()
    ids = TransactionalId("shared-id", configured=True)
    kafka.plan("commit_transaction", PRODUCER_FENCED, PRODUCER_FENCED)
    sink = transactional(kafka, ids)
    with capture_logs() as logs:
        for _ in range(2):
            sent(sink)
            with pytest.raises(RetryBatch):
                sink.commit(OFFSETS)
    assert {p.config["transactional.id"] for p in kafka.producers} == {"shared-id"}
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1 and "WORKER_TRANSACTIONAL_ID" in errors[0]["fix"]


def test_a_record_too_large_for_the_producer_becomes_a_stub_with_its_headers() -> None:
    kafka = FakeKafka()
    sink = transactional(kafka)
    sink.begin()
    sink.send([Output("out", b"k", b"x" * 1_000_001, [("content-type", b"application/json")])])
    sink.commit(OFFSETS)
    [(topic, key, value, headers)] = kafka.records
    assert (topic, key, value) == ("dlq", b"k", None)
    assert ("content-type", b"application/json") in headers
    fields = dead_letter_fields(headers)
    assert fields["reason"] == "too_large" and "1000001 bytes for out" in fields["detail"]


def test_at_least_once_commit_errors() -> None:
    kafka = FakeKafka()
    consumer = FakeConsumer(kafka)
    sink = AtLeastOnceSink({}, consumer, 1.0, "dlq", kafka.new_producer)
    kafka.plan("commit", ILLEGAL_GENERATION, error(-185, retriable=True), ABORTABLE)
    for expected in (PartitionsLost, CommitUncertain, RetryBatch):
        sent(sink)
        with pytest.raises(expected):
            sink.commit(OFFSETS)
    sink.commit(OFFSETS)
    assert kafka.group_offsets == {("in", 0): 11}


def test_a_fencing_after_the_transaction_timeout_keeps_the_default_id() -> None:
    """Issue 19, defect 9: a transaction left open longer than transaction.timeout.ms (the process was frozen) is
    aborted by the coordinator, which bumps the producer's epoch: the next call fails with the same fatal
    _FENCED as a twin's fencing. Taking a unique id then (the twin fallback) left a later restart unable to
    abort this process's open transaction at once. A fencing of a transaction older than the timeout keeps
    the id; a younger one is a twin's."""
    kafka = FakeKafka()
    clock = ManualClock()
    ids = TransactionalId("group-host-1", configured=False)
    config = {"transaction.timeout.ms": 10_000}
    sink = TransactionalSink(config, FakeConsumer(kafka), 1.0, "dlq", kafka.new_producer, ids, clock)
    kafka.plan("commit_transaction", FENCED, FENCED)
    sent(sink)
    clock.now += 10.0  # frozen as long as the transaction timeout: the coordinator aborted it
    with capture_logs() as logs, pytest.raises(RetryBatch):
        sink.commit(OFFSETS)
    assert kafka.producers[-1].config["transactional.id"] == "group-host-1"
    assert [e for e in logs if e["event"] == "transaction_timed_out"] != []
    sent(sink)
    clock.now += 1.0  # a young transaction fenced: another producer uses the id
    with pytest.raises(RetryBatch):
        sink.commit(OFFSETS)
    assert kafka.producers[-1].config["transactional.id"].startswith("group-host-1-")


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_a_producer_replaced_after_a_fatal_error_is_closed_first(guarantee: str) -> None:
    """Issue 19, defect 6: the old producer was dropped for the garbage collector to destroy."""
    kafka = FakeKafka()
    consumer = FakeConsumer(kafka)
    sink: TransactionalSink | AtLeastOnceSink
    if guarantee == "exactly_once":
        sink = transactional(kafka)
        kafka.plan("commit_transaction", PRODUCER_FENCED)
    else:
        sink = AtLeastOnceSink({}, consumer, 1.0, "dlq", kafka.new_producer)
        kafka.plan("produce", FATAL)
    with pytest.raises(RetryBatch):
        sent(sink).commit(OFFSETS)
    old, new = kafka.producers
    assert old.closed and not new.closed
    assert "purge" in old.calls and old.calls.index("purge") < old.calls.index("close")
