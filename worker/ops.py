"""Operator commands: `check` (are Kafka, the topics and Redis there as configured?) and `validate` (what
would the worker make of these events?, without Kafka or Redis). The DLQ commands are in `worker/dlq.py`."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from worker.config import Settings
from worker.decode import Rejected, Skipped, decode
from worker.dedupe import dedupe_key
from worker.dlq import QUIET
from worker.models import Event, UsersModified
from worker.reassembly import ChangeState, Part, apply_part
from worker.records import ChangeInfo, change_info, group_change, membership_change
from worker.redis_scripts import connect

# ---- check -------------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Lines of a check, printed as they come: `ok:`, `warning:` (exit 0) or `problem:` (exit 1)."""

    problems: int = 0
    warnings: int = 0

    def ok(self, text: str) -> None:
        print(f"ok: {text}")

    def warning(self, text: str) -> None:
        self.warnings += 1
        print(f"warning: {text}")

    def problem(self, text: str) -> None:
        self.problems += 1
        print(f"problem: {text}")


def check(settings: Settings, timeout: float) -> int:
    report = Report()
    check_kafka(settings, timeout, report)
    check_redis(settings, timeout, report)
    verdict = f"{report.problems} problem(s)" if report.problems else "all good"
    print(f"check: {verdict}, {report.warnings} warning(s)")
    return 1 if report.problems else 0


def check_kafka(settings: Settings, timeout: float, report: Report) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    config: dict[str, Any] = {**settings.kafka_overrides("producer"), "logger": QUIET}
    admin = AdminClient(config)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as error:
        report.problem(
            f"Kafka at {bootstrap} did not answer within {timeout:g} s ({error.args[0].str()}) — "
            "check WORKER_KAFKA_BOOTSTRAP_SERVERS and the WORKER_KAFKA_* security settings"
        )
        return
    report.ok(f"Kafka at {bootstrap} answers, {len(metadata.brokers)} broker(s)")
    if overlap := set(settings.input_topics) & {settings.output_topic, settings.dlq_topic}:
        report.problem(f"topic(s) {sorted(overlap)} are both input and output — fix WORKER_INPUT_TOPICS")
    roles = [("input", name, "WORKER_INPUT_TOPICS") for name in settings.input_topics]
    roles += [("output", settings.output_topic, "WORKER_OUTPUT_TOPIC"), ("DLQ", settings.dlq_topic, "WORKER_DLQ_TOPIC")]
    for role, name, variable in roles:
        topic = metadata.topics.get(name)
        if topic is None or topic.error is not None or not topic.partitions:
            report.problem(f"{role} topic {name!r} does not exist — create it or fix {variable}")
        else:
            report.ok(f"{role} topic {name!r}: {len(topic.partitions)} partition(s)")


def check_redis(settings: Settings, timeout: float, report: Report) -> None:
    where = redact(settings.redis_url)
    client = connect(settings.redis_url, timeout)
    try:
        client.ping()
    except redis.RedisError as error:
        report.problem(f"Redis at {where} does not answer PING ({error}) — check WORKER_REDIS_URL")
        return
    try:
        info: dict[str, Any] = {**client.info("server"), **client.info("persistence")}
    except redis.RedisError as error:  # INFO may be denied (ACL) or renamed on managed services
        report.ok(f"Redis at {where} answers PING")
        report.warning(f"cannot read Redis INFO ({error}): make sure it persists with AOF (appendonly yes)")
        return
    finally:
        client.close()
    aof = info.get("aof_enabled") == 1
    report.ok(f"Redis at {where} answers PING, version {info.get('redis_version', '?')}, AOF {'on' if aof else 'off'}")
    if not aof:
        report.warning(
            "Redis persistence AOF is off (appendonly no): a Redis restart loses the dedupe claims and open changes "
            "written since the last snapshot, so replays are no longer safe — set appendonly yes"
        )


def redact(url: str) -> str:
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{host}"))


# ---- validate ----------------------------------------------------------------------------------------------


@dataclass
class Change:
    info: ChangeInfo  # of its first part, as the Redis store keeps it
    state: ChangeState = field(default_factory=ChangeState)
    lines: list[int] = field(default_factory=list)


@dataclass
class Validation:
    """The worker's decisions over a file of events, in file order, with in-memory dedupe and reassembly."""

    name: str
    first_line: dict[str, int] = field(default_factory=dict)  # dedupe key -> line of its first event
    changes: dict[str, Change] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)

    def line(self, number: int, value: bytes) -> list[Any]:
        """What the worker would emit for this line: records, or a note on the line."""
        decoded = decode(value, None)
        if isinstance(decoded, Rejected):
            self.outcomes["invalid"] += 1
            return [{"line": number, "dlq.reason": decoded.reason, "dlq.detail": decoded.detail}]
        if isinstance(decoded, Skipped):
            self.outcomes["skipped"] += 1
            return [{"line": number, "skipped": decoded.type}]
        first = self.first_line.setdefault(dedupe_key(decoded), number)
        if first != number:
            self.outcomes["duplicate"] += 1
            return [{"line": number, "duplicate_of": first}]
        self.outcomes["valid"] += 1
        if isinstance(decoded.data, UsersModified):
            return self._part(number, decoded, decoded.data)
        return [group_change(decoded)]

    def _part(self, number: int, event: Event, data: UsersModified) -> list[Any]:
        info = change_info(event)
        change = self.changes.setdefault(info["change_id"], Change(info))
        change.lines.append(number)
        part = Part(f"{self.name}:0:{number}", event.envelope.id, tuple(data.affected_users), data.fully_processed)
        emission = apply_part(change.state, part)
        if emission is None:
            return []
        return [
            membership_change(change.info, user, event_id, complete=emission.complete, late=emission.late)
            for user, event_id in emission.users
        ]

    def open_changes(self) -> list[str]:
        """A note per change still waiting for its final part."""
        return [
            f"note: change {change_id} (group {c.info['group_id']}, lines {', '.join(map(str, c.lines))}) has no "
            f"final part: its {len(c.state.users)} user(s) would be emitted with complete: false after "
            "WORKER_BATCH_TIMEOUT_SECONDS"
            for change_id, c in self.changes.items()
            if c.state.final_tag is None
        ]

    def summary(self, records: int) -> str:
        counts = ", ".join(f"{self.outcomes[k]} {k}" for k in ("valid", "duplicate", "skipped", "invalid"))
        return f"{self.name}: {sum(self.outcomes.values())} events ({counts}), {records} records"


def validate(lines: Iterable[bytes], name: str) -> int:
    """Print, as JSON lines, what the worker would emit for each line; exit code 1 if any line is invalid."""
    validation = Validation(name)
    records = 0
    for number, value in enumerate(lines, start=1):
        if not value.strip():
            continue
        for item in validation.line(number, value):
            records += "schema" in item
            print(orjson.dumps(item).decode())
    for note in validation.open_changes():
        print(note, file=sys.stderr)
    print(validation.summary(records), file=sys.stderr)
    return 1 if validation.outcomes["invalid"] else 0


def input_lines(path: str) -> Iterator[bytes]:
    """Lines of a file, or of stdin for `-`, as bytes."""
    if path != "-":
        with open(path, "rb") as file:
            yield from file
        return
    stream: Any = getattr(sys.stdin, "buffer", sys.stdin)
    for line in stream:
        yield line if isinstance(line, bytes) else line.encode()
