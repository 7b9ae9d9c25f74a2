"""Kafka helpers of the benchmark: fast corpus production, end-of-run detection, reading outputs back."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

Headers = list[tuple[str, str | bytes | None]]
CorpusMessage = tuple[int, bytes | None, bytes, Headers]

# Fast bulk producer: large batches, long linger, a big local queue; idempotent so no copies or reordering.
BULK_PRODUCER = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 50,
    "batch.num.messages": 10_000,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
}


@dataclass
class Produced:
    messages: int
    bytes: int
    seconds: float
    end_offsets: dict[int, int]  # partition -> one past the last acknowledged offset (from delivery reports)


@dataclass
class Delivery:
    """Collects delivery reports: end offsets per partition and the first error."""

    end_offsets: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __call__(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.errors.append(str(error))
            return
        partition, offset = message.partition(), message.offset()
        if partition is None or offset is None:
            return
        if offset + 1 > self.end_offsets.get(partition, 0):
            self.end_offsets[partition] = offset + 1


def produce_all(bootstrap: str, topic: str, messages: Sequence[CorpusMessage]) -> Produced:
    """Send every message to its partition and wait for all acknowledgements."""
    producer = Producer({"bootstrap.servers": bootstrap, **BULK_PRODUCER})
    delivery = Delivery()
    size = 0
    started = time.perf_counter()
    for partition, key, value, headers in messages:
        size += len(value)
        while True:
            try:
                producer.produce(topic, value, key, partition=partition, headers=headers, on_delivery=delivery)
                break
            except BufferError:
                producer.poll(0.02)
    remaining = producer.flush(120)
    seconds = time.perf_counter() - started
    if remaining or delivery.errors:
        raise RuntimeError(f"producing to {topic}: {remaining} unacknowledged, errors {delivery.errors[:3]}")
    return Produced(len(messages), size, seconds, delivery.end_offsets)


class CommitWatcher:
    """Committed offsets of a group, fetched from the coordinator without joining the group."""

    def __init__(self, bootstrap: str, group: str, topic: str, end_offsets: dict[int, int]) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        self._partitions = [TopicPartition(topic, p) for p in sorted(end_offsets)]
        self._ends = end_offsets

    def done(self) -> bool:
        try:
            committed = self._consumer.committed(self._partitions, timeout=5)
        except KafkaException:
            return False
        return all(tp.offset >= self._ends[tp.partition] for tp in committed)

    def close(self) -> None:
        self._consumer.close()


def reader(bootstrap: str, **extra: object) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench-reader",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
            **extra,
        }
    )


def assign_all(consumer: Consumer, topics: Sequence[str]) -> None:
    metadata = consumer.list_topics(timeout=10).topics
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in metadata[t].partitions])


@dataclass
class ReadBack:
    messages: int
    ids: set[str]


def read_back(
    bootstrap: str, wanted: dict[str, int], *, record_ids: set[str], idle_s: float = 0.3, timeout: float = 600
) -> dict[str, ReadBack]:
    """Read topics from the start (read_committed), all in one pass, until each has at least its `wanted`
    count and nothing more came for `idle_s`, or nothing came for 5 s, or the timeout. For the topics in
    `record_ids` collect each value's `record_id`. (End offsets from ListOffsets are not used: the embedded
    Tansu answers the last batch's base offset.)"""
    consumer = reader(bootstrap, **{"max.partition.fetch.bytes": 16_777_216})
    found = {topic: ReadBack(0, set()) for topic in wanted}
    try:
        assign_all(consumer, list(wanted))
        last = started = time.monotonic()
        while True:
            now = time.monotonic()
            quiet = now - last
            complete = all(found[t].messages >= n for t, n in wanted.items())
            if (complete and quiet >= idle_s) or quiet >= 5 or now - started >= timeout:
                break
            batch = consumer.consume(10_000, 0.2)
            for message in batch:
                if message.error() is not None:
                    continue
                topic = str(message.topic())
                back = found[topic]
                back.messages += 1
                if topic in record_ids:
                    back.ids.add(str(orjson.loads(message.value() or b"{}").get("record_id")))
            if batch:
                last = time.monotonic()
        return found
    finally:
        consumer.close()
