"""The watch's decisions (worker/upstream/gaps.py): resends once the endpoint works, backfills for disabled
webhooks and trouble past the threshold (at once, then from where the last one ended, and the rest when it is
over), the unwatched stretch past Qlik's history, and no resend of what a backfill covers. A property: over any
sequence of cycles, the backfills leave no hole between the last good time and the end of the trouble."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.upstream.gaps import HISTORY_MS, DeliveryView, Policy, WatchState, WebhookView, plan

MIN = 60_000
POLICY = Policy(reenable=True, threshold_ms=5 * MIN, margin_ms=MIN)


def hook(*deliveries: DeliveryView, enabled: bool = True) -> WebhookView:
    return WebhookView("w1", enabled, None if enabled else "3 deliveries in a row failed", deliveries)


def d(delivery_id: str, at_min: int, ok: bool, event: str | None = None) -> DeliveryView:
    return DeliveryView(delivery_id, event or f"e-{delivery_id}", ok, at_min * MIN)


def test_failures_are_resent_once_unless_their_event_came_through_anyway() -> None:
    state = WatchState(checked_through=10 * MIN)
    webhook = hook(d("a", 11, False), d("b", 12, False, event="e-x"), d("c", 13, True, event="e-x"), d("z", 14, True))
    first = plan(15 * MIN, [webhook], None, state, frozenset(), POLICY)
    assert first.resend == (("w1", "a"),) and first.backfill == () and first.state.checked_through == 15 * MIN
    again = plan(16 * MIN, [webhook], None, first.state, frozenset({"a"}), POLICY)
    assert again.resend == ()


def test_short_trouble_is_resent_when_over_and_never_backfilled() -> None:
    state = WatchState(checked_through=10 * MIN)
    down = plan(12 * MIN, [hook(d("a", 11, False))], None, state, frozenset(), POLICY)
    assert down.resend == down.backfill == () and down.state.trouble_since == 10 * MIN
    up = plan(13 * MIN, [hook(d("a", 11, False), d("b", 13, True))], None, down.state, frozenset(), POLICY)
    assert up.resend == (("w1", "a"),) and up.backfill == () and up.state.trouble_since is None


def test_a_disabled_webhook_is_re_enabled_and_its_gap_backfilled_exactly_once() -> None:
    state = WatchState(checked_through=10 * MIN)
    failed = [d("a", 11, False), d("b", 12, False), d("c", 13, False)]
    disabled = plan(20 * MIN, [hook(*failed, enabled=False)], None, state, frozenset(), POLICY)
    assert disabled.reenable == ("w1",)
    assert disabled.backfill == ((9 * MIN, 20 * MIN),) and disabled.state.backfilled_through == 20 * MIN
    assert (
        plan(20 * MIN, [hook(*failed, enabled=False)], None, state, frozenset(), Policy(False, 0, MIN)).reenable == ()
    )
    over = plan(21 * MIN, [hook(*failed)], None, disabled.state, frozenset(), POLICY)
    assert over.backfill == ((19 * MIN, 21 * MIN),)  # only the rest; the failures were covered: none resent
    assert over.resend == () and over.state == WatchState(21 * MIN, None, None, None)


def test_trouble_past_the_threshold_is_backfilled_every_cycle_from_where_the_last_ended() -> None:
    state = WatchState(checked_through=10 * MIN)
    failing = hook(d("a", 11, False))
    early = plan(14 * MIN, [failing], None, state, frozenset(), POLICY)
    assert early.backfill == ()
    late = plan(16 * MIN, [failing], None, early.state, frozenset(), POLICY)
    assert late.backfill == ((9 * MIN, 16 * MIN),)
    still = plan(17 * MIN, [hook(d("a", 11, False), d("b", 17, False))], None, late.state, frozenset(), POLICY)
    assert still.backfill == ((15 * MIN, 17 * MIN),)


def test_without_any_webhook_of_group_events_every_cycle_backfills() -> None:
    first = plan(20 * MIN, [], None, WatchState(checked_through=10 * MIN), frozenset(), POLICY)
    assert first.backfill == ((9 * MIN, 20 * MIN),) and "no webhook delivers group events" in first.findings
    second = plan(21 * MIN, [], None, first.state, frozenset(), POLICY)
    assert second.backfill == ((19 * MIN, 21 * MIN),)


def test_a_first_cycle_starts_at_the_ingests_last_accepted_time() -> None:
    first = plan(30 * MIN, [hook(d("a", 25, False), enabled=False)], 20 * MIN, WatchState(), frozenset(), POLICY)
    assert first.backfill == ((19 * MIN, 30 * MIN),)


def test_a_stretch_longer_than_the_history_unwatched_is_backfilled() -> None:
    now = HISTORY_MS + 100 * MIN
    result = plan(now, [hook()], None, WatchState(checked_through=10 * MIN), frozenset(), POLICY)
    assert result.backfill == ((9 * MIN, now - HISTORY_MS + MIN),)


@given(st.lists(st.sampled_from(["ok", "failing", "disabled"]), min_size=1, max_size=12))
def test_backfills_leave_no_hole_in_trouble_that_was_backfilled(cycles: list[str]) -> None:
    """Whatever the sequence, once trouble got a backfill, the union of the backfills covers from the last good
    time (less the margin) to the cycle that saw the trouble over."""
    state, covered, now, deliveries = WatchState(checked_through=0), [], 0, []
    trouble_start: int | None = None
    for index, kind in enumerate([*cycles, "ok"]):
        now += 2 * MIN
        deliveries.append(d(str(index), now // MIN, kind == "ok"))
        if kind != "ok" and trouble_start is None:
            trouble_start = state.checked_through
        result = plan(now, [hook(*deliveries, enabled=kind != "disabled")], None, state, frozenset(), POLICY)
        covered += list(result.backfill)
        if kind == "ok" and trouble_start is not None:
            if covered:
                for minute in range(trouble_start - MIN, now, MIN // 2):
                    assert any(start <= minute <= end for start, end in covered), (minute, covered)
            trouble_start, covered = None, []
        state = result.state
