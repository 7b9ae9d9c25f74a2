"""Reassembly rules for multi-part `users.modified` changes, as pure functions over plain data.

A change is identified by (tenant, group id, lastUpdatedAt, deleted). Its parts may arrive in any order, on
any partition, at any worker, and may be replayed after a crash. The rules:

- Every part adds its users, in arrival order (the first part that names a user is the one that "carried" it).
- A change is closed once, by the first of: a part with `fullyProcessed: true` (the records say
  `complete: true`), or a timeout command (`complete: false`, see `worker/processing/control.py`). Closing fixes the
  users it owes: every user collected so far.
- A close emits those users in chunks of at most `chunk` users, in arrival order: the closing message emits
  the first chunk and, when more remain, says where the next one starts (`Emission.next_cursor`); the worker
  sends that as a continue command, and the command's message emits the next chunk, and so on. So no step
  holds more than one chunk, whatever the change's size.
- A part arriving after the close emits only its own users not emitted yet (`late: true`).
- Each emission is tagged with the position of the message that made it (a part, or a command on the control
  topic). A user marked by tag T counts as not yet emitted when T runs again, and a closing or continue tag
  remembers the range of users it covered, so a replay after a crash (the output of the first run never
  reached Kafka, or was aborted with its transaction) emits the same records again, and nothing else ever
  emits that user twice. A continue command whose cursor is not where the next chunk starts (a copy, or a
  command of a chain that another message already advanced) emits nothing; so does a timeout command for a
  closed change.

`worker/state/lua/change.lua` implements exactly these rules inside Redis, atomically per change, and
`worker/processing/stores.py` holds them in memory; `tests/integration/state/test_changes_store.py` checks both agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

CHUNK_USERS = 2_000  # users per emission step: records held in memory per step, work per script call


@dataclass
class ChangeState:
    users: dict[str, str] = field(default_factory=dict)  # user -> event id of the part that carried it
    order: list[str] = field(default_factory=list)  # users in arrival order: what the chunks index
    emitted: dict[str, str] = field(default_factory=dict)  # user -> tag of the emission that claimed it
    final_tag: str | None = None  # the part that closed it
    timeout_tag: str | None = None  # the timeout command that closed it
    end: int = 0  # users the close owes: order[:end]
    next: int = 0  # where the next chunk starts
    chunks: dict[str, tuple[int, int]] = field(default_factory=dict)  # tag -> (start, stop) it emitted

    @property
    def closed(self) -> bool:
        return self.final_tag is not None or self.timeout_tag is not None


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
    next_cursor: int | None = None  # where the next chunk starts, if users remain


def apply_part(state: ChangeState, part: Part, chunk: int = CHUNK_USERS) -> Emission | None:
    """Record a part; return what it emits, or None while the change stays open."""
    for user in part.users:
        if user not in state.users:
            state.users[user] = part.event_id
            state.order.append(user)
    if part.final and not state.closed:
        state.final_tag = part.tag
        _close(state)
    if part.tag in state.chunks or state.final_tag == part.tag:
        return _chunk(state, part.tag, state.next, chunk)
    if not state.closed:
        return None
    users = _claim(state, part.users, part.tag)
    return Emission(users, complete=state.timeout_tag is None, late=True)


def apply_timeout(state: ChangeState, tag: str, chunk: int = CHUNK_USERS) -> Emission | None:
    """Close an open change as timed out; None if it was closed already (by another message)."""
    if not state.closed:
        state.timeout_tag = tag
        _close(state)
    elif tag not in state.chunks:
        return None
    return _chunk(state, tag, state.next, chunk)


def apply_continue(state: ChangeState, tag: str, cursor: int, chunk: int = CHUNK_USERS) -> Emission | None:
    """Emit the chunk starting at `cursor`; None for a copy or a stale cursor."""
    if tag not in state.chunks and (not state.closed or cursor != state.next or cursor >= state.end):
        return None
    return _chunk(state, tag, cursor, chunk)


def _close(state: ChangeState) -> None:
    state.end, state.next = len(state.order), 0


def _chunk(state: ChangeState, tag: str, start: int, chunk: int) -> Emission:
    """The chunk of `tag`: the range it covered before (a replay), else `chunk` users from `start`."""
    start, stop = state.chunks.setdefault(tag, (start, min(start + chunk, state.end)))
    state.next = max(state.next, stop)
    users = _claim(state, state.order[start:stop], tag)
    return Emission(
        users, complete=state.timeout_tag is None, late=False, next_cursor=stop if stop < state.end else None
    )


def _claim(state: ChangeState, candidates: Iterable[str], tag: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for user in candidates:
        if user in seen:
            continue
        seen.add(user)
        owner = state.emitted.get(user)
        if owner is None or owner == tag:
            state.emitted[user] = tag
            out.append((user, state.users[user]))
    return tuple(out)
