"""The loop's failure paths on a real broker: an output too large for Kafka, and the consumer group protocol
(KIP-848) with members joining while others keep their partitions."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaError

from tests.integration.helpers import Stack, group_data, structured, wait_for
from worker.local.stack import create_topics

pytestmark = pytest.mark.integration

CREATED = "com.qlik.v1.group.created"


def test_an_oversized_poison_message_becomes_a_dlq_stub_and_the_worker_goes_on(stack: Stack) -> None:
    """Defect 5: the whole invalid input copied to the DLQ exceeded message.max.bytes, produce raised, and the
    restarted worker replayed the same batch forever."""
    stack.create_topics(1)
    before, after = (structured(f"ok-{i}", CREATED, group_data(f"g{i}")) for i in (1, 2))
    poison = b"\x00" + b"p" * 300_000  # not JSON; over the worker's limit below, under the test producer's
    stack.produce(
        [
            (0, None, before[0], before[1]),
            (0, b"k-big", poison, [("x-trace", b"abc")]),
            (0, None, after[0], after[1]),
        ]
    )
    worker = stack.start_worker(WORKER_KAFKA_MESSAGE_MAX_BYTES="200000")

    records = stack.records(2)
    dead = stack.read(stack.dlq_topic, lambda m: len(m) >= 1)

    assert sorted(r["event_id"] for r in records) == ["ok-1", "ok-2"]
    [stub] = dead
    headers = dict(stub.headers() or [])
    assert stub.value() is None and stub.key() == b"k-big"
    assert headers["dlq.reason"] == b"too_large" and headers["x-trace"] == b"abc"
    assert b"300001 bytes" in headers["dlq.detail"] and b"not_json" in headers["dlq.detail"]
    assert headers["dlq.source.offset"] == b"1"
    wait_for(lambda: stack.committed(1) == [3], 30, "offsets at the end")
    assert worker.process is not None and worker.process.poll() is None
    assert worker.metric("worker_dlq_messages_total", reason="too_large") == 1


def _broker_speaks_kip848(bootstrap: str) -> bool:
    """Whether the broker runs the consumer group protocol (Apache Kafka 4; Tansu does not)."""
    topic = f"probe-kip848-{time.monotonic_ns()}"
    create_topics(bootstrap, {topic: 1})
    errors: list[KafkaError] = []
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topic,
            "group.protocol": "consumer",
            "error_cb": errors.append,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not errors:
            consumer.poll(0.5)
            if consumer.assignment():
                return True
        return False
    finally:
        consumer.close()


def test_the_consumer_group_protocol_moves_partitions_incrementally_and_loses_nothing(stack: Stack) -> None:
    """KIP-848: a member joining takes partitions from the first without stopping it; every record once."""
    if not _broker_speaks_kip848(stack.bootstrap):
        pytest.skip("the broker does not support group.protocol=consumer (Tansu); needs Apache Kafka 4")
    stack.create_topics(4)
    protocol = {"WORKER_GROUP_PROTOCOL": "consumer"}

    def events(start: int, count: int) -> list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]]:
        built = [structured(f"e-{i}", CREATED, group_data(f"g{i}")) for i in range(start, start + count)]
        return [(i % 4, None, value, headers) for i, (value, headers) in enumerate(built)]

    first = stack.start_worker(0, **protocol)
    first.wait_ready()
    stack.produce(events(0, 200))
    stack.records(200)
    second = stack.start_worker(1, **protocol)
    second.wait_ready()
    stack.produce(events(200, 200))

    records = stack.records(400, timeout=90)

    assert sorted(r["event_id"] for r in records) == sorted(f"e-{i}" for i in range(400))
    assert first.metric("worker_assigned_partitions") + second.metric("worker_assigned_partitions") == 8
    assert first.metric("worker_assigned_partitions") > 0 and second.metric("worker_assigned_partitions") > 0
    assert '"event": "setting_ignored"' in first.log()  # the test's session timeout: the broker's under KIP-848
    wait_for(lambda: stack.committed(4) == [100, 100, 100, 100], 30, "offsets at the end")
