"""The open-change store: reassembly state of `users.modified` changes in Redis, shared by all workers.

Key layout (one hash tag per change, so every script touches one Redis Cluster slot):
- `gew:change:{<change_id>}:users`   hash user -> event id of the part that carried it
- `gew:change:{<change_id>}:emitted` hash user -> tag of the emission that claimed it
- `gew:change:{<change_id>}:meta`    hash: info (record fields, JSON), final, timed_out, lease, lease_until
- `gew:deadlines`                    sorted set change_id -> deadline (ms): the timeout flush's work list.
  Single-key commands only, added next to the part scripts in the same pipeline (ZADD NX keeps the first
  deadline), and removed once a close is durable in Kafka (or lazily by the flusher when it finds it closed).
All change keys expire `batch_timeout + dedupe_ttl` after their last touch, so abandoned state goes away.
The rules are in `worker/reassembly.py`; the Lua scripts implement them atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import redis

from worker.reassembly import Emission, Part, TimeoutOutcome
from worker.records import ChangeInfo
from worker.redis_scripts import Call, Command, LuaScript

DEADLINES = "gew:deadlines"


def change_keys(change_id: str) -> list[str]:
    prefix = "gew:change:{" + change_id + "}:"
    return [prefix + "users", prefix + "emitted", prefix + "meta"]


@dataclass(frozen=True, slots=True)
class Closed:
    """An emission with the record fields stored for its change."""

    info: ChangeInfo
    emission: Emission


class ChangeStore:
    def __init__(self, client: redis.Redis, *, timeout_ms: int, ttl_seconds: int, lease_ms: int) -> None:
        self._client = client
        self._part = LuaScript(client, "part")
        self._timeout = LuaScript(client, "timeout")
        self._confirm = LuaScript(client, "confirm")
        self._timeout_ms, self._ttl, self._lease_ms = timeout_ms, ttl_seconds, lease_ms

    def apply_parts(self, parts: Sequence[tuple[ChangeInfo, Part]], now_ms: int) -> list[Closed | None]:
        """Apply parts in order, in one round trip; each result is what that part emits (None: still open)."""
        if not parts:
            return []
        deadline = now_ms + self._timeout_ms
        deadlines: list[Command] = [("ZADD", DEADLINES, "NX", deadline, info["change_id"]) for info, _ in parts]
        deadlines.append(("EXPIRE", DEADLINES, self._ttl))  # emptied by the flushers; the TTL is a backstop
        calls: list[Call] = [
            (
                change_keys(info["change_id"]),
                [
                    part.tag,
                    part.event_id,
                    "1" if part.final else "0",
                    self._ttl,
                    orjson.dumps(info),
                    *part.users,
                ],
            )
            for info, part in parts
        ]
        return [
            _closed(reply[2], reply[3:], late=reply[0] == 1, complete=reply[1] == 1) if reply else None
            for reply in self._part.run(calls, also=deadlines)
        ]

    def due(self, now_ms: int, limit: int) -> list[str]:
        members: list[bytes] = self._client.zrangebyscore(DEADLINES, "-inf", now_ms, start=0, num=limit)  # type: ignore[assignment]
        return [m.decode() for m in members]

    def apply_timeouts(self, change_ids: Sequence[str], token: str, now_ms: int) -> list[Closed | TimeoutOutcome]:
        calls: list[Call] = [(change_keys(cid), [token, now_ms, self._lease_ms, self._ttl]) for cid in change_ids]
        out: list[Closed | TimeoutOutcome] = []
        for reply in self._timeout.run(calls):
            if reply[0] == b"emit":
                out.append(_closed(reply[1], reply[2:], late=False, complete=False))
            else:
                out.append(TimeoutOutcome(reply[0].decode()))
        return out

    def settle(self, closed_ids: Sequence[str], leases: Sequence[tuple[str, str]]) -> None:
        """After Kafka acknowledged a batch: confirm its timeout leases and drop its closed changes' deadlines."""
        if leases:
            confirms: list[Call] = [([change_keys(cid)[2]], [token]) for cid, token in leases]
            self._confirm.run(confirms)
        if closed_ids:
            self._client.zrem(DEADLINES, *closed_ids)

    def open_changes(self) -> int:
        return int(self._client.zcard(DEADLINES))


def _closed(info: bytes, flat: Sequence[bytes], *, late: bool, complete: bool) -> Closed:
    users = tuple((flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2))
    return Closed(orjson.loads(info), Emission(users, complete=complete, late=late))
