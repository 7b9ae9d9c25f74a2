"""Reassembly rules for multi-part `users.modified` changes, as pure functions over plain data.

A change is identified by (tenant, group id, lastUpdatedAt, deleted). Its parts may arrive in any order, on
any partition, at any worker, and may be replayed after a crash. The rules:

- Every part adds its users not seen before, in arrival order (`order`; the first part that names a user is
  the one that "carried" it).
- A change is closed once, by the first of: a part with `fullyProcessed: true` (the records say
  `complete: true`), or a timeout command (`complete: false`, see `worker/processing/control.py`).
- A closed change owes every user it collected, before and after its close. They come out in chunks of at most
  `chunk` users, in arrival order: the closing message emits the first chunk and, when more remain, says where
  the next one starts (`Emission.next_cursor`); the worker sends that as a continue command, whose message
  emits the next chunk, and so on: one chain per change. A new chunk always starts where the last one stopped
  (`next`), so chunks never overlap and every user is in exactly one. So no step holds more than one chunk,
  whatever the change's size, late parts included.
- A part arriving after the close (late) adds its new users at the end. If the chain had already reached the
  end, the late part restarts it with the chunk from there; otherwise the chain reaches them. Users that
  arrived after the close come out with `late: true` (a chunk never mixes them with earlier ones).
- The tag rule: every message is applied under its position (its tag: `topic:partition:offset` of a part or a
  command on the control topic), and the first application of a tag is the only one that changes anything.
  Applying the same tag again, at any later time and after any other writes, changes nothing and returns what
  its first application returned (the chunk it covered, or nothing): a replay after a crash (its output never
  reached Kafka, or was aborted with its transaction) emits the same records again; a zombie's late run of a
  position that another worker already committed emits nothing new and takes nothing from anyone else.
- A continue command whose cursor is not where the next chunk starts (a copy, or a command of a chain that
  another message already advanced) emits nothing; so does a timeout command for a closed change, and any
  command for a change no part was applied to.

Why each user is emitted exactly once: each user is in exactly one chunk, and a chunk belongs to one tag,
which emits it on every application; Kafka delivers every position until its transaction commits once, and
the chain (continue commands, restarted by late parts) reaches every chunk. See `docs/guarantees.md`.

`worker/state/lua/change.lua` implements exactly these rules inside Redis, atomically per change, and
`worker/processing/stores.py` holds them in memory; `tests/integration/state/test_changes_store.py` checks both
agree, and the worker-group model of `tests/support/change_model.py` (aborts, replays, copies, zombies) runs
on both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CHUNK_USERS = 2_000  # users per emission step: records held in memory per step, work per script call

# What the first application of a tag emitted: (start, stop, more) of its chunk of `order` (more: the chain
# goes on after it), or None for nothing.
Chunk = tuple[int, int, bool]


@dataclass
class ChangeState:
    users: dict[str, str] = field(default_factory=dict)  # user -> event id of the part that carried it
    order: list[str] = field(default_factory=list)  # users in arrival order: what the chunks index
    known: bool = False  # a part was applied: commands act on the change
    final_tag: str | None = None  # the part that closed it
    timeout_tag: str | None = None  # the timeout command that closed it
    late_from: int = 0  # users collected when it closed: the ones after arrived late
    next: int = 0  # where the next chunk starts
    applied: dict[str, Chunk | None] = field(default_factory=dict)  # tag -> what its first application emitted

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
    """Record a part; return what it emits: None while the change stays open (or the chain will reach its users)."""
    if part.tag in state.applied:
        return emission(state, part.tag)
    state.known = True
    collected = len(state.order)
    for user in part.users:
        if user not in state.users:
            state.users[user] = part.event_id
            state.order.append(user)
    if not state.closed and part.final:
        state.final_tag, state.late_from = part.tag, len(state.order)
        return _chunk(state, part.tag, chunk)
    if state.closed and state.next == collected < len(state.order):  # late users after the chain's end
        return _chunk(state, part.tag, chunk)
    return _nothing(state, part.tag)


def apply_timeout(state: ChangeState, tag: str, chunk: int = CHUNK_USERS) -> Emission | None:
    """Close an open change as timed out; None if it is closed already (by another message) or unknown."""
    if tag in state.applied:
        return emission(state, tag)
    if not state.known or state.closed:
        return _nothing(state, tag)
    state.timeout_tag, state.late_from = tag, len(state.order)
    return _chunk(state, tag, chunk)


def apply_continue(state: ChangeState, tag: str, cursor: int, chunk: int = CHUNK_USERS) -> Emission | None:
    """Emit the chunk starting at `cursor`; None for a copy or a stale cursor."""
    if tag in state.applied:
        return emission(state, tag)
    if not state.closed or cursor != state.next or cursor >= len(state.order):
        return _nothing(state, tag)
    return _chunk(state, tag, chunk)


def emission(state: ChangeState, tag: str) -> Emission | None:
    """What the tag's first application emitted, rebuilt from the state (which never changes what it covers)."""
    covered = state.applied[tag]
    if covered is None:
        return None
    start, stop, more = covered
    return Emission(
        tuple((user, state.users[user]) for user in state.order[start:stop]),
        complete=state.timeout_tag is None,
        late=start >= state.late_from and tag not in (state.final_tag, state.timeout_tag),
        next_cursor=stop if more else None,
    )


def _chunk(state: ChangeState, tag: str, size: int) -> Emission | None:
    """The next chunk, for `tag`: from `next`, at most `size` users, never across `late_from`."""
    start, end = state.next, len(state.order)
    stop = min(start + size, end if start >= state.late_from else state.late_from)
    state.next = stop
    state.applied[tag] = (start, stop, stop < end)
    return emission(state, tag)


def _nothing(state: ChangeState, tag: str) -> Emission | None:
    """The first application of `tag` emits nothing: so will every later one."""
    state.applied[tag] = None
    return None
