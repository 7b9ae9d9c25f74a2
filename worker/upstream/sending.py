"""Producing the upstream jobs' events to the ingest topic with the ingest's producer settings (idempotent,
`acks=all`: `worker.ingest.producer.producer_config`), and knowing they were all acknowledged before a
checkpoint moves: `flush` raises `NotStored` when any message of the batch was not."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from worker.config import Settings
from worker.ingest.producer import producer_config
from worker.upstream.events import Outgoing

FLUSH_TIMEOUT_SECONDS = 60.0


class NotStored(Exception):
    """Kafka did not acknowledge every message of a batch: its checkpoint must not move."""


class Sender:
    def __init__(self, settings: Settings, producer: Any = None) -> None:
        """`producer`: a confluent-kafka Producer (or a test's), else one with the ingest's settings."""
        self.topic = settings.effective_ingest_topic
        self._producer = producer if producer is not None else Producer(producer_config(settings))
        self._errors: list[str] = []
        self.sent = 0

    def send(self, message: Outgoing) -> None:
        while True:
            try:
                self._producer.produce(
                    self.topic, message.value, message.key, headers=message.headers, on_delivery=self._report
                )
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.1)
        self._producer.poll(0)
        self.sent += 1

    def flush(self) -> None:
        """Wait for every message sent so far; raise `NotStored` if any was refused or is still pending."""
        pending = self._producer.flush(FLUSH_TIMEOUT_SECONDS)
        errors, self._errors = self._errors, []
        if pending or errors:
            raise NotStored(f"{pending} message(s) unacknowledged, {len(errors)} refused: {', '.join(errors[:3])}")

    def _report(self, error: KafkaError | None, _message: Message | None) -> None:
        if error is not None:
            self._errors.append(error.str())
