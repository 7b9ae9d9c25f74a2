"""Processing of one batch: decode -> dedupe -> reassemble -> records -> tenant group counts, and the control
commands (`worker/processing/control.py`). Knows the state only through the stores
(`worker/processing/stores.py`) and not Kafka: it takes messages and the time, and returns the output messages
plus what to settle and count once Kafka confirmed them. It never reads the clock.

Everything it writes to the stores is tagged with the position of the message that made it (input or control
topic), so running the same batch again after any failure returns the same outputs: the loop may retry or
replay freely. A timeout scan writes nothing that matters: it only sends commands.

Every emission (a group record, the membership records of a close, chunk or late part) is checked against its
group's newest emitted occurrence (`worker/processing/recency.py`) before it is written out: older ones carry
`superseded: true`, and superseded creations and deletions do not change the tenant group counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol

import structlog

from worker.processing import control
from worker.processing.deadletter import dead_letter_headers
from worker.processing.decode import Format, Headers, Rejected, Skipped, decode
from worker.processing.models import DATA_MODELS, Event, UsersModified
from worker.processing.reassembly import Part
from worker.processing.recency import Emitted, Occurrence, Seen, group_key, micros, occurrence
from worker.processing.records import (
    MEMBERSHIP,
    ChangeInfo,
    GroupChange,
    MembershipRecords,
    change_info,
    encode,
    group_change,
    record_key,
)
from worker.processing.stores import ChangeStore, Closed, DedupeStore, RecencyStore, TenantGroupStore
from worker.processing.tenants import GROUP_LIMIT, GroupCount, counted, exceeds_limit
from worker.processing.ums import UMS_TYPE

log = structlog.get_logger("worker.processing.processor")

JSON_HEADERS: list[tuple[str, str | bytes | None]] = [("content-type", b"application/json")]
CONTROL = "control"  # the `type` label of control commands in worker_events_total
SCAN_LIMIT = 200  # timeout commands per scan


class Message(Protocol):
    """The part of `confluent_kafka.Message` we read."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> Headers: ...


class Output(NamedTuple):
    """One message to produce. A named tuple: built for every record, and a tuple is built in half the
    time of a frozen dataclass."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]


@dataclass
class BatchResult:
    outputs: list[Output] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # change ids whose deadline can go once committed
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
        deduper: DedupeStore,
        changes: ChangeStore,
        *,
        output_topic: str,
        dlq_topic: str,
        control_topic: str,
        tenants: TenantGroupStore | None = None,
        recency: RecencyStore | None = None,
        formats: Mapping[str, Format] | None = None,
        durable: Callable[[], None] | None = None,
        logger: Any = None,
    ) -> None:
        """`tenants` None: no tenant group counts. `recency` None: nothing is superseded. `formats`: input topic
        -> its format, where it is not detected per message. `durable`: called after a batch's writes, before it
        is handed back for the Kafka commit; raises `redis.RedisError` when they are not as durable as
        configured (`WORKER_REDIS_MIN_REPLICAS`). `logger`: instead of this module's (structlog)."""
        self._deduper, self._changes, self._tenants, self._recency = deduper, changes, tenants, recency
        self._output_topic, self._dlq_topic, self._control_topic = output_topic, dlq_topic, control_topic
        self._formats = dict(formats or {})
        self._durable = durable
        self._log = log if logger is None else logger

    def process(self, messages: Sequence[Message], now_ms: int) -> BatchResult:
        """The outputs of a batch of input and control messages; `now_ms` starts new changes' timeouts."""
        result = BatchResult()
        events: list[tuple[Message, Event]] = []
        commands: list[tuple[control.Command, str]] = []
        for message in messages:
            if message.topic() == self._control_topic:
                self._command(message, commands, result)
                continue
            decoded = decode(message.value(), message.headers(), self._formats.get(message.topic() or ""))
            if isinstance(decoded, Event):
                events.append((message, decoded))
            elif isinstance(decoded, Skipped):
                result.events["other", "skipped"] += 1
            else:
                self._dead_letter(message, decoded, result)

        tags = [position(m) for m, _event in events]
        fresh = self._deduper.claim([(event, tag) for (_m, event), tag in zip(events, tags, strict=True)])
        parts: list[tuple[ChangeInfo, Part]] = []
        groups: list[tuple[Event, str]] = []  # group events and their tags, in batch order
        seen: list[Seen] = []
        for (_message, event), tag, first in zip(events, tags, fresh, strict=True):
            label = event.envelope.type  # a known type: bounded
            if not first:
                result.events[label, "duplicate"] += 1
                continue
            result.events[label, "processed"] += 1
            if isinstance(event.data, UsersModified):
                part = Part(
                    tag,
                    event.envelope.id,
                    tuple(event.data.affected_users),
                    event.data.fully_processed,
                )
                info = change_info(event)
                parts.append((info, part))
                seen.append(Seen(group_key(event), info["change_id"], occurrence(event).time))
            else:
                groups.append((event, tag))

        closures: list[tuple[Closed, str]] = []  # what the parts and commands emit, with the emitting tag
        for (info, part), closed in zip(parts, self._changes.apply_parts(parts, now_ms), strict=True):
            if closed is None:
                continue
            if not closed.emission.late:
                result.closed.append(info["change_id"])
                result.changes_closed["complete"] += 1
            closures.append((closed, part.tag))
        for (command, tag), closed in zip(commands, self._changes.apply_commands(commands), strict=True):
            if command.cursor is None:  # closed now, or already: no more timeout commands for it
                result.closed.append(command.change_id)
                if closed is not None:
                    result.changes_closed["timed_out"] += 1
                    self._log.info("change_timed_out", change_id=command.change_id, users=len(closed.emission.users))
            if closed is not None:
                closures.append((closed, tag))

        emitted = [Emitted(group_key(event), tag, occurrence(event)) for event, tag in groups]
        emitted += [_membership_emission(closed, tag) for closed, tag in closures if closed.emission.users]
        superseded = iter(self._verdicts(seen, emitted))
        group_counts: list[GroupCount] = []
        for event, tag in groups:
            record = group_change(event, superseded=next(superseded))
            self._emit(result, record)
            if not record["superseded"] and (count := counted(record, tag)) is not None:
                group_counts.append(count)
        for closed, _tag in closures:
            self._emit_closure(result, closed, superseded=bool(closed.emission.users) and next(superseded))
        self._count_tenant_groups(group_counts, result)
        if self._durable is not None and (events or commands):
            self._durable()
        return result

    def scan_timeouts(self, now_ms: int, limit: int = SCAN_LIMIT) -> BatchResult:
        """Timeout commands for changes whose deadline passed (the owner of each command's partition closes the
        change); the caller commits the outputs like a batch without input offsets."""
        result = BatchResult()
        for change_id in self._changes.due(now_ms, limit):
            self._send_command(result, control.Command(change_id))
        if result.outputs:
            self._log.info("timeout_commands_sent", changes=len(result.outputs))
        return result

    def settle(self, result: BatchResult) -> None:
        """After Kafka confirmed the batch's transaction."""
        self._changes.settle(result.closed)

    def open_changes(self) -> int:
        return self._changes.open_changes()

    def _command(self, message: Message, commands: list[tuple[control.Command, str]], result: BatchResult) -> None:
        command = control.decode(message.value())
        if command is None:
            result.events[CONTROL, "invalid"] += 1
            self._log.warning(
                "control_message_ignored",
                reason="not a command",
                topic=message.topic(),
                partition=message.partition(),
                offset=message.offset(),
            )
            return
        result.events[CONTROL, "processed"] += 1
        commands.append((command, position(message)))

    def _verdicts(self, seen: Sequence[Seen], emitted: Sequence[Emitted]) -> list[bool]:
        """Whether each emission is superseded, after recording the parts' times (one store call, none without
        steps; nothing is superseded without a recency store)."""
        if self._recency is None or not (seen or emitted):
            return [False] * len(emitted)
        return self._recency.apply([*seen, *emitted])[len(seen) :]

    def _count_tenant_groups(self, changes: Sequence[GroupCount], result: BatchResult) -> None:
        """First-seen creations and deletions into the tenants' live group sets (no round trip without any)."""
        if self._tenants is None or not changes:
            return
        for change, size in zip(changes, self._tenants.apply(changes), strict=True):
            result.tenant_groups[change.tenant_id] = size
            if exceeds_limit(change, size):
                result.tenant_limit_exceeded += 1
                self._log.warning(
                    "tenant_group_limit_exceeded",
                    tenant=change.tenant_id,
                    groups=size,
                    limit=GROUP_LIMIT,
                    event_id=change.event_id,
                )

    def _emit_closure(self, result: BatchResult, closed: Closed, *, superseded: bool) -> None:
        emission = closed.emission
        if emission.users:
            records = MembershipRecords(
                closed.info, complete=emission.complete, late=emission.late, superseded=superseded
            )
            # tuple.__new__ directly: Output's generated __new__ is one more Python call per record
            topic, key, new = self._output_topic, records.key, tuple.__new__
            result.outputs += [
                new(Output, (topic, key, value, JSON_HEADERS)) for value in records.values(emission.users)
            ]
            result.records[MEMBERSHIP] += len(emission.users)
        if emission.next_cursor is not None:
            self._send_command(result, control.Command(closed.info["change_id"], emission.next_cursor))

    def _send_command(self, result: BatchResult, command: control.Command) -> None:
        key = command.change_id.encode()
        result.outputs.append(Output(self._control_topic, key, control.encode(command), JSON_HEADERS))

    def _emit(self, result: BatchResult, record: GroupChange) -> None:
        result.outputs.append(Output(self._output_topic, record_key(record), encode(record), JSON_HEADERS))
        result.records[record["schema"]] += 1

    def _dead_letter(self, message: Message, rejected: Rejected, result: BatchResult) -> None:
        headers = dead_letter_headers(
            message.headers(), rejected.reason, rejected.detail, message.topic(), message.partition(), message.offset()
        )
        result.outputs.append(Output(self._dlq_topic, message.key(), message.value(), headers))
        result.dlq[rejected.reason] += 1
        result.events[type_label(rejected.event_type or ""), "invalid"] += 1
        self._log.warning(
            "dead_lettered",
            reason=rejected.reason,
            detail=rejected.detail,
            event_id=rejected.event_id,
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
        )


def _membership_emission(closed: Closed, tag: str) -> Emitted:
    """A change's emission: its occurrence is its latest part's time, else its `lastUpdatedAt`."""
    info = closed.info
    updated = micros(datetime.fromisoformat(info["occurred_at"]))
    group = (info["tenant_id"], info["group_id"])
    return Emitted(group, tag, Occurrence(updated, info["change"] == "group_deleted"), info["change_id"])
