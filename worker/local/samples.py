"""Sample input for `demo`, `sample-events` and the compose producer: the four seed examples verbatim
(structured mode), the UMS webhook seed example verbatim (the second input format, on the same topic), a
users.modified change split into three parts sent out of order (binary mode), one duplicate of a part on
another partition, and one poison message. `expected_counts` says what the worker makes of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

import orjson

from worker.processing.models import USERS_MODIFIED
from worker.processing.offline import Offline, PlainMessage

SEED_EXAMPLES = ("group-created", "group-updated", "group-deleted", "group-users-modified")
UMS_EXAMPLE = "ums-usergroup-updated"
TENANT = "VZhiEfgW2bLd7HgR-jjzAh6VnicipweT"


@dataclass(frozen=True, slots=True)
class Sample:
    partition: int
    value: bytes
    headers: list[tuple[str, str | bytes | None]]
    note: str


def seed_example(name: str) -> bytes:
    return (files("worker.local") / "examples" / f"{name}.json").read_bytes()


def split_change_part(index: int, users: list[str], *, final: bool) -> tuple[dict[str, object], dict[str, str]]:
    """(data, binary-mode ce_ attributes) of one part of the demo's three-part change."""
    data = orjson.loads(seed_example("group-users-modified"))["data"]
    data.update(
        id="65f0c0ffee0000000000demo",
        name="Demo Engineers",
        lastUpdatedAt="2024-05-14T12:21:11Z",
        deleted=False,
        affectedUsers=users,
        fullyProcessed=final,
    )
    attributes = {
        "specversion": "1.0",
        "id": f"demo-change-part-{index}",
        "source": "com.qlik/identities",
        "type": USERS_MODIFIED,
        "time": "2024-05-14T12:21:12Z",
        "tenantid": TENANT,
    }
    return data, attributes


def samples() -> list[Sample]:
    out = [
        Sample(0, seed_example(name), [("content-type", b"application/cloudevents+json")], f"seed {name}")
        for name in SEED_EXAMPLES
    ]
    out.append(Sample(0, seed_example(UMS_EXAMPLE), [("content-type", b"application/json")], "seed UMS webhook"))
    parts = [
        split_change_part(1, ["user-a", "user-b"], final=False),
        split_change_part(2, ["user-c", "user-d"], final=False),
        split_change_part(3, ["user-e", "user-f"], final=True),
    ]
    for index in (2, 3, 1):  # out of order: the final part comes second, part 1 arrives late
        data, attributes = parts[index - 1]
        headers: list[tuple[str, str | bytes | None]] = [(f"ce_{k}", v.encode()) for k, v in attributes.items()]
        headers.append(("content-type", b"application/json"))
        out.append(Sample(index % 2, orjson.dumps(data), headers, f"change part {index} of 3 (binary mode)"))
    duplicate = out[-3]
    out.append(Sample(1 - duplicate.partition, duplicate.value, duplicate.headers, "duplicate of part 2"))
    out.append(Sample(0, b"{not json", [], "poison message"))
    return out


def expected_counts(messages: list[Sample] | None = None) -> tuple[int, int]:
    """(records, DLQ messages) the worker makes of `messages` (default: `samples()`), sent once in this order:
    what `demo` waits for. The real processor on in-memory stores."""
    offline = Offline()
    records = dead = 0
    for offset, sample in enumerate(samples() if messages is None else messages):
        for result in offline.feed([PlainMessage(("samples", sample.partition, offset), sample.value, sample.headers)]):
            records += sum(result.records.values())
            dead += sum(result.dlq.values())
    return records, dead
