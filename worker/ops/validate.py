"""`python -m worker validate`: what would the worker make of these events? The real processor on in-memory
stores, without Kafka or Redis."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from worker.processing.deadletter import dead_letter_fields
from worker.processing.decode import Skipped, decode
from worker.processing.models import Event, UsersModified
from worker.processing.offline import CONTROL_TOPIC, DLQ_TOPIC, Offline, PlainMessage
from worker.processing.processor import Output
from worker.processing.records import change_info


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
            if c.info is not None and not c.state.closed
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
