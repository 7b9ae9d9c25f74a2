"""The real `Processor` on the in-memory stores, fed one message at a time, without Kafka or Redis: what
`python -m worker validate`, the demo's expected counts and the unit tests run.

Its log lines are dropped: the callers report the outcomes themselves. Commands the processor sends to the
control topic (continuations of a large close) are fed back at once, as the worker group would consume them,
so every result of a message is complete.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from worker.processing.decode import Headers
from worker.processing.processor import BatchResult, Message, Processor
from worker.processing.reassembly import CHUNK_USERS
from worker.processing.stores import MemoryChangeStore, MemoryDedupe, MemoryRecency, MemoryTenantGroups

OUTPUT_TOPIC, DLQ_TOPIC, CONTROL_TOPIC = "output", "dlq", "control"
TIMEOUT_MS = 900_000  # WORKER_BATCH_TIMEOUT_SECONDS' default
RESEND_MS = 60_000  # WORKER_FLUSH_LEASE_SECONDS' default
SILENT = structlog.wrap_logger(structlog.ReturnLogger(), processors=[])  # returns each line, writes none


@dataclass(frozen=True, slots=True)
class PlainMessage:
    """A message held in memory, read through the `worker.processing.processor.Message` protocol."""

    where: tuple[str, int, int]  # topic, partition, offset
    data: bytes | None
    header_list: Headers = None
    message_key: bytes | None = None

    def topic(self) -> str:
        return self.where[0]

    def partition(self) -> int:
        return self.where[1]

    def offset(self) -> int:
        return self.where[2]

    def key(self) -> bytes | None:
        return self.message_key

    def value(self) -> bytes | None:
        return self.data

    def headers(self) -> Headers:
        return self.header_list


@dataclass
class Offline:
    chunk: int = CHUNK_USERS
    dedupe: MemoryDedupe = field(default_factory=MemoryDedupe)
    tenants: MemoryTenantGroups = field(default_factory=MemoryTenantGroups)
    recency: MemoryRecency = field(default_factory=MemoryRecency)
    changes: MemoryChangeStore = field(init=False)
    processor: Processor = field(init=False)
    _control_offsets: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.changes = MemoryChangeStore(TIMEOUT_MS, RESEND_MS, self.chunk)
        self.processor = Processor(
            self.dedupe,
            self.changes,
            output_topic=OUTPUT_TOPIC,
            dlq_topic=DLQ_TOPIC,
            control_topic=CONTROL_TOPIC,
            tenants=self.tenants,
            recency=self.recency,
            logger=SILENT,
        )

    def feed(self, messages: Sequence[Message], now_ms: int = 0) -> list[BatchResult]:
        """Process and settle the messages, then every command they sent, until none is left."""
        results = []
        pending = list(messages)
        while pending:
            result = self.processor.process(pending, now_ms)
            self.processor.settle(result)
            results.append(result)
            pending = self._commands(result)
        return results

    def scan(self, now_ms: int) -> list[BatchResult]:
        """A timeout scan at `now_ms`, and the commands it sent."""
        result = self.processor.scan_timeouts(now_ms)
        self.processor.settle(result)
        return [result, *self.feed(self._commands(result), now_ms)]

    def _commands(self, result: BatchResult) -> list[Message]:
        """The commands a result sent, as the messages the control topic would deliver (one partition)."""
        return [
            PlainMessage((CONTROL_TOPIC, 0, next(self._control_offsets)), o.value, o.headers, o.key)
            for o in result.outputs
            if o.topic == CONTROL_TOPIC
        ]
