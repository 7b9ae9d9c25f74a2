"""Reassembly rules for multi-part `users.modified` changes, as pure functions over plain data.

A change is identified by (tenant, group id, lastUpdatedAt, deleted). Its parts may arrive in any order, on
any partition, at any worker, and may be replayed after a crash. The rules:

- Every part adds its users (the first part that names a user is the one that "carried" it).
- The first part with `fullyProcessed: true` closes the change and emits every user collected so far
  (`complete: true`). A part arriving after that emits only its users not emitted yet (`late: true`).
- A change still open after the batch timeout is closed by a timeout flush: every collected user not emitted
  yet is emitted with `complete: false`; later parts are then late and incomplete.
- Each emission is tagged: a part by its input position, a timeout flush by its lease token. A user marked
  by tag T counts as not yet emitted when T runs again, so a replay after a crash (the output of the first
  run never reached Kafka, or was aborted with its transaction) emits the same records again, and nothing
  else ever emits that user twice.
- A timeout flush holds a lease until it confirms (after Kafka acknowledged its output). If the flusher dies,
  the next flusher takes the lease over and re-emits the users marked by the dead one.

`worker/lua/part.lua` and `worker/lua/timeout.lua` implement exactly these rules inside Redis, atomically
per change; `tests/integration/test_changes_store.py` checks both agree on every arrival order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum


@dataclass
class ChangeState:
    users: dict[str, str] = field(default_factory=dict)  # user -> event id of the part that carried it
    emitted: dict[str, str] = field(default_factory=dict)  # user -> tag of the emission that claimed it
    final_tag: str | None = None
    timed_out: bool = False
    lease: str | None = None  # token of an unconfirmed timeout flush
    lease_until_ms: int = 0


@dataclass(frozen=True, slots=True)
class Part:
    tag: str  # input position "topic:partition:offset"
    event_id: str
    users: tuple[str, ...]
    final: bool


@dataclass(frozen=True, slots=True)
class Emission:
    users: tuple[tuple[str, str], ...]  # (user, event id of the part that carried it)
    complete: bool
    late: bool


class TimeoutOutcome(Enum):
    DONE = "done"  # closed already (final part seen, or a confirmed timeout): drop it from the deadlines
    BUSY = "busy"  # another worker holds a live lease on it


def apply_part(state: ChangeState, part: Part) -> Emission | None:
    """Record a part; return what it emits, or None while the change stays open."""
    for user in part.users:
        state.users.setdefault(user, part.event_id)
    if part.final and state.final_tag is None and not state.timed_out:
        state.final_tag = part.tag
    if state.final_tag == part.tag:
        candidates: Iterable[str] = sorted(state.users)
        late, complete = False, True
    elif state.final_tag is not None or state.timed_out:
        candidates = part.users
        late, complete = True, not state.timed_out
    else:
        return None
    return Emission(_claim(state, candidates, part.tag, {part.tag}), complete=complete, late=late)


def apply_timeout(state: ChangeState, token: str, now_ms: int, lease_ms: int) -> Emission | TimeoutOutcome:
    """Close an expired open change under a lease, or say why not."""
    if state.final_tag is not None or (state.timed_out and state.lease is None):
        return TimeoutOutcome.DONE
    if state.lease not in (None, token) and state.lease_until_ms > now_ms:
        return TimeoutOutcome.BUSY
    reclaimable = {token} if state.lease is None else {token, state.lease}
    state.timed_out, state.lease, state.lease_until_ms = True, token, now_ms + lease_ms
    return Emission(_claim(state, sorted(state.users), token, reclaimable), complete=False, late=False)


def confirm_timeout(state: ChangeState, token: str) -> None:
    """The flush's output is durable in Kafka: the change is closed for good."""
    if state.lease == token:
        state.lease, state.lease_until_ms = None, 0


def _claim(
    state: ChangeState, candidates: Iterable[str], tag: str, reclaimable: set[str]
) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for user in candidates:
        if user in seen:
            continue
        seen.add(user)
        owner = state.emitted.get(user)
        if owner is None or owner in reclaimable:
            state.emitted[user] = tag
            out.append((user, state.users[user]))
    return tuple(out)
