"""`dlq inspect` and `dlq redrive`: read the dead-letter topic from the start, summarise it, or send selected
messages back to the input topic they came from.

The reader assigns the partitions itself and never joins the consumer group nor commits, so it disturbs
nothing. It stops at the end of every partition it reads, seen as librdkafka's end-of-partition event (the
high watermark of the fetch responses: the embedded Tansu broker's ListOffsets(latest) is not reliable), or
after `quiet` seconds with neither a message nor such an event.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from worker.config import Settings
from worker.processing.deadletter import dead_letter_fields, original_headers
from worker.processing.decode import HeaderValue, header_text

READER_GROUP = "group-events-worker-ops"  # required by librdkafka; never joined nor committed (assign only)
NO_REASON = "(none)"
FLUSH_TIMEOUT = 60.0
# librdkafka's own log: the commands report failures themselves, in plain words.
QUIET = logging.getLogger("worker.ops.check.librdkafka")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


class OpsError(Exception):
    """A failure an operator can act on; its message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Selection:
    """Which DLQ messages a command reads (partition, offsets: inclusive) and acts on (reason)."""

    reason: str | None = None
    partition: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    timeout: float = 10.0  # for the topic's metadata
    quiet: float = 10.0  # stop after this long without a message or an end-of-partition event
    progress: int = 10_000  # a line on stderr every this many messages (0: never)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, HeaderValue]]  # the original message's headers: the dlq.* ones removed
    dlq: dict[str, str]  # the dlq.* headers without the prefix: reason, detail, source.topic, ...

    @classmethod
    def of(cls, message: Any) -> DeadLetter:
        return cls(
            message.partition(),
            message.offset(),
            message.key(),
            message.value(),
            original_headers(message.headers()),
            dead_letter_fields(message.headers()),
        )

    @property
    def reason(self) -> str:
        return self.dlq.get("reason", NO_REASON)

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def source(self) -> str:
        return ":".join(self.dlq.get(f"source.{k}", "?") for k in ("topic", "partition", "offset"))

    def event_id(self) -> str | None:
        """The `ce_id` header (binary mode), else the `id` of a JSON event (structured mode)."""
        for name, value in self.headers:
            if name.lower() == "ce_id":
                return header_text(value)
        try:
            event = orjson.loads(self.value or b"")
        except orjson.JSONDecodeError:
            return None
        event_id = event.get("id") if isinstance(event, dict) else None
        return event_id if isinstance(event_id, str) else None


def read(settings: Settings, selection: Selection, reading: Reading) -> Iterator[DeadLetter]:
    """DLQ messages of the selected partitions and offsets (every reason), until the end of each partition."""
    consumer = Consumer(
        {
            **settings.kafka_overrides("consumer"),
            "group.id": READER_GROUP,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",  # a --from-offset below the log start begins at the log start
            "isolation.level": "read_committed",
            "logger": QUIET,
        }
    )
    try:
        remaining = set(_partitions(consumer, settings.dlq_topic, selection.partition, reading.timeout))
        start = OFFSET_BEGINNING if selection.from_offset is None else selection.from_offset
        consumer.assign([TopicPartition(settings.dlq_topic, p, start) for p in sorted(remaining)])
        count, last_seen = 0, time.monotonic()
        while remaining:
            messages = consumer.consume(500, 0.5)
            if messages:
                last_seen = time.monotonic()
            elif time.monotonic() - last_seen > reading.quiet:
                print(
                    f"no end of partitions {sorted(remaining)} seen in {reading.quiet:g} s: stopping", file=sys.stderr
                )
                return
            for message in messages:
                if error := message.error():
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    remaining.discard(message.partition())
                elif (letter := DeadLetter.of(message)).partition in remaining:
                    if selection.to_offset is not None and letter.offset > selection.to_offset:
                        remaining.discard(letter.partition)
                        continue
                    count += 1
                    if reading.progress and count % reading.progress == 0:
                        print(f"... read {count} DLQ messages", file=sys.stderr)
                    yield letter
    finally:
        consumer.close()


def _partitions(consumer: Any, topic: str, wanted: int | None, timeout: float) -> list[int]:
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    except KafkaException as error:
        raise OpsError(
            f"Kafka did not answer within {timeout:g} s ({error.args[0].str()}) — check WORKER_KAFKA_BOOTSTRAP_SERVERS"
        ) from None
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise OpsError(f"DLQ topic {topic!r} does not exist — check WORKER_DLQ_TOPIC")
    partitions = sorted(metadata.partitions)
    if wanted is None:
        return partitions
    if wanted not in partitions:
        raise OpsError(f"DLQ topic {topic!r} has no partition {wanted} (it has {len(partitions)})")
    return [wanted]


def inspect(settings: Settings, selection: Selection, reading: Reading, *, limit: int) -> int:
    """Print the count per reason of every message read, then up to `limit` of those with the reason."""
    counts: Counter[str] = Counter()
    shown: list[DeadLetter] = []
    for letter in read(settings, selection, reading):
        counts[letter.reason] += 1
        if len(shown) < limit and selection.reason in (None, letter.reason):
            shown.append(letter)
    print(f"{sum(counts.values())} messages on DLQ topic {settings.dlq_topic!r}")
    for reason, count in counts.most_common():
        print(f"  {reason:<20} {count}")
    if shown:
        which = f" with reason {selection.reason}" if selection.reason else ""
        print(f"first {len(shown)}{which} (partition:offset  reason  source  event id  detail):")
    for letter in shown:
        detail = letter.dlq.get("detail", "")
        print(f"  {letter.position}  {letter.reason}  {letter.source}  {letter.event_id() or '-'}  {detail}")
    return 0


def redrive(settings: Settings, selection: Selection, reading: Reading, *, to_topic: str | None, dry_run: bool) -> int:
    """Re-send the selected messages, as they were before dead-lettering, to their input topic or `to_topic`."""
    if to_topic == settings.dlq_topic:
        raise OpsError("refusing to redrive the DLQ topic into itself")
    producer = (
        None
        if dry_run
        else Producer({**settings.kafka_overrides("producer"), "enable.idempotence": True, "logger": QUIET})
    )
    failures: list[str] = []
    sent: Counter[str] = Counter()
    skipped = 0
    letter, interrupted = None, False
    try:
        for letter in read(settings, selection, reading):
            if selection.reason not in (None, letter.reason):
                continue
            topic = to_topic or letter.dlq.get("source.topic")
            if not topic:
                skipped += 1
                continue
            partition = _original_partition(letter, topic)
            sent[topic] += 1
            if producer is None:
                where = topic if partition is None else f"{topic}[{partition}]"
                print(f"would send {letter.position} ({letter.reason}, id {letter.event_id() or '-'}) to {where}")
            else:
                _produce(producer, topic, partition, letter, failures)
    except KeyboardInterrupt:
        interrupted = True
    undelivered = producer.flush(FLUSH_TIMEOUT) if producer is not None else 0
    total = sum(sent.values())
    per_topic = ", ".join(f"{t}: {n}" for t, n in sorted(sent.items())) or "nothing selected"
    print(f"{'dry run, nothing sent: would send' if dry_run else 'sent'} {total} messages ({per_topic})")
    if skipped:
        print(f"skipped {skipped} messages without a dlq.source.topic header: give --to-topic to send them")
    if interrupted:
        where = f"after DLQ message {letter.position}" if letter else "before the first DLQ message"
        print(f"INTERRUPTED {where} (partition:offset): what was read up to there is counted above", file=sys.stderr)
    if failures or undelivered:
        first = f"; first: {failures[0]}" if failures else ""
        print(f"FAILED: {len(failures)} rejected by Kafka, {undelivered} not acknowledged{first}", file=sys.stderr)
    return 1 if interrupted or failures or undelivered else 0


def _original_partition(letter: DeadLetter, topic: str) -> int | None:
    """Back to the partition it came from when it goes back to its own topic; else the partitioner's choice."""
    if topic != letter.dlq.get("source.topic"):
        return None
    text = letter.dlq.get("source.partition", "")
    return int(text) if text.isdigit() else None


def _produce(producer: Any, topic: str, partition: int | None, letter: DeadLetter, failures: list[str]) -> None:
    def delivered(error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            failures.append(f"{letter.position}: {error}")

    extra = {} if partition is None else {"partition": partition}
    while True:
        try:
            producer.produce(topic, letter.value, letter.key, headers=letter.headers, on_delivery=delivered, **extra)
            break
        except BufferError:  # the local queue is full: let deliveries drain
            producer.poll(0.5)
    producer.poll(0)
