"""Redis memory per dedupe claim, per user of an open change, per open change, per emission's recency verdict,
per group's newest occurrence and per group creation or deletion's tenant count, measured on a private
redis-server through the worker's own stores (the README's Redis sizing, and a bound the integration tests keep).

    python -m bench.redis_memory [--claims N] [--users N] [--changes N] [--emissions N]

prints one JSON line. Ids have production's sizes: Qlik user ids of 32 characters, event ids of 36 (UUIDs),
input positions like `qlik.group-events:7:123456789`; claims carry the default 24-hour TTL.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis

from worker.local.stack import start_redis
from worker.processing.decode import decode
from worker.processing.models import Event
from worker.processing.reassembly import Part
from worker.processing.recency import Emitted, Occurrence
from worker.processing.records import ChangeInfo
from worker.processing.tenants import GroupCount
from worker.state.changes import RedisChangeStore
from worker.state.client import Client, connect, memory
from worker.state.dedupe import Deduper
from worker.state.recency import RedisRecency
from worker.state.tenants import TenantGroups

TTL_S = 86_400
TOPIC = "qlik.group-events"
PART_USERS = 1_000


@dataclass(frozen=True)
class Sizes:
    claim: float  # bytes per dedupe claim (`gew:dedupe:*` with its TTL)
    user: float  # bytes per user of an open change (users hash, order list, in parts of PART_USERS)
    change: float  # bytes per open change besides its users (meta, applied field of its part, deadline)
    verdict: float  # bytes per emission's recency verdict (`gew:group:{*}:verdict:<tag>`, replay window)
    group: float  # bytes per group's newest occurrence (`gew:group:{*}:newest`, 30 days after its last event)
    applied: float  # bytes per group creation or deletion's tenant count (`gew:tenant:{*}:applied:<tag>`)


def position(i: int) -> str:
    return f"{TOPIC}:{i % 8}:{100_000_000 + i}"


def user_id(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()[:32]


def event(i: int) -> Event:
    """A distinct group.created event (the dedupe key reads its tenant, source, type and id)."""
    data = {
        "id": "g" * 24,
        "name": "Development",
        "status": "active",
        "tenantId": "t" * 32,
        "createdAt": "2024-01-01T00:00:00Z",
        "lastUpdatedAt": "2024-01-01T00:00:00Z",
    }
    attributes = {
        "specversion": "1.0",
        "id": str(uuid.UUID(int=i)),
        "source": "com.qlik/identities",
        "tenantid": "t" * 32,
    }
    decoded = decode(orjson.dumps({**attributes, "type": "com.qlik.v1.group.created", "data": data}), None)
    assert isinstance(decoded, Event)
    return decoded


def info(change_id: str) -> ChangeInfo:
    return {
        "change_id": change_id,
        "tenant_id": "t" * 32,
        "group_id": "g" * 24,
        "group_name": "Development",
        "change": "group_updated",
        "updates": [],
        "occurred_at": "2024-01-01T00:00:00.000Z",
    }


def used(client: Client) -> int:
    return sum(node.used for node in memory(client))


def measure(
    client: Client, claims: int = 100_000, users: int = 100_000, changes: int = 10_000, emissions: int = 100_000
) -> Sizes:
    """On an empty database of `client`."""
    deduper = Deduper(client, TTL_S)
    start = used(client)
    for first in range(0, claims, 1_000):
        deduper.claim([(event(i), position(i)) for i in range(first, min(claims, first + 1_000))])
    after_claims = used(client)
    store = RedisChangeStore(client, timeout_ms=900_000, ttl_seconds=TTL_S, resend_ms=60_000)
    for first in range(0, users, PART_USERS):
        part = Part(
            position(first),
            str(uuid.UUID(int=first)),
            tuple(user_id(i) for i in range(first, first + PART_USERS)),
            False,
        )
        store.apply_parts([(info("big"), part)], 0)
    after_users = used(client)
    for first in range(0, changes, 100):
        batch = [
            (info(f"change-{i}"), Part(position(i), str(uuid.UUID(int=i)), (user_id(i),), False))
            for i in range(first, first + 100)
        ]
        store.apply_parts(batch, 0)
    after_changes = used(client)
    per_user = (after_users - after_claims) / users
    recency = RedisRecency(client, step_ttl_seconds=TTL_S)
    tenant = "t" * 32
    for first in range(0, emissions, 1_000):  # one group: its newest, and a verdict per emission
        steps = [Emitted((tenant, "g" * 24), position(i), Occurrence(i, False)) for i in range(first, first + 1_000)]
        recency.apply(steps)
    after_verdicts = used(client)
    for first in range(0, emissions, 1_000):  # a group each: its newest and one verdict
        steps = [Emitted((tenant, f"{i:024d}"), position(i), Occurrence(i, False)) for i in range(first, first + 1_000)]
        recency.apply(steps)
    after_groups = used(client)
    tenants = TenantGroups(client, applied_ttl_seconds=TTL_S)
    for first in range(0, emissions, 1_000):  # one group created and deleted in turn: the set stays at most 1
        tenants.apply([GroupCount(tenant, "g", i % 2 == 0, "e", position(i)) for i in range(first, first + 1_000)])
    after_applied = used(client)
    per_verdict = (after_verdicts - after_changes) / emissions
    return Sizes(
        claim=(after_claims - start) / claims,
        user=per_user,
        change=(after_changes - after_users) / changes - per_user,
        verdict=per_verdict,
        group=(after_groups - after_verdicts) / emissions - per_verdict,
        applied=(after_applied - after_groups) / emissions,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--claims", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--changes", type=int, default=20_000)
    parser.add_argument("--emissions", type=int, default=200_000)
    args = parser.parse_args(argv)
    server = start_redis(Path(tempfile.mkdtemp(prefix="gew-redis-memory-")))
    try:
        client = connect(server.address)
        assert isinstance(client, redis.Redis)
        version = client.info("server")["redis_version"]
        sizes = measure(client, args.claims, args.users, args.changes, args.emissions)
    finally:
        server.stop()
    print(orjson.dumps({"redis": version, **sizes.__dict__}).decode())


if __name__ == "__main__":
    main()
