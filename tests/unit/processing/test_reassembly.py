"""worker.processing.reassembly: the rules that turn the parts of a multi-part users.modified change into one
emission per user, whatever the arrival order, replays and duplicates, closed by a final part or a timeout
command, in chunks."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.processing.reassembly import ChangeState, Emission, Part, apply_continue, apply_part, apply_timeout

FAST = settings(max_examples=300, deadline=None, database=None)

USERS = ("ann", "bob", "cat", "dan", "eve", "fay")


def part(index: int, users: Sequence[str], *, final: bool = False, copy: int = 0) -> Part:
    """Part `index` of the change as read at input position `copy` (copy 0: the original, 1+: a duplicate)."""
    return Part(f"in:{copy}:{index}", f"evt-{index}", tuple(users), final)


def users_of(emission: Emission | None) -> list[str]:
    return [] if emission is None else [user for user, _ in emission.users]


def check_arrivals(deliveries: Sequence[Part]) -> dict[str, str]:
    """Apply `deliveries` in order, asserting every rule on the way; return user -> the one tag that emitted it."""
    state = ChangeState()
    carriers: dict[str, str] = {}  # user -> event id of the first part that named it
    first_run: dict[str, Emission | None] = {}  # tag -> what its first run returned
    claimed: dict[str, str] = {}  # user -> the tag that emitted it
    closing: str | None = None
    for delivery in deliveries:
        for user in delivery.users:
            carriers.setdefault(user, delivery.event_id)
        result = apply_part(state, delivery)
        replay = delivery.tag in first_run

        if closing is None and delivery.final:
            closing = delivery.tag
            # the first final part emits every user collected so far (its own included), each once, in arrival order
            assert result == Emission(tuple(carriers.items()), complete=True, late=False)
        elif closing is None:
            assert result is None, "nothing is emitted before the final part"
        else:
            assert result is not None
            if delivery.tag != closing:
                assert (result.late, result.complete) == (True, True)
                assert set(users_of(result)) <= set(delivery.users)
                for user in set(delivery.users) - set(users_of(result)):
                    assert claimed.get(user) not in (None, delivery.tag), f"{user} dropped without being emitted"

        emitted = users_of(result)
        assert len(emitted) == len(set(emitted)), "a user twice in one emission"
        assert result is None or all(event_id == carriers[user] for user, event_id in result.users)
        for user in emitted:
            owner = claimed.setdefault(user, delivery.tag)
            assert owner == delivery.tag, f"{user} emitted by {owner} and again by {delivery.tag}"

        if replay:  # the same input position again: the same output again, never anything new
            original = first_run[delivery.tag]
            assert set(emitted) <= set(users_of(original))
            if original is not None:
                assert result == original
        else:
            first_run[delivery.tag] = result

    if closing is not None:
        assert set(claimed) == set(carriers), "after the final part every user of every part is emitted"
    return claimed


# --- every arrival order ------------------------------------------------------------------------------------------

OVERLAPPING = (("ann", "bob"), ("bob", "cat", "dan"), ("dan", "eve", "ann"))


@pytest.mark.parametrize("final", range(3))
@pytest.mark.parametrize("order", list(itertools.permutations(range(3))), ids=str)
def test_every_arrival_order_emits_each_user_once(order, final):
    parts = [part(i, OVERLAPPING[i], final=i == final) for i in range(3)]
    claimed = check_arrivals([parts[i] for i in order])
    assert set(claimed) == {"ann", "bob", "cat", "dan", "eve"}
    closing_position = order.index(final)
    before = {user for i in order[: closing_position + 1] for user in OVERLAPPING[i]}
    assert {user for user, tag in claimed.items() if tag == parts[final].tag} == before


def test_final_part_first_emits_its_own_users_then_late_parts_only_new_ones():
    state = ChangeState()
    assert apply_part(state, part(2, ["dan", "eve", "ann"], final=True)) == Emission(
        (("dan", "evt-2"), ("eve", "evt-2"), ("ann", "evt-2")), complete=True, late=False
    )
    assert apply_part(state, part(0, ["ann", "bob"])) == Emission((("bob", "evt-0"),), complete=True, late=True)
    assert apply_part(state, part(1, ["bob", "cat", "dan"])) == Emission((("cat", "evt-1"),), complete=True, late=True)
    assert apply_part(state, part(1, ["bob", "cat", "dan"], copy=1)) == Emission((), complete=True, late=True)


def test_single_part_change_emits_at_once():
    state = ChangeState()
    emission = apply_part(state, part(0, ["bob", "ann", "bob"], final=True))
    assert emission == Emission((("bob", "evt-0"), ("ann", "evt-0")), complete=True, late=False)


def test_parts_before_the_final_one_emit_nothing_and_the_final_one_emits_them_all():
    state = ChangeState()
    assert apply_part(state, part(0, ["cat", "ann"])) is None
    assert apply_part(state, part(1, ["bob", "cat"])) is None
    assert apply_part(state, part(0, ["cat", "ann"])) is None  # replay while still open
    emission = apply_part(state, part(2, ["dan"], final=True))
    assert emission == Emission(
        (("cat", "evt-0"), ("ann", "evt-0"), ("bob", "evt-1"), ("dan", "evt-2")), complete=True, late=False
    )


def test_a_duplicate_of_the_final_part_does_not_close_it_twice():
    state = ChangeState()
    first = apply_part(state, part(1, ["ann"], final=True))
    again = apply_part(state, part(1, ["ann"], final=True, copy=1))
    assert users_of(first) == ["ann"]
    assert again == Emission((), complete=True, late=True)
    assert state.final_tag == part(1, []).tag


@st.composite
def arrivals(draw: st.DrawFn) -> list[Part]:
    users = [draw(st.lists(st.sampled_from(USERS), max_size=4)) for _ in range(3)]
    final = draw(st.integers(0, 2))
    parts = [part(i, users[i], final=i == final) for i in range(3)]
    deliveries = [parts[i] for i in draw(st.permutations(range(3)))]
    for index, copy in draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), max_size=6)):
        # copy 0: a replay of the same input position; 1, 2: duplicates read at other positions
        deliveries.insert(draw(st.integers(0, len(deliveries))), replace(parts[index], tag=f"in:{copy}:{index}"))
    return deliveries


@FAST
@given(arrivals())
def test_any_arrival_order_with_replays_and_duplicates_emits_each_user_exactly_once(deliveries):
    claimed = check_arrivals(deliveries)
    assert set(claimed) == {user for delivery in deliveries for user in delivery.users}


# --- timeout commands -----------------------------------------------------------------------------------------


def open_change() -> ChangeState:
    state = ChangeState()
    assert apply_part(state, part(0, ["bob", "ann"])) is None
    assert apply_part(state, part(1, ["cat", "bob"])) is None
    return state


COLLECTED = (("bob", "evt-0"), ("ann", "evt-0"), ("cat", "evt-1"))


def test_a_timeout_command_emits_every_collected_user_as_incomplete():
    state = open_change()
    assert apply_timeout(state, "ctl:0:1") == Emission(COLLECTED, complete=False, late=False)
    assert state.timeout_tag == "ctl:0:1"


def test_parts_after_a_timeout_are_late_incomplete_and_emit_only_new_users():
    state = open_change()
    apply_timeout(state, "ctl:0:1")
    assert apply_part(state, part(2, ["cat", "dan"])) == Emission((("dan", "evt-2"),), complete=False, late=True)
    assert apply_part(state, part(1, ["cat", "bob"])) == Emission((), complete=False, late=True)  # replay


def test_a_final_part_after_the_timeout_is_late_and_does_not_close_the_change():
    state = open_change()
    apply_timeout(state, "ctl:0:1")
    emission = apply_part(state, part(2, ["ann", "eve"], final=True))
    assert emission == Emission((("eve", "evt-2"),), complete=False, late=True)
    assert state.final_tag is None


def test_a_timeout_command_for_a_closed_change_emits_nothing():
    state = open_change()
    apply_part(state, part(2, ["dan"], final=True))
    assert apply_timeout(state, "ctl:0:1") is None
    assert state.timeout_tag is None
    other = open_change()
    apply_timeout(other, "ctl:0:1")
    assert apply_timeout(other, "ctl:0:2") is None  # a second command (another scan): the change is closed


def test_a_retried_timeout_command_re_emits_the_same_users_not_busy():
    """Defect 7: the retry of a flush is the same message, so it recognises its own claims (the lease design saw
    its own earlier lease as another worker's and emitted nothing)."""
    state = open_change()
    first = apply_timeout(state, "ctl:0:1")
    assert apply_part(state, part(2, ["dan", "ann"])) == Emission((("dan", "evt-2"),), complete=False, late=True)
    assert apply_timeout(state, "ctl:0:1") == first == Emission(COLLECTED, complete=False, late=False)
    assert (state.emitted["ann"], state.emitted["dan"]) == ("ctl:0:1", "in:0:2")


# --- chunks ---------------------------------------------------------------------------------------------------


def test_a_close_emits_one_chunk_and_says_where_the_next_starts():
    state = ChangeState()
    assert apply_part(state, part(0, ["ann", "bob", "cat", "dan", "eve"]), chunk=2) is None
    first = apply_part(state, part(1, ["fay"], final=True), chunk=2)
    assert first == Emission((("ann", "evt-0"), ("bob", "evt-0")), complete=True, late=False, next_cursor=2)
    second = apply_continue(state, "ctl:0:7", 2, chunk=2)
    assert second == Emission((("cat", "evt-0"), ("dan", "evt-0")), complete=True, late=False, next_cursor=4)
    assert apply_continue(state, "ctl:0:8", 2, chunk=2) is None  # a copy of the first continue command
    assert apply_continue(state, "ctl:0:7", 2, chunk=2) == second  # its replay
    assert apply_part(state, part(1, ["fay"], final=True), chunk=2) == first  # the final part's replay
    last = apply_continue(state, "ctl:0:9", 4, chunk=2)
    assert last == Emission((("eve", "evt-0"), ("fay", "evt-1")), complete=True, late=False, next_cursor=None)
    assert apply_continue(state, "ctl:0:10", 6, chunk=2) is None  # nothing left


def test_a_late_part_during_a_chunked_close_claims_its_users_and_the_chunks_skip_them():
    state = ChangeState()
    apply_part(state, part(0, ["ann", "bob", "cat", "dan"]), chunk=2)
    assert users_of(apply_timeout(state, "ctl:0:1", chunk=2)) == ["ann", "bob"]
    assert apply_part(state, part(1, ["dan", "eve"]), chunk=2) == Emission(
        (("dan", "evt-0"), ("eve", "evt-1")), complete=False, late=True
    )
    assert apply_continue(state, "ctl:0:2", 2, chunk=2) == Emission((("cat", "evt-0"),), complete=False, late=False)


def test_a_replayed_chunk_covers_the_same_range_even_with_another_chunk_size():
    state = ChangeState()
    apply_part(state, part(0, ["ann", "bob", "cat"]), chunk=1)
    first = apply_timeout(state, "ctl:0:1", chunk=1)
    assert first == Emission((("ann", "evt-0"),), complete=False, late=False, next_cursor=1)
    assert apply_timeout(state, "ctl:0:1", chunk=3) == first  # a worker of another version replays it


# --- hypothesis: a change through a worker group ----------------------------------------------------------------


@dataclass
class Group:
    """What Kafka and the worker group do to one change: messages are processed and their output commits, or
    aborts (their Redis writes stay; the same position is processed again later); committed continuations and
    timeout commands are delivered at new control positions."""

    chunk: int
    state: ChangeState = field(default_factory=ChangeState)
    committed: list[tuple[str, str, bool]] = field(default_factory=list)  # (user, tag, late) in committed outputs
    aborted: dict[str, tuple[str, object]] = field(default_factory=dict)  # tag -> message to process again
    inbox: list[int] = field(default_factory=list)  # continue cursors sent by committed outputs
    positions: itertools.count[int] = field(default_factory=itertools.count)
    done: set[str] = field(default_factory=set)  # committed positions: Kafka never delivers them again
    known: bool = False  # a part was seen: the store knows the change (a command for an unknown one does nothing)

    def run(self, tag: str, message: object, commit: bool) -> None:
        if tag in self.done or (not self.known and not isinstance(message, Part)):
            return
        if isinstance(message, Part):
            self.known = True
            emission = apply_part(self.state, message, self.chunk)
        elif message is None:
            emission = apply_timeout(self.state, tag, self.chunk)
        else:
            assert isinstance(message, int)
            emission = apply_continue(self.state, tag, message, self.chunk)
        if not commit:
            self.aborted[tag] = ("", message)
            return
        self.aborted.pop(tag, None)
        self.done.add(tag)
        if emission is not None:
            assert len(emission.users) <= max(self.chunk, len(message.users) if isinstance(message, Part) else 0)
            self.committed += [(user, tag, emission.late) for user, _ in emission.users]
            if emission.next_cursor is not None:
                self.inbox.append(emission.next_cursor)

    def control_tag(self) -> str:
        return f"ctl:0:{next(self.positions)}"


@FAST
@given(
    chunk=st.integers(1, 3),
    users=st.lists(st.lists(st.sampled_from(USERS), max_size=4), min_size=3, max_size=3),
    final=st.sampled_from([None, 0, 1, 2]),
    steps=st.lists(
        st.tuples(st.sampled_from(["part", "copy", "timeout", "continue", "replay"]), st.integers(0, 9), st.booleans()),
        max_size=25,
    ),
)
def test_every_user_is_committed_exactly_once_whatever_aborts_replays_copies_and_commands(chunk, users, final, steps):
    group = Group(chunk)
    parts = [part(i, users[i], final=i == final) for i in range(3)]
    for kind, index, commit in steps:
        if kind in ("part", "copy"):
            delivered = (
                parts[index % 3] if kind == "part" else replace(parts[index % 3], tag=f"in:{1 + index}:{index % 3}")
            )
            group.run(delivered.tag, delivered, commit)
        elif kind == "timeout":  # a scan's command (every scan's is a new message)
            group.run(group.control_tag(), None, commit)
        elif kind == "continue" and group.inbox:
            cursor = group.inbox.pop(index % len(group.inbox))
            group.run(group.control_tag(), cursor, commit)
        elif kind == "replay" and group.aborted:
            tag = sorted(group.aborted)[index % len(group.aborted)]
            group.run(tag, group.aborted[tag][1], commit)
    while group.aborted or group.inbox:  # the end: every position commits once, every command is delivered
        if group.aborted:
            tag = min(group.aborted)
            group.run(tag, group.aborted[tag][1], True)
        else:
            group.run(group.control_tag(), group.inbox.pop(0), True)

    emitted = [user for user, _, _ in group.committed]
    assert len(emitted) == len(set(emitted)), "a user committed twice"
    if group.state.closed:
        delivered_users = set(group.state.users)
        assert set(emitted) == delivered_users, "a user of the change never committed"
    else:
        assert emitted == []
