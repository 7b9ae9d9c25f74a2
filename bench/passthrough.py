"""The baseline: a bare confluent-kafka consume -> produce -> flush -> commit loop, no decoding.

`python -m bench.passthrough --bootstrap HOST:PORT --input T --output O --group G` copies each input value to
the output topic with the worker's batch shape (`consume(1000, 0.02)`, flush, then a synchronous commit),
the worker's consumer settings and an idempotent producer with the worker's `linger.ms`. JSON lines on
stdout: `partitions_assigned` (with a timestamp) and, after SIGTERM/SIGINT, `stopped` with its counts.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, Message, Producer, TopicPartition

BATCH_SIZE = 1000
BATCH_WAIT_S = 0.02
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, "max.poll.interval.ms": 10000}


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "timestamp": datetime.now(UTC).isoformat(), **fields}), flush=True)


def offsets_after(messages: list[Message]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for message in messages:
        last[str(message.topic()), int(message.partition() or 0)] = int(message.offset() or 0)
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in last.items()]


def run(bootstrap: str, input_topic: str, output_topic: str, group: str, extra: dict[str, str]) -> int:
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "range",
            **FAST_GROUP,
            **extra,
        }
    )
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5})

    def on_assign(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
        say("partitions_assigned", partitions=[f"{p.topic}:{p.partition}" for p in partitions])

    consumer.subscribe([input_topic], on_assign=on_assign)
    batches = messages = 0
    try:
        while not stopping.is_set():
            batch = [m for m in consumer.consume(BATCH_SIZE, BATCH_WAIT_S) if m.error() is None]
            if not batch:
                continue
            for message in batch:
                while True:
                    try:
                        producer.produce(output_topic, message.value())
                        break
                    except BufferError:
                        producer.poll(0.05)
            if producer.flush(30):
                say("flush_timeout")
                return 1
            consumer.commit(offsets=offsets_after(batch), asynchronous=False)
            batches += 1
            messages += len(batch)
    finally:
        say("stopped", batches=batches, messages=messages)
        producer.flush(10)
        consumer.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--consumer", action="append", default=[], metavar="NAME=VALUE", help="librdkafka setting")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.consumer)
    return run(args.bootstrap, args.input, args.output, args.group, extra)


if __name__ == "__main__":
    sys.exit(main())
