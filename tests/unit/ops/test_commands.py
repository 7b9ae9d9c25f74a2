"""The operator commands through the command line: `validate` on files and stdin, `check` without services,
the DLQ commands' pure parts."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.cli import run
from worker.config import Settings
from worker.ops import dlq
from worker.ops.check import redact
from worker.ops.dlq import DeadLetter

SEEDS = Path(__file__).parents[2] / "fixtures" / "seed-events"
TENANT = "VZhiEfgW2bLd7HgR-jjzAh6VnicipweT"
USERS_MODIFIED = "com.qlik.v1.group.users.modified"


# ---- validate ----------------------------------------------------------------------------------------------


def seed(name: str) -> dict[str, Any]:
    event: dict[str, Any] = orjson.loads((SEEDS / f"{name}.json").read_bytes())
    return event


def part(event_id: str, users: list[str], *, final: bool, last_updated: str = "2024-05-14T12:21:11Z") -> dict[str, Any]:
    """A structured-mode part of a users.modified change of group g-1 (the seed, other group and users)."""
    event = seed("group-users-modified")
    event["id"] = event_id
    event["data"].update(
        id="g-1", name="Engineers", deleted=False, affectedUsers=users, fullyProcessed=final, lastUpdatedAt=last_updated
    )
    return event


def jsonl(*events: dict[str, Any] | str) -> str:
    return "".join((e if isinstance(e, str) else orjson.dumps(e).decode()) + "\n" for e in events)


EVENTS = jsonl(
    seed("group-created"),  # 1
    seed("group-updated"),  # 2
    seed("group-deleted"),  # 3: same id as 1 and 2, other type: not a duplicate
    seed("group-users-modified"),  # 4: single part, deleted
    part("part-2", ["u-c", "u-d"], final=False),  # 5
    part("part-3", ["u-e", "u-f", "u-c"], final=True),  # 6: closes the change with the users of 5 and 6
    part("part-1", ["u-a", "u-b", "u-d"], final=False),  # 7: late, u-d emitted already
    part("part-2", ["u-c", "u-d"], final=False),  # 8: duplicate of 5
    "{not json",  # 9
    "",  # blank: ignored
    jsonl({"specversion": "1.0", "id": "x-1", "source": "s", "type": "com.example.other"}).strip(),  # 11
    part("open-1", ["u-z"], final=False, last_updated="2024-06-01T00:00:00Z"),  # 12: never closed
)


def shape(item: dict[str, Any]) -> tuple[Any, ...]:
    if item.get("schema") == "group_change/v1":
        return ("group", item["change"], item["group_id"], item["event_id"])
    if item.get("schema") == "membership_change/v1":
        return ("member", item["change"], item["user_id"], item["event_id"], item["complete"], item["late"])
    return tuple(sorted(item.items()))


def test_validate_prints_the_records_the_worker_would_emit_and_a_note_per_bad_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(EVENTS)

    code, out, err = run(["validate", str(events)], capsys)

    items = [orjson.loads(line) for line in out.splitlines()]
    group = "507f191e810c19729de860ea"
    assert [shape(i) for i in items] == [
        ("group", "created", group, "A234-1234-1234"),
        ("group", "updated", group, "A234-1234-1234"),
        ("group", "deleted", group, "A234-1234-1234"),
        ("member", "group_deleted", TENANT, "A234-1234-1234", True, False),
        ("member", "group_updated", "u-c", "part-2", True, False),
        ("member", "group_updated", "u-d", "part-2", True, False),
        ("member", "group_updated", "u-e", "part-3", True, False),
        ("member", "group_updated", "u-f", "part-3", True, False),
        ("member", "group_updated", "u-a", "part-1", True, True),
        ("member", "group_updated", "u-b", "part-1", True, True),
        (("duplicate_of", 5), ("line", 8)),
        (
            ("dlq.detail", "value is not JSON: unexpected character, expected a string key: line 1 column 2 (char 1)"),
            ("dlq.reason", "not_json"),
            ("line", 9),
        ),
        (("line", 11), ("skipped", "com.example.other")),
    ]
    assert items[0] == {  # the whole record, as the worker writes it
        "schema": "group_change/v1",
        "record_id": "24567b4cbac5aa86e78aacbaf60abf3c",
        "tenant_id": TENANT,
        "group_id": group,
        "group_name": "Development",
        "change": "created",
        "status": "active",
        "provider_type": "idp",
        "idp_id": "4ecbe7f9e8c1c9092c000027",
        "assigned_roles": [{"id": group, "name": "My Custom Role", "type": "custom", "level": "user"}],
        "updates": [],
        "occurred_at": "2021-03-22T10:01:02.000Z",
        "event_id": "A234-1234-1234",
        "source_system": "qlik-cloud",
        "parent_group_id": None,
        "external_id": None,
        "manager_ids": [],
        "superseded": False,
    }
    change = [i for i in items if i.get("group_id") == "g-1"]
    assert len({i["change_id"] for i in change}) == 1
    assert len({i["record_id"] for i in change}) == len(change)
    note, summary = err.splitlines()
    assert re.fullmatch(
        r"note: change [0-9a-f]{32} \(group g-1, lines 12\) has no final part: its 1 user\(s\) would be emitted "
        r"with complete: false after WORKER_BATCH_TIMEOUT_SECONDS",
        note,
    )
    assert summary == f"{events}: 11 events (8 valid, 1 duplicate, 1 skipped, 1 invalid), 10 records"
    assert code == 1


@pytest.mark.parametrize("binary", [True, False], ids=["bytes", "text"])
def test_validate_reads_stdin(
    binary: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = jsonl(seed("group-created"), seed("group-deleted"))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode())) if binary else io.StringIO(text))

    code, out, err = run(["validate", "-"], capsys)

    assert [orjson.loads(line)["change"] for line in out.splitlines()] == ["created", "deleted"]
    assert err == "stdin: 2 events (2 valid, 0 duplicate, 0 skipped, 0 invalid), 2 records\n"
    assert code == 0


def test_validate_of_a_missing_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["validate", str(tmp_path / "nope.jsonl")], capsys)
    assert (code, out) == (2, "")
    assert err == f"cannot read {tmp_path / 'nope.jsonl'}: No such file or directory\n"


# ---- check and dlq, without services -----------------------------------------------------------------------


def test_check_reports_a_bad_setting_and_unreachable_services(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORKER_BATCH_SIZE", "0")
    code, out, _ = run(["check"], capsys)
    assert code == 1
    assert out.startswith("problem: invalid configuration:\n  WORKER_BATCH_SIZE: Input should be greater than")

    monkeypatch.delenv("WORKER_BATCH_SIZE")
    monkeypatch.setenv("WORKER_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("WORKER_REDIS_URL", "redis://user:secret@127.0.0.1:1/0")
    code, out, _ = run(["check", "--timeout", "1"], capsys)
    lines = out.splitlines()
    assert code == 1
    assert lines[0].startswith("problem: Kafka at 127.0.0.1:1 did not answer within 1 s (")
    assert lines[0].endswith("check WORKER_KAFKA_BOOTSTRAP_SERVERS and the WORKER_KAFKA_* security settings")
    assert lines[1].startswith("problem: Redis at redis://user:***@127.0.0.1:1/0 does not answer PING (")
    assert lines[1].endswith("— check WORKER_REDIS_URL")
    assert lines[2:] == ["check: 2 problem(s), 0 warning(s)"]
    assert "secret" not in out


def test_redact_hides_only_the_password() -> None:
    assert redact("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("rediss://u:p@ss@h/1") == "rediss://u:***@h/1"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


class FakeMessage:
    def __init__(self, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        self._value, self._headers = value, headers

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 7

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers


def test_a_dead_letter_splits_its_headers_and_finds_the_event_id() -> None:
    extra = [("dlq.reason", b"invalid_data"), ("dlq.detail", b"data.status: bad"), ("dlq.source.topic", b"in")]
    letter = DeadLetter.of(FakeMessage(b'{"id": "e-1"}', [("content-type", b"application/json"), *extra]))
    assert letter.headers == [("content-type", b"application/json")]
    assert letter.dlq == {"reason": "invalid_data", "detail": "data.status: bad", "source.topic": "in"}
    assert (letter.reason, letter.position, letter.source, letter.event_id()) == (
        "invalid_data",
        "0:7",
        "in:?:?",
        "e-1",
    )
    assert DeadLetter.of(FakeMessage(b"{", [("ce_id", b"e-2")])).event_id() == "e-2"
    assert DeadLetter.of(FakeMessage(b"[1]", [])).event_id() is None
    assert DeadLetter.of(FakeMessage(None, [])).reason == "(none)"


def test_an_interrupted_redrive_says_where_it_stopped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    letters = [
        DeadLetter(0, 4, b"k", b"{", [], {"reason": "not_json", "source.topic": "in", "source.partition": "2"}),
        DeadLetter(0, 5, None, b"{}", [("ce_id", b"e-5")], {"reason": "invalid_data", "source.topic": "in"}),
        DeadLetter(0, 6, None, b"{}", [], {"reason": "not_json"}),
    ]

    def read(*_args: object) -> Iterator[DeadLetter]:
        yield from letters
        raise KeyboardInterrupt

    monkeypatch.setattr(dlq, "read", read)
    code = dlq.redrive(Settings(), dlq.Selection(), dlq.Reading(), to_topic=None, dry_run=True)
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "would send 0:4 (not_json, id -) to in[2]",
        "would send 0:5 (invalid_data, id e-5) to in",
        "dry run, nothing sent: would send 2 messages (in: 2)",
        "skipped 1 messages without a dlq.source.topic header: give --to-topic to send them",
    ]
    assert err == "INTERRUPTED after DLQ message 0:6 (partition:offset): what was read up to there is counted above\n"
    assert code == 1
