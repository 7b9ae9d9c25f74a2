"""worker.reassembly: the rules that turn the parts of a multi-part users.modified change into one emission per user,
whatever the arrival order, replays and duplicates, and the timeout flush with its lease."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.reassembly import ChangeState, Emission, Part, TimeoutOutcome, apply_part, apply_timeout, confirm_timeout

FAST = settings(max_examples=300, deadline=None, database=None)

USERS = ("ann", "bob", "cat", "dan", "eve", "fay")
LEASE_MS = 100


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
            # the first final part emits every user collected so far (its own included), each once
            assert result == Emission(tuple(sorted(carriers.items())), complete=True, late=False)
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
        (("ann", "evt-2"), ("dan", "evt-2"), ("eve", "evt-2")), complete=True, late=False
    )
    assert apply_part(state, part(0, ["ann", "bob"])) == Emission((("bob", "evt-0"),), complete=True, late=True)
    assert apply_part(state, part(1, ["bob", "cat", "dan"])) == Emission((("cat", "evt-1"),), complete=True, late=True)
    assert apply_part(state, part(1, ["bob", "cat", "dan"], copy=1)) == Emission((), complete=True, late=True)


def test_single_part_change_emits_at_once():
    state = ChangeState()
    emission = apply_part(state, part(0, ["bob", "ann", "bob"], final=True))
    assert emission == Emission((("ann", "evt-0"), ("bob", "evt-0")), complete=True, late=False)


def test_parts_before_the_final_one_emit_nothing_and_the_final_one_emits_them_all():
    state = ChangeState()
    assert apply_part(state, part(0, ["cat", "ann"])) is None
    assert apply_part(state, part(1, ["bob", "cat"])) is None
    assert apply_part(state, part(0, ["cat", "ann"])) is None  # replay while still open
    emission = apply_part(state, part(2, ["dan"], final=True))
    assert emission == Emission(
        (("ann", "evt-0"), ("bob", "evt-1"), ("cat", "evt-0"), ("dan", "evt-2")), complete=True, late=False
    )


def test_a_duplicate_of_the_final_part_does_not_close_it_twice():
    state = ChangeState()
    first = apply_part(state, part(1, ["ann"], final=True))
    again = apply_part(state, part(1, ["ann"], final=True, copy=1))
    assert users_of(first) == ["ann"]
    assert again == Emission((), complete=True, late=True)
    assert state.final_tag == part(1, []).tag


# --- hypothesis: any parts, any order, replays and duplicates -----------------------------------------------------


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


# --- timeout flush ------------------------------------------------------------------------------------------------


def open_change() -> ChangeState:
    state = ChangeState()
    assert apply_part(state, part(0, ["bob", "ann"])) is None
    assert apply_part(state, part(1, ["cat", "bob"])) is None
    return state


COLLECTED = (("ann", "evt-0"), ("bob", "evt-0"), ("cat", "evt-1"))


def test_timeout_emits_every_collected_user_as_incomplete():
    state = open_change()
    assert apply_timeout(state, "tok-1", 1_000, LEASE_MS) == Emission(COLLECTED, complete=False, late=False)
    assert (state.timed_out, state.lease, state.lease_until_ms) == (True, "tok-1", 1_000 + LEASE_MS)


def test_parts_after_a_timeout_are_late_incomplete_and_emit_only_new_users():
    state = open_change()
    apply_timeout(state, "tok-1", 1_000, LEASE_MS)
    assert apply_part(state, part(2, ["cat", "dan"])) == Emission((("dan", "evt-2"),), complete=False, late=True)
    assert apply_part(state, part(1, ["cat", "bob"])) == Emission((), complete=False, late=True)  # replay


def test_a_final_part_after_the_timeout_is_late_and_does_not_close_the_change():
    state = open_change()
    apply_timeout(state, "tok-1", 1_000, LEASE_MS)
    emission = apply_part(state, part(2, ["ann", "eve"], final=True))
    assert emission == Emission((("eve", "evt-2"),), complete=False, late=True)
    assert state.final_tag is None


def test_timeout_of_a_change_closed_by_its_final_part_is_done():
    state = open_change()
    apply_part(state, part(2, ["dan"], final=True))
    assert apply_timeout(state, "tok-1", 1_000, LEASE_MS) is TimeoutOutcome.DONE
    assert (state.timed_out, state.lease) == (False, None)


def test_timeout_after_confirm_is_done():
    state = open_change()
    apply_timeout(state, "tok-1", 1_000, LEASE_MS)
    confirm_timeout(state, "tok-1")
    assert (state.lease, state.lease_until_ms) == (None, 0)
    assert apply_timeout(state, "tok-1", 1_010, LEASE_MS) is TimeoutOutcome.DONE
    assert apply_timeout(state, "tok-2", 9_999, LEASE_MS) is TimeoutOutcome.DONE


def test_another_token_is_busy_while_the_lease_is_live():
    state = open_change()
    apply_timeout(state, "tok-1", 1_000, LEASE_MS)
    assert apply_timeout(state, "tok-2", 1_000 + LEASE_MS - 1, LEASE_MS) is TimeoutOutcome.BUSY
    assert (state.lease, state.lease_until_ms) == ("tok-1", 1_000 + LEASE_MS)


def test_the_same_token_replaying_its_flush_re_emits_the_same_users():
    state = open_change()
    first = apply_timeout(state, "tok-1", 1_000, LEASE_MS)
    apply_part(state, part(2, ["dan"]))  # late, claims dan
    assert apply_timeout(state, "tok-1", 1_050, LEASE_MS) == first


def test_after_the_lease_expires_a_new_token_re_emits_what_the_dead_one_claimed():
    state = open_change()
    dead = apply_timeout(state, "tok-1", 1_000, LEASE_MS)
    assert apply_part(state, part(2, ["dan", "ann"])) == Emission((("dan", "evt-2"),), complete=False, late=True)
    takeover = apply_timeout(state, "tok-2", 1_000 + LEASE_MS, LEASE_MS)
    assert takeover == dead  # the dead flusher's users, none of those the late part claimed
    assert (state.lease, state.emitted["ann"], state.emitted["dan"]) == ("tok-2", "tok-2", "in:0:2")


def test_confirm_with_a_stale_token_does_nothing():
    state = open_change()
    apply_timeout(state, "tok-1", 1_000, LEASE_MS)
    apply_timeout(state, "tok-2", 2_000, LEASE_MS)
    confirm_timeout(state, "tok-1")
    assert (state.lease, state.lease_until_ms) == ("tok-2", 2_000 + LEASE_MS)
    assert apply_timeout(state, "tok-3", 2_050, LEASE_MS) is TimeoutOutcome.BUSY
    confirm_timeout(state, "tok-2")
    assert apply_timeout(state, "tok-3", 2_050, LEASE_MS) is TimeoutOutcome.DONE


def test_confirm_before_any_timeout_does_nothing():
    state = open_change()
    confirm_timeout(state, "tok-1")
    assert apply_timeout(state, "tok-1", 1_000, LEASE_MS) == Emission(COLLECTED, complete=False, late=False)


@st.composite
def timed_out_changes(draw: st.DrawFn) -> tuple[list[Part], int]:
    users = [draw(st.lists(st.sampled_from(USERS), max_size=4)) for _ in range(3)]
    final = draw(st.sampled_from([None, 0, 1, 2]))
    parts = [part(i, users[i], final=i == final) for i in draw(st.permutations(range(3)))]
    return parts, draw(st.integers(0, 3))


@FAST
@given(timed_out_changes())
def test_timeout_at_any_point_emits_each_user_once_and_a_takeover_re_emits_the_dead_flush(change):
    parts, cut = change
    state = ChangeState()
    carriers: dict[str, str] = {}
    for early in parts[:cut]:
        for user in early.users:
            carriers.setdefault(user, early.event_id)
        apply_part(state, early)

    flush = apply_timeout(state, "tok-1", 1_000, LEASE_MS)
    if any(early.final for early in parts[:cut]):
        assert flush is TimeoutOutcome.DONE
        return
    assert flush == Emission(tuple(sorted(carriers.items())), complete=False, late=False)

    claimed = dict.fromkeys(users_of(flush), "tok-1")
    for late in parts[cut:]:
        emission = apply_part(state, late)
        assert emission is not None and (emission.late, emission.complete) == (True, False)
        assert set(users_of(emission)) == set(late.users) - set(claimed)
        for user in users_of(emission):
            claimed[user] = late.tag
    assert set(claimed) == {user for p in parts for user in p.users}

    assert apply_timeout(state, "tok-2", 1_000 + LEASE_MS - 1, LEASE_MS) is TimeoutOutcome.BUSY
    takeover = apply_timeout(state, "tok-2", 1_000 + LEASE_MS, LEASE_MS)
    assert takeover == flush
    confirm_timeout(state, "tok-1")  # stale
    assert apply_timeout(state, "tok-3", 1_000 + LEASE_MS + 1, LEASE_MS) is TimeoutOutcome.BUSY
    confirm_timeout(state, "tok-2")
    assert apply_timeout(state, "tok-3", 1_000 + LEASE_MS + 1, LEASE_MS) is TimeoutOutcome.DONE
