"""Deduplication: claim each event id in Redis, once per batch in one round trip.

Key: `gew:dedupe:<digest(tenantid, source, type, id)>`, a string holding the input position that claimed it,
with a TTL of `WORKER_DEDUPE_TTL_SECONDS`. Type is part of the key because Qlik reuses ids across types.
A claim belongs to a position, so a message redelivered at the same position after a crash is processed
again, while a copy at any other position (another partition, another worker) is a duplicate.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from worker.models import Event
from worker.records import digest
from worker.redis_scripts import Call, LuaScript


def dedupe_key(event: Event) -> str:
    e = event.envelope
    return "gew:dedupe:" + digest(event.data.tenant_id, e.source, e.type, e.id)


class Deduper:
    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self._script = LuaScript(client, "dedupe")
        self._ttl = ttl_seconds

    def claim(self, claims: Sequence[tuple[Event, str]]) -> list[bool]:
        """(event, position tag) -> True where this position owns the event, False for a duplicate."""
        calls: list[Call] = [([dedupe_key(event)], [tag, self._ttl]) for event, tag in claims]
        return [result == 1 for result in self._script.run(calls)]
