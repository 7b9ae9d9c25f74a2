"""A model of the worker group around one `users.modified` change, for property tests of any `ChangeStore`
(the in-memory one in the unit tests, the Lua scripts on a real Redis in the integration tests).

What Kafka and the workers may do to the change's messages, in any order:
- `part`: a part is processed at its input position; its transaction commits or aborts;
- `copy`: a copy of a part, read at another input position;
- `timeout`: a scan's timeout command, at a new control position;
- `continue`: a continue command that a committed transaction sent is delivered;
- `replay`: an aborted position is processed again (Redis kept what its first run wrote);
- `zombie`: a worker that lost its partitions (frozen past its session timeout, still reaching Redis) runs a
  position that another member already committed; its output is fenced (discarded).
At the end every aborted position commits, every command sent is delivered, and a last timeout command
closes the change if nothing did. Then each user of the change must have been committed exactly once, and
every emission must be at most one chunk."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from hypothesis import strategies as st

from worker.processing.control import Command
from worker.processing.reassembly import Part
from worker.processing.records import ChangeInfo
from worker.processing.stores import ChangeStore, Closed

USERS = ("ann", "bob", "cat", "dan", "eve", "fay")
KINDS = ("part", "copy", "timeout", "continue", "replay", "zombie")
Message = Part | int | None  # a part, a continue command's cursor, or a timeout command

# Arguments of `play`, drawn by hypothesis.
CHUNKS = st.integers(1, 3)
PARTS_USERS = st.lists(st.lists(st.sampled_from(USERS), max_size=4), min_size=3, max_size=3)
FINALS = st.sampled_from([None, 0, 1, 2])
STEPS = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 9), st.booleans()), max_size=25)


def change_info(change_id: str) -> ChangeInfo:
    return {
        "change_id": change_id,
        "tenant_id": "t",
        "group_id": "g",
        "group_name": "G",
        "change": "group_updated",
        "updates": [],
        "occurred_at": "2024-01-01T00:00:00.000Z",
    }


@dataclass
class Group:
    store: ChangeStore
    change_id: str
    chunk: int
    committed: list[tuple[str, str, bool]] = field(default_factory=list)  # (user, tag, late) in committed outputs
    aborted: dict[str, Message] = field(default_factory=dict)  # tag -> message to process again
    done: dict[str, Message] = field(default_factory=dict)  # committed positions: Kafka never delivers them again
    inbox: list[int] = field(default_factory=list)  # continue cursors sent by committed outputs
    delivered: set[str] = field(default_factory=set)  # users of the parts processed
    applied: set[str] = field(default_factory=set)  # positions processed at least once
    known: bool = False  # a part was processed
    closed: bool = False  # a final part, or a timeout command after a part, was processed (its first run)
    positions: itertools.count[int] = field(default_factory=itertools.count)

    def run(self, tag: str, message: Message, commit: bool) -> None:
        """Kafka delivers `message` at `tag` to its partition's owner, unless that position committed already."""
        if tag in self.done:
            return
        result = self._apply(tag, message)
        if not commit:
            self.aborted[tag] = message
            return
        self.aborted.pop(tag, None)
        self.done[tag] = message
        if result is not None:
            self.committed += [(user, tag, result.emission.late) for user, _ in result.emission.users]
            if result.emission.next_cursor is not None:
                self.inbox.append(result.emission.next_cursor)

    def zombie(self, index: int) -> None:
        """A committed position run again by a worker whose transaction will be fenced: its output is lost."""
        if self.done:
            tag = sorted(self.done)[index % len(self.done)]
            self._apply(tag, self.done[tag])

    def control_tag(self) -> str:
        return f"ctl:0:{next(self.positions)}"

    def _apply(self, tag: str, message: Message) -> Closed | None:
        first, self.applied = tag not in self.applied, self.applied | {tag}
        if isinstance(message, Part):
            self.delivered |= set(message.users)
            self.known, self.closed = True, self.closed or (first and message.final)
            (result,) = self.store.apply_parts([(change_info(self.change_id), message)], 0)
        else:
            self.closed = self.closed or (first and message is None and self.known)
            (result,) = self.store.apply_commands([(Command(self.change_id, message), tag)])
        if result is not None:
            assert len(result.emission.users) <= self.chunk, "an emission larger than a chunk"
        return result


def play(
    store: ChangeStore,
    change_id: str,
    chunk: int,
    users: Sequence[Sequence[str]],
    final: int | None,
    steps: Sequence[tuple[str, int, bool]],
) -> Group:
    """Run `steps` (kind, index, commit) on a group around one change of three parts; assert exactly once."""
    group = Group(store, change_id, chunk)
    parts = [Part(f"in:0:{i}", f"evt-{i}", tuple(users[i]), i == final) for i in range(3)]
    for kind, index, commit in steps:
        if kind == "part":
            group.run(parts[index % 3].tag, parts[index % 3], commit)
        elif kind == "copy":
            copy = replace(parts[index % 3], tag=f"in:{1 + index}:{index % 3}")
            group.run(copy.tag, copy, commit)
        elif kind == "timeout":  # a scan's command (every scan's is a new message)
            group.run(group.control_tag(), None, commit)
        elif kind == "continue" and group.inbox:
            group.run(group.control_tag(), group.inbox.pop(index % len(group.inbox)), commit)
        elif kind == "replay" and group.aborted:
            tag = sorted(group.aborted)[index % len(group.aborted)]
            group.run(tag, group.aborted[tag], commit)
        elif kind == "zombie":
            group.zombie(index)
    drain(group)
    emitted = [user for user, _, _ in group.committed]
    assert len(emitted) == len(set(emitted)), f"a user committed twice: {group.committed}"
    if not group.closed:
        assert emitted == [], "emitted before the change closed"
        group.run(group.control_tag(), None, True)  # the timeout
        drain(group)
    emitted = [user for user, _, _ in group.committed]
    assert len(emitted) == len(set(emitted)), f"a user committed twice: {group.committed}"
    assert set(emitted) == group.delivered, "a user of the change never committed"
    return group


def drain(group: Group) -> None:
    """Every aborted position commits once, every command sent is delivered."""
    while group.aborted or group.inbox:
        if group.aborted:
            tag = min(group.aborted)
            group.run(tag, group.aborted[tag], True)
        else:
            group.run(group.control_tag(), group.inbox.pop(0), True)
