"""The processor's state, behind four small interfaces, and their in-memory implementations.

- `DedupeStore`: who claimed each event first (Redis: `worker/state/dedupe.py`).
- `ChangeStore`: the open `users.modified` changes, their deadlines and chunked closes (Redis:
  `worker/state/changes.py`).
- `TenantGroupStore`: each tenant's live group ids (Redis: `worker/state/tenants.py`).
- `RecencyStore`: each group's newest emitted occurrence, and which emissions are superseded (Redis:
  `worker/state/recency.py`).

The in-memory ones apply the same pure rules (`worker/processing/reassembly.py`, `recency.py`) to dicts.
`python -m worker validate`, the demo's expected counts and the unit tests run the real `Processor` on them;
the integration tests check that the Redis stores give the same answers
(`tests/integration/state/test_changes_store.py`, `test_dedupe_store.py`).
Every method may raise `redis.RedisError` in the Redis implementations; the in-memory ones never fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from worker.processing.control import Command
from worker.processing.models import DATA_MODELS, GROUP_UPDATED, USERS_MODIFIED, Event, Group, UsersModified, rfc3339
from worker.processing.reassembly import (
    CHUNK_USERS,
    ChangeState,
    Emission,
    Part,
    apply_continue,
    apply_part,
    apply_timeout,
)
from worker.processing.recency import GroupKey, GroupState, Step
from worker.processing.recency import apply as apply_step
from worker.processing.records import ChangeInfo, digest
from worker.processing.tenants import GroupCount


def dedupe_id(event: Event) -> str:
    """An event's identity: a digest of (tenant, source, type, id). Type is part of it because Qlik reuses ids
    across types."""
    e = event.envelope
    return digest(event.data.tenant_id, e.source, e.type, e.id)


def content_id(event: Event) -> str | None:
    """A Qlik CloudEvent's content, for the same change under another id (a backfill from the Audits API, whose
    items may not carry the delivered event's id; a reconciliation's correction): a digest of tenant, group and
    type; for an update also `lastUpdatedAt` (a group is created and deleted once, updated many times); for a
    `users.modified` part also its `deleted`, `fullyProcessed` and users (the parts of one change share the rest).
    The source is not part of it: the same change may come from another service. UMS webhooks: None."""
    kind = event.envelope.type
    if kind not in DATA_MODELS:  # a UMS webhook
        return None
    # Told by the type, not by isinstance: pydantic's instance check costs a µs each on the hot path.
    data = cast(Group, event.data)
    if kind == GROUP_UPDATED:
        return digest("content", data.tenant_id, data.id, kind, rfc3339(data.last_updated_at))
    if kind == USERS_MODIFIED:
        part = cast(UsersModified, data)
        flags = f"{part.deleted}:{part.fully_processed}"
        return digest("content", part.tenant_id, part.id, kind, rfc3339(part.last_updated_at), flags,
                      *part.affected_users)  # fmt: skip
    return digest("content", data.tenant_id, data.id, kind)


def dedupe_ids(event: Event) -> list[str]:
    """What a `DedupeStore` claims for an event: its identity, and its content where it has one. An event is a
    duplicate when another position claimed either."""
    content = content_id(event)
    return [dedupe_id(event)] if content is None else [dedupe_id(event), content]


@dataclass(frozen=True, slots=True)
class Closed:
    """An emission with the record fields stored for its change."""

    info: ChangeInfo
    emission: Emission


class DedupeStore(Protocol):
    def claim(self, claims: Sequence[tuple[Event, str]]) -> list[bool]:
        """(event, position tag) -> True where this position owns every id of the event (`dedupe_ids`), False
        for a duplicate. Copies inside one batch: the first in batch order owns it."""
        ...


class ChangeStore(Protocol):
    def apply_parts(self, parts: Sequence[tuple[ChangeInfo, Part]], now_ms: int) -> list[Closed | None]:
        """Apply parts in order (each change gets a deadline `now_ms` + the batch timeout the first time);
        each result is what that part emits (None: nothing)."""
        ...

    def apply_commands(self, commands: Sequence[tuple[Command, str]]) -> list[Closed | None]:
        """Carry out control commands (command, its position tag) in order; each result is what it emits."""
        ...

    def due(self, now_ms: int, limit: int) -> list[str]:
        """Up to `limit` changes whose deadline passed, oldest first; their deadlines move ahead by the resend
        interval, so the next scan takes other ones."""
        ...

    def settle(self, closed_ids: Sequence[str]) -> None:
        """After Kafka confirmed their close: these changes need no timeout command any more."""
        ...

    def open_changes(self) -> int:
        """Changes with a deadline (waiting for their final part or their timeout), cluster-wide."""
        ...


class TenantGroupStore(Protocol):
    def apply(self, changes: Sequence[GroupCount]) -> list[int]:
        """Apply group creations and deletions in order: each one's tenant's count of live groups right after."""
        ...


class RecencyStore(Protocol):
    def apply(self, steps: Sequence[Step]) -> list[bool]:
        """Apply the steps in order (per group; groups are independent): each one's verdict, True for a
        superseded emission (always False for a `Seen`). A tagged step applied again gets its first verdict."""
        ...


@dataclass
class MemoryDedupe:
    owners: dict[str, str] = field(default_factory=dict)  # dedupe key -> position tag that claimed it

    def claim(self, claims: Sequence[tuple[Event, str]]) -> list[bool]:
        return [all([self.owners.setdefault(key, tag) == tag for key in dedupe_ids(event)]) for event, tag in claims]

    def owner(self, event: Event) -> str | None:
        return self.owners.get(dedupe_id(event))


@dataclass
class MemoryChange:
    info: ChangeInfo | None = None  # of its first part, as the Redis store keeps it (None: no part yet)
    state: ChangeState = field(default_factory=ChangeState)


@dataclass
class MemoryChangeStore:
    timeout_ms: int
    resend_ms: int
    chunk: int = CHUNK_USERS
    changes: dict[str, MemoryChange] = field(default_factory=dict)
    deadlines: dict[str, int] = field(default_factory=dict)

    def apply_parts(self, parts: Sequence[tuple[ChangeInfo, Part]], now_ms: int) -> list[Closed | None]:
        out: list[Closed | None] = []
        for info, part in parts:
            self.deadlines.setdefault(info["change_id"], now_ms + self.timeout_ms)
            change = self.changes.setdefault(info["change_id"], MemoryChange())
            if change.info is None:
                change.info = info
            out.append(_closed(change, apply_part(change.state, part, self.chunk)))
        return out

    def apply_commands(self, commands: Sequence[tuple[Command, str]]) -> list[Closed | None]:
        out: list[Closed | None] = []
        for command, tag in commands:
            change = self.changes.setdefault(command.change_id, MemoryChange())  # an unknown one records the tag
            if command.cursor is None:
                out.append(_closed(change, apply_timeout(change.state, tag, self.chunk)))
            else:
                out.append(_closed(change, apply_continue(change.state, tag, command.cursor, self.chunk)))
        return out

    def due(self, now_ms: int, limit: int) -> list[str]:
        due = sorted((d, cid) for cid, d in self.deadlines.items() if d <= now_ms)[:limit]
        for _, change_id in due:
            self.deadlines[change_id] = now_ms + self.resend_ms
        return [change_id for _, change_id in due]

    def settle(self, closed_ids: Sequence[str]) -> None:
        for change_id in closed_ids:
            self.deadlines.pop(change_id, None)

    def open_changes(self) -> int:
        return len(self.deadlines)


@dataclass
class MemoryTenantGroups:
    groups: dict[str, set[str]] = field(default_factory=dict)  # tenant -> live group ids
    applied: dict[tuple[str, str], int] = field(default_factory=dict)  # (tenant, tag) -> the size it gave

    def apply(self, changes: Sequence[GroupCount]) -> list[int]:
        sizes = []
        for change in changes:
            key = change.tenant_id, change.tag
            if key not in self.applied:
                live = self.groups.setdefault(change.tenant_id, set())
                if change.created:
                    live.add(change.group_id)
                else:
                    live.discard(change.group_id)
                self.applied[key] = len(live)
            sizes.append(self.applied[key])
        return sizes


@dataclass
class MemoryRecency:
    groups: dict[GroupKey, GroupState] = field(default_factory=dict)

    def apply(self, steps: Sequence[Step]) -> list[bool]:
        return [apply_step(self.groups.setdefault(step.group, GroupState()), step) for step in steps]


def _closed(change: MemoryChange, emission: Emission | None) -> Closed | None:
    if emission is None:
        return None
    assert change.info is not None  # only a change a part was applied to emits
    return Closed(change.info, emission)
