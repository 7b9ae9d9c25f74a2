"""Defect 8 end to end: a users.modified change with 300,000 affected users (300 parts and a final part) comes
out complete and exactly once, in bounded transactions chained by continue commands on the control topic,
while the worker's peak RSS stays under 250 MB."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.integration.helpers import Stack, users_modified_part

pytestmark = pytest.mark.integration

USERS, PART_USERS = 300_000, 1_000
PEAK_RSS_LIMIT = 250 * 2**20


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


def user_ids(stack: Stack, want: int, timeout: float) -> list[str]:
    """The user ids of every committed record, read until `want` arrived and then until the topic is quiet."""
    consumer = Consumer(
        {"bootstrap.servers": stack.bootstrap, "group.id": "test-reader", "isolation.level": "read_committed"}
    )
    try:
        partitions = consumer.list_topics(stack.output_topic, timeout=10).topics[stack.output_topic].partitions
        consumer.assign([TopicPartition(stack.output_topic, p, 0) for p in partitions])
        users: list[str] = []
        deadline, quiet_until = time.monotonic() + timeout, float("inf")
        while time.monotonic() < min(deadline, quiet_until):
            batch = [m for m in consumer.consume(1_000, 0.5) if not m.error()]
            users += [orjson.loads(m.value() or b"{}")["user_id"] for m in batch]
            if len(users) >= want and quiet_until == float("inf"):
                quiet_until = time.monotonic() + 5  # a few more seconds: anything extra would show up
        return users
    finally:
        consumer.close()


def test_a_300000_user_change_comes_out_once_each_with_bounded_memory(stack: Stack) -> None:
    stack.create_topics(2)
    worker = stack.start_worker(0)
    worker.wait_ready()
    everyone = [f"user-{i:06}" for i in range(USERS)]
    parts = [
        (i % 2, users_modified_part(f"big-{i}", "g-big", everyone[start : start + PART_USERS], final=False))
        for i, start in enumerate(range(0, USERS, PART_USERS))
    ]
    parts.append((0, users_modified_part("big-final", "g-big", [], final=True)))
    stack.produce((partition, b"g-big", value, headers) for partition, (value, headers) in parts)

    users = user_ids(stack, USERS, timeout=600)

    assert len(users) == USERS and set(users) == set(everyone)
    assert worker.process is not None
    rss = peak_rss(worker.process.pid)
    print(f"worker peak RSS for a {USERS}-user change: {rss / 2**20:.0f} MB")
    assert rss < PEAK_RSS_LIMIT
    assert worker.metric("worker_records_emitted_total") == USERS
