"""Which records come out older than what their group already showed: the `superseded` flag, as pure rules.

Qlik does not promise delivery order, its retries and resends deliver old events late (resends up to 7 days),
and a captured signed request replayed after the dedupe window is processed again. A consumer that applies
records in arrival order would take an old `group.updated` after the `group.deleted`, or a replayed `created`,
as new, and bring a deleted group or a removed role back. So, per group (tenant id, group id):

- An *emission* is what one message (its position tag) writes for one group: the group record of a created,
  updated or deleted event, or the membership records a `users.modified` part, a timeout or a continue
  command emits for a change.
- Its *occurrence* is (time, deletion). The time of a group event is its CloudEvents `time` (UMS: the
  wrapper's `occurredAt`), else its `data.lastUpdatedAt`; a change's is the latest time of the parts it has seen
  so far (every part records its time, whether it emits or not; before any, the change's `lastUpdatedAt`).
  Deletions are `group.deleted`, a `users.modified` change with `deleted: true`, a UMS deletion; a deletion wins
  a tie: an update with the same time is older.
- The group remembers the newest occurrence it has emitted. An emission older than that is *superseded*: its
  records still come out, marked `superseded: true` (so arrival-order readers can skip them), and the newest
  stays. Any other emission becomes the newest (or equals it) and is not superseded.
- The verdict of each emission is remembered under its tag: applying a tagged step again, at any later time
  and after any other steps, has the same effect and result as its first application (a retried batch, a
  replayed position, a zombie re-running an old position after newer events all get the verdict that tag got).
  Recording a part's time keeps the latest one, which is the same when applied again.

`worker/state/lua/recency.lua` applies these steps atomically in Redis per group, `worker/processing/stores.py`
in memory, and tests/integration/state/test_recency_store.py checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple

from worker.processing.models import GROUP_DELETED, Event, Group, UsersModified
from worker.processing.ums import UmsEnvelope

# Times count microseconds from year 1, so every valid timestamp is a non-negative integer of at most 18 digits:
# Redis compares them as fixed-width strings (`time_text`), exactly, without Lua's floating-point numbers.
_ORIGIN: Final = datetime(1, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
TIME_DIGITS: Final = 18

GroupKey = tuple[str, str]  # (tenant id, group id)


class Occurrence(NamedTuple):
    """Ordered as a tuple: by time, then a deletion after anything else at the same time."""

    time: int  # microseconds since 0001-01-01 UTC
    deleted: bool


def micros(moment: datetime) -> int:
    return (moment - _ORIGIN) // _MICROSECOND


def time_text(time: int) -> str:
    return f"{time:0{TIME_DIGITS}d}"


def group_key(event: Event) -> GroupKey:
    data = event.data
    return data.tenant_id, data.id if isinstance(data, Group) else data.group_id


def occurrence(event: Event) -> Occurrence:
    """The occurrence of a group event, or of one `users.modified` part."""
    envelope, data = event.envelope, event.data
    if isinstance(envelope, UmsEnvelope):
        return Occurrence(micros(envelope.occurred_at), envelope.data.change == "deleted")
    assert isinstance(data, Group)  # a CloudEvents envelope comes with a CloudEvents data model
    moment = envelope.time or data.last_updated_at
    deleted = envelope.type == GROUP_DELETED or (isinstance(data, UsersModified) and data.deleted)
    return Occurrence(micros(moment), deleted)


@dataclass(frozen=True, slots=True)
class Seen:
    """A `users.modified` part of change `change_id` at `time`: the change's time is at least that now."""

    group: GroupKey
    change_id: str
    time: int


@dataclass(frozen=True, slots=True)
class Emitted:
    """Records of `group` emitted by the message `tag`, at `occurrence`; for a change's membership records
    (`change_id`), the change's latest part time replaces `occurrence.time` (which is its `lastUpdatedAt`)."""

    group: GroupKey
    tag: str
    occurrence: Occurrence
    change_id: str | None = None


Step = Seen | Emitted


@dataclass
class GroupState:
    newest: Occurrence | None = None
    verdicts: dict[str, bool] = field(default_factory=dict)  # tag -> superseded
    change_times: dict[str, int] = field(default_factory=dict)  # change id -> latest part time


def apply(state: GroupState, step: Step) -> bool:
    """Apply one step to its group's state; whether it is superseded (a `Seen` never is)."""
    if isinstance(step, Seen):
        state.change_times[step.change_id] = max(step.time, state.change_times.get(step.change_id, step.time))
        return False
    if step.tag in state.verdicts:
        return state.verdicts[step.tag]
    emitted = step.occurrence
    if step.change_id is not None and step.change_id in state.change_times:
        emitted = Occurrence(state.change_times[step.change_id], emitted.deleted)
    superseded = state.newest is not None and emitted < state.newest
    if not superseded:
        state.newest = emitted
    state.verdicts[step.tag] = superseded
    return superseded
