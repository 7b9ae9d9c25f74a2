"""Sample input for `demo`, `sample-events` and the compose producer: the four seed examples verbatim
(structured mode), a users.modified change split into three parts sent out of order (binary mode), one
duplicate of a part on another partition, and one poison message.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

import orjson

from worker.models import USERS_MODIFIED

SEED_EXAMPLES = ("group-created", "group-updated", "group-deleted", "group-users-modified")
TENANT = "VZhiEfgW2bLd7HgR-jjzAh6VnicipweT"


@dataclass(frozen=True, slots=True)
class Sample:
    partition: int
    value: bytes
    headers: list[tuple[str, str | bytes | None]]
    note: str


def seed_example(name: str) -> bytes:
    return (files("worker") / "examples" / f"{name}.json").read_bytes()


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
