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
from worker.deadletter import dead_letter_fields
from worker.decode import Skipped, decode
from worker.dlq import QUIET
from worker.models import Event, UsersModified
from worker.offline import CONTROL_TOPIC, DLQ_TOPIC, Offline, PlainMessage
from worker.pipeline import Output
from worker.records import change_info
from worker.redis_scripts import Client, on_node, primaries
from worker.state import redis_client

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
    if overlap := set(settings.input_topics) & {settings.output_topic, settings.dlq_topic, settings.control_topic}:
        report.problem(f"topic(s) {sorted(overlap)} are both input and output — fix WORKER_INPUT_TOPICS")
    roles = [("input", name, "WORKER_INPUT_TOPICS") for name in settings.input_topics]
    roles += [("output", settings.output_topic, "WORKER_OUTPUT_TOPIC"), ("DLQ", settings.dlq_topic, "WORKER_DLQ_TOPIC")]
    roles.append(("control", settings.control_topic, "WORKER_CONTROL_TOPIC"))
    for role, name, variable in roles:
        topic = metadata.topics.get(name)
        if topic is None or topic.error is not None or not topic.partitions:
            report.problem(f"{role} topic {name!r} does not exist — create it or fix {variable}")
        else:
            report.ok(f"{role} topic {name!r}: {len(topic.partitions)} partition(s)")


def check_redis(settings: Settings, timeout: float, report: Report) -> None:
    where = redact(settings.redis_url) + (" (cluster)" if settings.redis_cluster else "")
    try:
        client = redis_client(settings, timeout)
        client.ping()
    except redis.RedisError as error:
        report.problem(f"Redis at {where} does not answer PING ({error}) — check WORKER_REDIS_URL")
        return
    try:
        nodes = primaries(client)
        report.ok(f"Redis at {where} answers PING, {len(nodes)} primary node(s)")
        for node in nodes:
            check_redis_node(client, node, settings.redis_min_replicas, report)
    except redis.RedisError as error:
        report.problem(f"Redis at {where} failed during the check ({error})")
    finally:
        client.close()


LOSES_WRITES = (
    "a Redis crash or restart loses the dedupe claims and open changes it acknowledged but had not written to disk, "
    "so events already committed in Kafka can be emitted again and parts of open changes forgotten"
)


def check_redis_node(client: Client, node: Any, min_replicas: int, report: Report) -> None:
    """Durability of one primary: AOF with fsync on every write, and the replicas WAIT will ask for."""
    name = "Redis" if node is None else f"Redis node {node.name}"
    try:
        info: dict[str, Any] = {
            **on_node(client, node, "INFO", "server"),
            **on_node(client, node, "INFO", "persistence"),
            **on_node(client, node, "INFO", "replication"),
        }
    except redis.ResponseError as error:  # INFO may be denied (ACL) or renamed on managed services
        report.warning(f"cannot read {name} INFO ({error}): make sure it runs with appendonly yes, appendfsync always")
        return
    if info.get("aof_enabled") != 1:
        report.problem(f"{name} has AOF persistence off (appendonly no): {LOSES_WRITES} — set appendonly yes")
        return
    try:
        reply = on_node(client, node, "CONFIG", "GET", "appendfsync")
        fsync = _text(dict(reply).get(b"appendfsync", dict(reply).get("appendfsync")))
    except redis.ResponseError as error:  # CONFIG is often denied on managed services
        report.warning(f"cannot read {name} appendfsync ({error}): make sure it is always")
        fsync = None
    if fsync is not None and fsync != "always":
        report.problem(
            f"{name} has appendfsync {fsync}: it acknowledges writes before they are on disk, so {LOSES_WRITES} "
            "— set appendfsync always"
        )
        return
    replicas = int(info.get("connected_slaves", 0))
    if replicas < min_replicas:
        report.problem(
            f"{name} has {replicas} connected replica(s), WORKER_REDIS_MIN_REPLICAS asks for {min_replicas}: every "
            "batch would fail waiting for them — add replicas or lower the setting"
        )
        return
    report.ok(f"{name}: version {info.get('redis_version', '?')}, AOF on, appendfsync always, {replicas} replica(s)")
    if replicas and not min_replicas:
        report.warning(
            f"{name} has {replicas} replica(s) but WORKER_REDIS_MIN_REPLICAS is 0: a failover to a replica that "
            "missed the last writes loses them — set WORKER_REDIS_MIN_REPLICAS"
        )


def _text(value: object) -> str | None:
    return value.decode() if isinstance(value, bytes) else None if value is None else str(value)


def redact(url: str) -> str:
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{host}"))


# ---- validate ----------------------------------------------------------------------------------------------


@dataclass
class Validation:
    """The worker's decisions over a file of events, in file order: the real processor on in-memory stores."""

    name: str
    offline: Offline = field(default_factory=Offline)
    lines: dict[str, list[int]] = field(default_factory=dict)  # change id -> lines of its parts
    outcomes: Counter[str] = field(default_factory=Counter)

    def line(self, number: int, value: bytes) -> list[Any]:
        """What the worker would emit for this line: records, or a note on the line."""
        results = self.offline.feed([PlainMessage((self.name, 0, number), value)])
        events: Counter[str] = Counter()
        for result in results:
            events.update({outcome: n for (_type, outcome), n in result.events.items()})
        outcome = next(iter(events))
        self.outcomes[OUTCOMES.get(outcome, outcome)] += 1
        decoded = decode(value, None)
        if isinstance(decoded, Skipped):
            return [{"line": number, "skipped": decoded.type}]
        if isinstance(decoded, Event):
            if outcome == "duplicate":
                owner = self.offline.dedupe.owner(decoded) or ""
                return [{"line": number, "duplicate_of": int(owner.rsplit(":", 1)[-1])}]
            if isinstance(decoded.data, UsersModified):
                self.lines.setdefault(change_info(decoded)["change_id"], []).append(number)
        return [
            _shown(number, output) for result in results for output in result.outputs if output.topic != CONTROL_TOPIC
        ]

    def open_changes(self) -> list[str]:
        """A note per change still waiting for its final part."""
        return [
            f"note: change {change_id} (group {c.info['group_id']}, lines {', '.join(map(str, self.lines[change_id]))})"
            f" has no final part: its {len(c.state.users)} user(s) would be emitted with complete: false after "
            "WORKER_BATCH_TIMEOUT_SECONDS"
            for change_id, c in self.offline.changes.changes.items()
            if not c.state.closed
        ]

    def summary(self, records: int) -> str:
        counts = ", ".join(f"{self.outcomes[k]} {k}" for k in ("valid", "duplicate", "skipped", "invalid"))
        return f"{self.name}: {sum(self.outcomes.values())} events ({counts}), {records} records"


OUTCOMES = {"processed": "valid"}  # worker_events_total outcomes -> the summary's words


def _shown(number: int, output: Output) -> Any:
    """A record as the worker writes it, or the DLQ headers of a bad line."""
    if output.topic == DLQ_TOPIC:
        fields = dead_letter_fields(output.headers)
        return {"line": number, "dlq.reason": fields["reason"], "dlq.detail": fields["detail"]}
    return orjson.loads(output.value or b"")


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
