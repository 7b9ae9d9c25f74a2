"""Deduplication: claim each event id in Redis, for a whole batch in one round trip.

Keys: `gew:dedupe:<digest>`, one for an event's identity (tenantid, source, type, id) and, for a Qlik CloudEvent,
one for its content (`worker.processing.stores.content_id`: the same change under another id), each a string
holding the input position that claimed it, with a TTL of `WORKER_DEDUPE_TTL_SECONDS`. Type is part of both
because Qlik reuses ids across types. An event is first only where its position owns all of its keys.
A claim belongs to a position, so a message redelivered at the same position after a crash is processed
again, while a copy at any other position (another partition, another worker) is a duplicate.

Plain single-key commands, no script, one pipeline per batch: on Redis 7+ `SET key tag NX GET EX ttl` claims
and returns the owner of a key already taken in one command. Redis 6 does not allow NX with GET: there
`SET NX EX` runs first and only the keys it found taken are read back (`GET`, a second round trip in batches
with copies). A claim is never changed once set, so neither form needs a script; a key that expired between
the two steps is claimed again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from worker.processing.models import Event
from worker.processing.stores import dedupe_id, dedupe_ids
from worker.state.client import Client, Command, pipelined, server_version

ROUNDS = 3  # Redis 6: a claim found taken, then gone (expired between SET and GET), is tried again


KEY_PREFIX = "gew:dedupe:"


def dedupe_key(event: Event) -> str:
    """The key of an event's identity claim."""
    return KEY_PREFIX + dedupe_id(event)


class Deduper:
    """`worker.processing.stores.DedupeStore` in Redis. Single-key commands only: on a cluster the pipeline sends each
    claim to its key's node."""

    def __init__(self, client: Client, ttl_seconds: int, *, set_get: bool | None = None) -> None:
        """`set_get`: whether Redis takes `SET NX GET` (7.0+); None asks the server at the first claim."""
        self._client = client
        self._ttl = ttl_seconds
        self._set_get = set_get

    def claim(self, claims: Sequence[tuple[Event, str]]) -> list[bool]:
        """(event, position tag) -> True where this position owns every key of the event, False for a duplicate.
        Copies inside one batch: the first in batch order owns it. Raises RedisError on failure."""
        if not claims:
            return []
        spans: list[int] = []
        keys: list[str] = []
        tags: list[bytes] = []
        for event, tag in claims:
            ids = dedupe_ids(event)
            spans.append(len(ids))
            keys += [KEY_PREFIX + i for i in ids]
            tags += [tag.encode()] * len(ids)
        owned = iter(self._claim_keys(keys, tags))
        return [all([next(owned) for _ in range(span)]) for span in spans]

    def _claim_keys(self, keys: list[str], tags: list[bytes]) -> list[bool]:
        """Per key: whether its tag owns it (claimed now, or by the same tag before)."""
        if self._set_get is None:
            self._set_get = server_version(self._client) >= 7
        if self._set_get:
            commands = [("SET", key, tag, "NX", "GET", "EX", self._ttl) for key, tag in zip(keys, tags, strict=True)]
            return [
                owner is None or owner == tag for owner, tag in zip(_replies(self._client, commands), tags, strict=True)
            ]
        return self._claim_in_two_steps(keys, tags)

    def _claim_in_two_steps(self, keys: list[str], tags: list[bytes]) -> list[bool]:
        owned = [False] * len(keys)
        pending: Sequence[int] = range(len(keys))
        for _ in range(ROUNDS):
            claims = [("SET", keys[i], tags[i], "NX", "EX", self._ttl) for i in pending]
            taken: list[int] = []
            for i, created in zip(pending, _replies(self._client, claims), strict=True):
                owned[i] = bool(created)
                if not created:
                    taken.append(i)
            if not taken:
                return owned
            pending = []
            for i, owner in zip(taken, _replies(self._client, [("GET", keys[i]) for i in taken]), strict=True):
                if owner is None:
                    pending.append(i)
                else:
                    owned[i] = owner == tags[i]
            if not pending:
                return owned
        raise redis.RedisError(f"dedupe: {len(pending)} claims kept expiring between SET NX and GET")


def _replies(client: Client, commands: Sequence[Command]) -> list[Any]:
    """Raw replies of one pipelined round trip; the first error reply raises (a claim must not be guessed)."""
    replies = pipelined(client, commands)
    for reply in replies:
        if isinstance(reply, redis.RedisError):
            raise reply
    return replies
