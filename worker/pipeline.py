"""Processing of one batch: decode -> dedupe -> reassemble -> records -> tenant group counts. Knows Redis
(through the stores) but not Kafka: it takes messages and returns the output messages plus what to settle and
count once Kafka confirmed them.

Everything it writes to Redis is tagged with the input position (or a timeout lease token), so running the
same batch again after any failure returns the same outputs: the loop may retry or replay freely.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from worker.changes import ChangeStore, Closed
from worker.deadletter import dead_letter_headers
from worker.decode import Format, Headers, Rejected, Skipped, decode
from worker.dedupe import Deduper
from worker.models import DATA_MODELS, Event, UsersModified
from worker.reassembly import Part, TimeoutOutcome
from worker.records import (
    ChangeInfo,
    GroupChange,
    MembershipChange,
    change_info,
    encode,
    group_change,
    membership_change,
    record_key,
)
from worker.tenants import GROUP_LIMIT, GroupCount, TenantGroups, counted, exceeds_limit
from worker.ums import UMS_TYPE

log = structlog.get_logger("worker.pipeline")

JSON_HEADERS: list[tuple[str, str | bytes | None]] = [("content-type", b"application/json")]


class Message(Protocol):
    """The part of `confluent_kafka.Message` we read."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> Headers: ...


@dataclass(frozen=True, slots=True)
class Output:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]


@dataclass
class BatchResult:
    outputs: list[Output] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # change ids whose deadline can go once committed
    leases: list[tuple[str, str]] = field(default_factory=list)  # (change id, token) to confirm once committed
    events: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, outcome)
    records: Counter[str] = field(default_factory=Counter)  # schema
    dlq: Counter[str] = field(default_factory=Counter)  # reason
    changes_closed: Counter[str] = field(default_factory=Counter)  # complete | timed_out
    tenant_groups: dict[str, int] = field(default_factory=dict)  # tenant -> live groups after this batch
    tenant_limit_exceeded: int = 0  # group creations that left their tenant above the limit


def position(message: Message) -> str:
    return f"{message.topic()}:{message.partition()}:{message.offset()}"


def type_label(event_type: str) -> str:
    """Bounded label values: producers choose event types, Prometheus must not grow with them."""
    return event_type if event_type in DATA_MODELS or event_type == UMS_TYPE else "other"


class Processor:
    def __init__(
        self,
        deduper: Deduper,
        changes: ChangeStore,
        *,
        output_topic: str,
        dlq_topic: str,
        tenants: TenantGroups | None = None,
        formats: Mapping[str, Format] | None = None,
    ) -> None:
        """`tenants` None: no tenant group counts. `formats`: input topic -> its format, where it is not detected
        per message."""
        self._deduper, self._changes, self._tenants = deduper, changes, tenants
        self._output_topic, self._dlq_topic = output_topic, dlq_topic
        self._formats = dict(formats or {})
        self._instance = uuid.uuid4().hex[:12]
        self._flushes = itertools.count()

    def process(self, messages: Sequence[Message]) -> BatchResult:
        result = BatchResult()
        events: list[tuple[Message, Event]] = []
        for message in messages:
            decoded = decode(message.value(), message.headers(), self._formats.get(message.topic() or ""))
            if isinstance(decoded, Event):
                events.append((message, decoded))
            elif isinstance(decoded, Skipped):
                result.events["other", "skipped"] += 1
            else:
                self._dead_letter(message, decoded, result)

        fresh = self._deduper.claim([(event, position(m)) for m, event in events])
        parts: list[tuple[ChangeInfo, Part]] = []
        group_counts: list[GroupCount] = []
        for (message, event), first in zip(events, fresh, strict=True):
            label = event.envelope.type  # a known type: bounded
            if not first:
                result.events[label, "duplicate"] += 1
                continue
            result.events[label, "processed"] += 1
            if isinstance(event.data, UsersModified):
                part = Part(
                    position(message),
                    event.envelope.id,
                    tuple(event.data.affected_users),
                    event.data.fully_processed,
                )
                parts.append((change_info(event), part))
            else:
                record = group_change(event)
                self._emit(result, record)
                if (count := counted(record)) is not None:
                    group_counts.append(count)

        closures = self._changes.apply_parts(parts, _now_ms())
        for (info, _part), closed in zip(parts, closures, strict=True):
            if closed is None:
                continue
            if not closed.emission.late:
                result.closed.append(info["change_id"])
                result.changes_closed["complete"] += 1
            self._emit_closure(result, closed)
        self._count_tenant_groups(group_counts, result)
        return result

    def flush_timeouts(self, limit: int = 200) -> BatchResult:
        """Close changes whose deadline passed, under a lease; the caller commits the output like a batch."""
        result = BatchResult()
        now = _now_ms()
        due = self._changes.due(now, limit)
        if not due:
            return result
        token = f"{self._instance}:{next(self._flushes)}"
        for change_id, outcome in zip(due, self._changes.apply_timeouts(due, token, now), strict=True):
            if outcome is TimeoutOutcome.DONE:
                result.closed.append(change_id)
            elif isinstance(outcome, Closed):
                result.closed.append(change_id)
                result.leases.append((change_id, token))
                result.changes_closed["timed_out"] += 1
                self._emit_closure(result, outcome)
                log.info("change_timed_out", change_id=change_id, users=len(outcome.emission.users))
        return result

    def settle(self, result: BatchResult) -> None:
        self._changes.settle(result.closed, result.leases)

    def open_changes(self) -> int:
        return self._changes.open_changes()

    def _count_tenant_groups(self, changes: Sequence[GroupCount], result: BatchResult) -> None:
        """First-seen creations and deletions into the tenants' live group sets (no round trip without any)."""
        if self._tenants is None or not changes:
            return
        for change, size in zip(changes, self._tenants.apply(changes), strict=True):
            result.tenant_groups[change.tenant_id] = size
            if exceeds_limit(change, size):
                result.tenant_limit_exceeded += 1
                log.warning(
                    "tenant_group_limit_exceeded",
                    tenant=change.tenant_id,
                    groups=size,
                    limit=GROUP_LIMIT,
                    event_id=change.event_id,
                )

    def _emit_closure(self, result: BatchResult, closed: Closed) -> None:
        emission = closed.emission
        for user, event_id in emission.users:
            record = membership_change(closed.info, user, event_id, complete=emission.complete, late=emission.late)
            self._emit(result, record)

    def _emit(self, result: BatchResult, record: GroupChange | MembershipChange) -> None:
        result.outputs.append(Output(self._output_topic, record_key(record), encode(record), JSON_HEADERS))
        result.records[record["schema"]] += 1

    def _dead_letter(self, message: Message, rejected: Rejected, result: BatchResult) -> None:
        headers = dead_letter_headers(
            message.headers(), rejected.reason, rejected.detail, message.topic(), message.partition(), message.offset()
        )
        result.outputs.append(Output(self._dlq_topic, message.key(), message.value(), headers))
        result.dlq[rejected.reason] += 1
        result.events[type_label(rejected.event_type or ""), "invalid"] += 1
        log.warning(
            "dead_lettered",
            reason=rejected.reason,
            detail=rejected.detail,
            event_id=rejected.event_id,
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
        )


def _now_ms() -> int:
    return int(time.time() * 1000)
