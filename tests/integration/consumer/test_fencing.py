"""Fencing on Apache Kafka: a restart with the worker's transactional id aborts its predecessor's transaction
at once; a fenced producer is closed deliberately, never left to the garbage collector (issue 19, defect 6: a
worker sharing its transactional id died of heap corruption, `tcache_thread_shutdown(): unaligned tcache chunk
detected`, right after a fencing; fence_loop.py reproduced it in 3 of 5 runs of 300 batches per sink before
the fix, 0 of 5 after)."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from tests.integration.helpers import Stack
from worker.consumer.sinks import TransactionalId, TransactionalSink
from worker.local.stack import create_topics

pytestmark = pytest.mark.integration

ROUNDS = 150


def test_producers_fenced_many_times_in_one_process_are_replaced_without_a_crash(kafka_bootstrap: str) -> None:
    child = subprocess.run(
        [sys.executable, "-m", "tests.integration.consumer.fence_loop", kafka_bootstrap, str(ROUNDS)],
        capture_output=True,
        timeout=600,
    )
    assert child.returncode == 0, child.stderr.decode(errors="replace")[-2000:]
    summary = orjson.loads(child.stdout.splitlines()[-1])
    assert summary["committed"] == [ROUNDS, ROUNDS]
    assert sum(summary["fencings"]) >= 10  # they did fence each other, many times


def test_a_restart_aborts_the_open_transaction_of_its_predecessor_at_once(stack: Stack) -> None:
    """The crash-point table's claim, with a transaction timeout long enough to show a wait: a worker killed
    with its offsets pending in an open transaction holds the group's committed-offset look-up (read_committed
    waits for pending transactional offsets, KIP-447) until transaction.timeout.ms; its restart, with the same
    transactional.id, aborts that transaction in `TransactionalSink.start` (init_transactions) before its
    first poll, and the look-up answers at once with the offset from before."""
    create_topics(stack.bootstrap, {stack.input_topic: 1, stack.output_topic: 1})
    long_timeout = {"bootstrap.servers": stack.bootstrap, "transaction.timeout.ms": 300_000}
    member = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": stack.group_id})
    reader = Consumer({**long_timeout, "group.id": stack.group_id, "isolation.level": "read_committed"})
    tp = TopicPartition(stack.input_topic, 0)
    predecessor = Producer({**long_timeout, "transactional.id": f"{stack.group_id}-0"})
    predecessor.init_transactions(30)
    predecessor.begin_transaction()
    predecessor.produce(stack.output_topic, b"never committed")
    predecessor.send_offsets_to_transaction(
        [TopicPartition(stack.input_topic, 0, 5)], member.consumer_group_metadata(), 30
    )
    predecessor.flush(30)  # then "killed": the transaction stays open on the broker
    try:
        with pytest.raises(KafkaException):  # without the restart's abort the look-up waits (up to 300 s)
            reader.committed([tp], timeout=5)
        ids = TransactionalId(f"{stack.group_id}-0", configured=True)
        restart = TransactionalSink(long_timeout, member, 30, stack.dlq_topic, Producer, ids)
        restart.start()
        assert [p.offset for p in reader.committed([tp], timeout=10)] == [-1001]  # aborted: nothing committed
        assert stack.read(stack.output_topic, lambda m: False, 3) == []
        restart.close(5)
    finally:
        reader.close()
        member.close()
