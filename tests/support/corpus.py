"""Synthetic input for the chaos run and the benchmark, with the records the worker must emit for it.

A corpus is a list of Kafka messages (partition, key, value, headers) in send order, plus an oracle: the
expected records by `record_id`, computed with the worker's own record builders from the events (the
fields of a membership record that depend on arrival order, `complete`/`late`/`event_id`, are left out).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from worker.processing.decode import decode
from worker.processing.models import Event
from worker.processing.records import change_info, group_change, membership_change

Kind = Literal["mixed", "flat", "fanout"]
Headers = list[tuple[str, str | bytes | None]]
ORDER_DEPENDENT = ("complete", "late", "event_id")
OVERSIZED_BYTES = 1_500_000
BIG_PART_USERS = 1_000  # users per part of the big change
TYPES = {
    "created": "com.qlik.v1.group.created",
    "updated": "com.qlik.v1.group.updated",
    "deleted": "com.qlik.v1.group.deleted",
    "users": "com.qlik.v1.group.users.modified",
}


@dataclass
class Corpus:
    messages: list[tuple[int, bytes | None, bytes, Headers]] = field(default_factory=list)
    expected: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: int = 0  # distinct valid events
    duplicates: int = 0
    poison: int = 0  # invalid messages, the oversized ones included
    poison_at: set[int] = field(default_factory=set)  # indexes in `messages` of every invalid message
    oversized_at: set[int] = field(default_factory=set)  # those that must reach the DLQ as `too_large` stubs


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A record without the fields that depend on the order parts arrived in."""
    if record["schema"] != "membership_change/v1":
        return record
    return {k: v for k, v in record.items() if k not in ORDER_DEPENDENT}


class _Builder:
    def __init__(self, partitions: int, seed: int, dup_rate: float, poison_rate: float) -> None:
        self.rng = random.Random(seed)
        self.partitions, self.dup_rate, self.poison_rate = partitions, dup_rate, poison_rate
        self.corpus = Corpus()
        self.serial = 0
        self.tenants = [f"tenant-{i}" for i in range(20)]

    def event(self, kind: str, tenant: str, data: dict[str, Any]) -> tuple[bytes, Headers, Event]:
        self.serial += 1
        event_id = f"ev-{self.serial}"
        attributes = {"specversion": "1.0", "id": event_id, "source": "com.qlik/identities", "type": TYPES[kind]}
        if self.rng.random() < 0.5:
            headers: Headers = [(f"ce_{k}", v.encode()) for k, v in {**attributes, "tenantid": tenant}.items()]
            value = orjson.dumps(data)
        else:
            headers = [("content-type", b"application/cloudevents+json")]
            value = orjson.dumps(
                {**attributes, "tenantid": tenant, "datacontenttype": "application/json", "data": data}
            )
        decoded = decode(value, headers)
        assert isinstance(decoded, Event), decoded
        return value, headers, decoded

    def group(self, tenant: str, group_id: str, **extra: Any) -> dict[str, Any]:
        return {
            "id": group_id,
            "name": f"Group {group_id}",
            "status": self.rng.choice(["active", "disabled"]),
            "tenantId": tenant,
            "createdAt": "2024-01-01T00:00:00Z",
            "lastUpdatedAt": f"2024-02-{1 + self.serial % 28:02d}T{self.serial % 24:02d}:00:00Z",
            "providerType": self.rng.choice(["idp", "custom"]),
            "assignedRoles": [{"id": "r1", "name": "Viewer", "type": "default", "level": "user"}],
            **extra,
        }

    def send(self, partition: int, value: bytes, headers: Headers) -> None:
        self.corpus.messages.append((partition, None, value, headers))
        if self.rng.random() < self.dup_rate:  # a copy of the same event on another partition
            other = (partition + 1 + self.rng.randrange(max(1, self.partitions - 1))) % self.partitions
            self.corpus.messages.append((other, None, value, headers))
            self.corpus.duplicates += 1
        if self.rng.random() < self.poison_rate:
            self.poison(b'{"broken": ')

    def poison(self, value: bytes) -> None:
        self.corpus.poison_at.add(len(self.corpus.messages))
        self.corpus.messages.append((self.rng.randrange(self.partitions), None, value, []))
        self.corpus.poison += 1

    def oversized(self) -> None:
        """Not JSON and 1.5 MB, over a producer's default message.max.bytes (1 MB) once copied to the DLQ
        uncompressed; sent compressed (zstd), it is a few kB on the input topic."""
        self.corpus.oversized_at.add(len(self.corpus.messages))
        self.poison(b"\x00" + b"p" * OVERSIZED_BYTES)

    def lifecycle(self) -> None:
        kind = self.rng.choice(["created", "updated", "deleted"])
        tenant = self.rng.choice(self.tenants)
        extra = {"updates": [{"path": "/name", "newValue": "B", "oldValue": "A"}]} if kind == "updated" else {}
        value, headers, event = self.event(kind, tenant, self.group(tenant, f"g{self.serial}", **extra))
        record = group_change(event)
        self.corpus.expected[record["record_id"]] = dict(record)
        self.corpus.events += 1
        self.send(self.rng.randrange(self.partitions), value, headers)

    def part(self, tenant: str, base: dict[str, Any], users: list[str], *, final: bool) -> tuple[int, bytes, Headers]:
        """One part of a users.modified change, on a random partition; its users' records are expected."""
        data = {**base, "affectedUsers": users, "fullyProcessed": final}
        value, headers, event = self.event("users", tenant, data)
        info = change_info(event)
        for user in users:
            record = comparable(dict(membership_change(info, user, "", complete=True, late=False)))
            self.corpus.expected[record["record_id"]] = record
        self.corpus.events += 1
        return self.rng.randrange(self.partitions), value, headers

    def change(self, parts: int, users_per_part: tuple[int, int]) -> list[tuple[int, bytes, Headers]]:
        """One users.modified change; its parts, in the order they will be sent, on random partitions."""
        tenant = self.rng.choice(self.tenants)
        group_id = f"g{self.serial}-{self.rng.randrange(10**6)}"
        base = self.group(tenant, group_id, deleted=self.rng.random() < 0.3)
        pool = [f"user-{group_id}-{i}" for i in range(parts * users_per_part[1])]
        final_index = self.rng.randrange(parts)
        out = []
        for index in range(parts):
            users = self.rng.sample(pool, self.rng.randint(*users_per_part))
            out.append(self.part(tenant, base, users, final=index == final_index))
        if self.rng.random() < 0.3:  # the final part first
            out.insert(0, out.pop(final_index))
        return out

    def big_change(self, users: int) -> list[tuple[int, bytes, Headers]]:
        """One users.modified change of `users` distinct users in parts of BIG_PART_USERS, on random
        partitions, the fullyProcessed part (no users) last."""
        tenant = self.rng.choice(self.tenants)
        group_id = f"g-big-{self.serial}"
        base = self.group(tenant, group_id, deleted=False)
        everyone = [f"user-{group_id}-{i}" for i in range(users)]
        slices = [everyone[start : start + BIG_PART_USERS] for start in range(0, users, BIG_PART_USERS)]
        out = []
        for index, part in enumerate([*slices, []]):
            out.append(self.part(tenant, base, part, final=index == len(slices)))
        return out


def generate(
    kind: Kind,
    events: int,
    partitions: int,
    seed: int = 7,
    dup_rate: float = 0.05,
    poison_rate: float = 0.01,
    big_change: int = 0,
    oversized: int = 0,
) -> Corpus:
    """About `events` distinct valid events (plus duplicates and poison) of one corpus kind:
    - mixed: all four types; changes of 2-5 parts with 1-10 users, parts interleaved with other events;
    - flat: created/updated/deleted and single-part, single-user changes (one input, at most one record);
    - fanout: changes of 1-20 parts with 10-200 users, split over partitions, final part sometimes first.
    With `big_change`, one more change of that many users, its parts spread evenly from a tenth to seven
    tenths of the way, the final part last; with `oversized`, that many oversized poison messages spread
    over the middle of the corpus."""
    b = _Builder(partitions, seed, dup_rate, poison_rate)
    pending: list[tuple[int, bytes, Headers]] = []  # parts waiting to be interleaved
    big = b.big_change(big_change) if big_change else []
    start = b.corpus.events  # the big change's parts are counted already
    big_at = [events * (0.1 + 0.6 * i / max(1, len(big) - 1)) for i in range(len(big))]
    oversized_at = [events * (0.3 + 0.4 * (i + 1) / (oversized + 1)) for i in range(oversized)]
    while b.corpus.events - start < events:
        while big and b.corpus.events - start >= big_at[0]:
            big_at.pop(0)
            b.send(*big.pop(0))
        if oversized_at and b.corpus.events - start >= oversized_at[0]:
            oversized_at.pop(0)
            b.oversized()
        if kind == "fanout":
            for partition, value, headers in b.change(b.rng.randint(1, 20), (10, 200)):
                b.send(partition, value, headers)
        elif kind == "flat":
            if b.rng.random() < 0.75:
                b.lifecycle()
            else:
                for partition, value, headers in b.change(1, (1, 1)):
                    b.send(partition, value, headers)
        else:
            roll = b.rng.random()
            if roll < 0.6:
                b.lifecycle()
            elif roll < 0.8:
                pending += b.change(b.rng.randint(2, 5), (1, 10))
            if pending and b.rng.random() < 0.5:
                b.send(*pending.pop(0))
    for partition, value, headers in [*pending, *big]:
        b.send(partition, value, headers)
    for _ in oversized_at:
        b.oversized()
    return b.corpus
