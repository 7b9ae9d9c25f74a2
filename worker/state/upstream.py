"""Redis state of the upstream jobs (backfill, watch) and of the ingest's per-tenant liveness, each key layout
defined here once.

- `gew:ingest:last_accepted`: sorted set, tenant id -> the time (ms) of the last event the ingest accepted for
  it. Written by every ingest replica with `ZADD GT` (only ever moves forward, whichever replica writes last),
  read by the watch: where events stopped coming, so where a gap starts. One key: tenants are few (bounded by
  the ingest, `worker/ingest/accepted.py`), and one `ZRANGE` reads them all.
- `gew:backfill:{<tenant>}:<since ms>`: hash `through` (ms: every event before it was produced and acknowledged),
  `until` (ms, the last run's end). What makes a backfill resumable: the same tenant and `--since` continue from
  `through`. TTL 30 days.
- `gew:watch:{<tenant>}`: hash of the watch's per-tenant state (`worker.upstream.gaps.WatchState`), and
  `gew:watch:{<tenant>}:resent`: set of the delivery ids the watch resent (TTL 8 days: Qlik keeps deliveries 7),
  so one failed delivery is resent once. The two keys of a tenant share a hash tag.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, cast

from worker.state.client import Client

LAST_ACCEPTED: Final = "gew:ingest:last_accepted"
BACKFILL_TTL_SECONDS: Final = 30 * 86_400
RESENT_TTL_SECONDS: Final = 8 * 86_400


def backfill_key(tenant_id: str, since_ms: int) -> str:
    return "gew:backfill:{" + tenant_id + "}:" + str(since_ms)


def watch_key(tenant_id: str) -> str:
    return "gew:watch:{" + tenant_id + "}"


def record_accepted(client: Client, times: Mapping[str, int]) -> None:
    """Move each tenant's last accepted time forward (never back), in one command."""
    if times:
        client.zadd(LAST_ACCEPTED, dict(times), gt=True)


def last_accepted(client: Client, tenant_id: str) -> int | None:
    score = client.zscore(LAST_ACCEPTED, tenant_id)
    return None if score is None else int(score)


class Checkpoints:
    """Where a backfill of one tenant from one `--since` got to."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def through(self, tenant_id: str, since_ms: int) -> int | None:
        value = self._client.hget(backfill_key(tenant_id, since_ms), "through")
        return None if value is None else int(value)

    def save(self, tenant_id: str, since_ms: int, through_ms: int, until_ms: int) -> None:
        key = backfill_key(tenant_id, since_ms)
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(key, mapping={"through": through_ms, "until": until_ms})
        pipe.expire(key, BACKFILL_TTL_SECONDS)
        pipe.execute()

    def clear(self, tenant_id: str, since_ms: int) -> None:
        self._client.delete(backfill_key(tenant_id, since_ms))


class WatchStore:
    """The watch's state per tenant: a flat hash of optional integers, and the resent delivery ids."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def load(self, tenant_id: str) -> tuple[dict[str, int], frozenset[str]]:
        key = watch_key(tenant_id)
        fields = self._client.hgetall(key)
        resent = self._client.smembers(key + ":resent")
        return {_text(k): int(v) for k, v in fields.items()}, frozenset(_text(m) for m in resent)

    def save(self, tenant_id: str, fields: Mapping[str, int | None], resent: set[str]) -> None:
        key = watch_key(tenant_id)
        pipe = self._client.pipeline(transaction=False)
        pipe.delete(key)
        if present := {k: v for k, v in fields.items() if v is not None}:
            pipe.hset(key, mapping=cast(Any, present))
        if resent:
            pipe.sadd(key + ":resent", *sorted(resent))
            pipe.expire(key + ":resent", RESENT_TTL_SECONDS)
        pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
