"""worker.processing.reassembly: the rules that turn the parts of a multi-part users.modified change into one
emission per user, whatever the arrival order, replays, duplicates and zombies, closed by a final part or a
timeout command, in chunks no larger than a chunk (late parts included)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.change_model import CHUNKS, FINALS, PARTS_USERS, STEPS, play
from worker.processing.reassembly import ChangeState, Emission, Part, apply_continue, apply_part, apply_timeout
from worker.processing.stores import MemoryChangeStore

FAST = settings(max_examples=300, deadline=None, database=None)

USERS = ("ann", "bob", "cat", "dan", "eve", "fay")


def part(index: int, users: Sequence[str], *, final: bool = False, copy: int = 0) -> Part:
    """Part `index` of the change as read at input position `copy` (copy 0: the original, 1+: a duplicate)."""
    return Part(f"in:{copy}:{index}", f"evt-{index}", tuple(users), final)


def users_of(emission: Emission | None) -> list[str]:
    return [] if emission is None else [user for user, _ in emission.users]


def check_arrivals(deliveries: Sequence[Part]) -> dict[str, str]:
    """Apply `deliveries` in order (one chunk holds every user), asserting every rule on the way; return
    user -> the one tag that emitted it."""
    state = ChangeState()
    carriers: dict[str, str] = {}  # user -> event id of the first part that named it
    first_run: dict[str, Emission | None] = {}  # tag -> what its first run returned
    claimed: dict[str, str] = {}  # user -> the tag that emitted it
    closing: str | None = None
    for delivery in deliveries:
        new = [user for user in dict.fromkeys(delivery.users) if user not in carriers]
        for user in delivery.users:
            carriers.setdefault(user, delivery.event_id)
        result = apply_part(state, delivery)
        replay = delivery.tag in first_run

        if replay:  # the same input position again: the same output again, never anything new
            assert result == first_run[delivery.tag]
            continue
        first_run[delivery.tag] = result
        if closing is None and delivery.final:
            closing = delivery.tag
            # the first final part emits every user collected so far (its own included), each once, in arrival order
            assert result == Emission(tuple(carriers.items()), complete=True, late=False)
        elif closing is None:
            assert result is None, "nothing is emitted before the final part"
        elif new:  # after the close, a part emits exactly the users no part carried before it
            assert result == Emission(tuple((user, delivery.event_id) for user in new), complete=True, late=True)
        else:
            assert result is None

        for user in users_of(result):
            owner = claimed.setdefault(user, delivery.tag)
            assert owner == delivery.tag, f"{user} emitted by {owner} and again by {delivery.tag}"

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
    assert apply_part(state, part(1, ["bob", "cat", "dan"], copy=1)) is None  # a copy brings no new user


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
    assert again is None
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


# --- the tag rule ---------------------------------------------------------------------------------------------


def test_a_part_applied_while_open_stays_silent_when_run_again_after_the_close():
    """Issue 19, defect 2: the second run of a position must return what the first returned, whatever happened
    in between; before, a part first seen while open took the late path when run again after the close."""
    state = ChangeState()
    assert apply_part(state, part(0, ["ann", "bob"]), chunk=1) is None
    assert users_of(apply_part(state, part(1, ["cat"], final=True), chunk=1)) == ["ann"]
    before = (dict(state.users), list(state.order), state.next, dict(state.applied))
    assert apply_part(state, part(0, ["ann", "bob"]), chunk=1) is None
    assert (dict(state.users), list(state.order), state.next, dict(state.applied)) == before
    assert users_of(apply_continue(state, "ctl:0:1", 1, chunk=1)) == ["bob"]


def test_a_command_for_an_unknown_change_stays_silent_when_run_again_after_parts_arrived():
    """A timeout command first run before any part (a deadline without state) must not close the change when a
    zombie runs it again later: its chunk would be claimed under a position that never commits again."""
    state = ChangeState()
    assert apply_timeout(state, "ctl:0:1") is None
    assert apply_part(state, part(0, ["ann"])) is None
    assert apply_timeout(state, "ctl:0:1") is None
    assert not state.closed


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
    assert apply_part(state, part(1, ["cat", "bob"])) is None  # replay: it emitted nothing the first time


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
    assert state.applied["ctl:0:1"] == (0, 3, False)  # the late part restarted the chain for dan


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


def test_a_late_part_during_a_chunked_close_leaves_its_users_to_the_chain():
    state = ChangeState()
    apply_part(state, part(0, ["ann", "bob", "cat", "dan"]), chunk=2)
    assert users_of(apply_timeout(state, "ctl:0:1", chunk=2)) == ["ann", "bob"]
    assert apply_part(state, part(1, ["dan", "eve"]), chunk=2) is None  # the chain is on its way
    assert apply_continue(state, "ctl:0:2", 2, chunk=2) == Emission(
        (("cat", "evt-0"), ("dan", "evt-0")), complete=False, late=False, next_cursor=4
    )
    assert apply_continue(state, "ctl:0:3", 4, chunk=2) == Emission((("eve", "evt-1"),), complete=False, late=True)


def test_a_large_late_part_restarts_the_finished_chain_one_chunk_at_a_time():
    """Issue 19, defect 4: a part that arrived after the close emitted all its users at once (after a timeout a
    restart's first batch can hold tens of late parts of 10,000+ users). Now a late part emits at most a chunk
    and the chain's continue commands the rest."""
    state = ChangeState()
    assert users_of(apply_part(state, part(0, ["ann"], final=True), chunk=2)) == ["ann"]  # the chain ends
    late = apply_part(state, part(1, ["bob", "cat", "dan", "eve", "fay"]), chunk=2)
    assert late == Emission((("bob", "evt-1"), ("cat", "evt-1")), complete=True, late=True, next_cursor=3)
    assert apply_part(state, part(2, ["fay", "gus"]), chunk=2) is None  # the chain is on its way again
    assert users_of(apply_continue(state, "ctl:0:1", 3, chunk=2)) == ["dan", "eve"]
    assert users_of(apply_continue(state, "ctl:0:2", 5, chunk=2)) == ["fay", "gus"]


def test_a_replayed_chunk_covers_the_same_range_even_with_another_chunk_size():
    state = ChangeState()
    apply_part(state, part(0, ["ann", "bob", "cat"]), chunk=1)
    first = apply_timeout(state, "ctl:0:1", chunk=1)
    assert first == Emission((("ann", "evt-0"),), complete=False, late=False, next_cursor=1)
    assert apply_timeout(state, "ctl:0:1", chunk=3) == first  # a worker of another version replays it


# --- hypothesis: a change through a worker group, with zombies (tests/support/change_model.py) -----------------


@FAST
@given(chunk=CHUNKS, users=PARTS_USERS, final=FINALS, steps=STEPS)
def test_every_user_is_committed_once_whatever_zombies_aborts_replays_copies_and_commands_do(
    chunk, users, final, steps
):
    """Issue 19, defects 2 and 4, on the pure rules (`MemoryChangeStore`): a zombie's run of an already committed
    position at any moment (its output fenced) takes no user from the message that owes it, and no emission
    (a late part's included) is larger than a chunk. `tests/integration/state/test_changes_store.py` runs the
    same model on the Lua scripts."""
    play(MemoryChangeStore(timeout_ms=1, resend_ms=1, chunk=chunk), "change", chunk, users, final, steps)


def test_a_zombie_run_of_a_committed_part_takes_no_user_from_the_chain():
    """Issue 19, defect 2, the example of the issue: part 0 committed while the change was open; the final part
    closes it, emits the first chunk and a continue command; a zombie runs part 0 again, which took the late
    path and claimed its users beyond the first chunk under its own tag; its transaction is fenced; the
    continue command then skipped them as owned by part 0, and part 0 is never replayed: lost."""
    group = play(
        MemoryChangeStore(timeout_ms=1, resend_ms=1, chunk=1),
        "change",
        1,
        [["ann", "bob"], ["cat"], []],
        1,
        [("part", 0, True), ("part", 1, True), ("zombie", 0, True)],
    )
    assert [user for user, _, _ in group.committed] == ["ann", "bob", "cat"]
