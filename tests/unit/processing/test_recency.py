"""worker.processing.recency and the processor on it (issue 20, item 4): late, replayed and out-of-order events do
not move a group back in time. The pure rule (hypothesis): an emission older than the newest one emitted is
superseded, a deletion wins a tie, the emitted stream's current records never go back in time, and a tagged step
applied again gets its first verdict whatever came between. The processor: an old update after the deletion, a
replayed creation after the dedupe window, a change whose parts are older than a deletion, a retried batch after
newer events, tenant counts untouched by superseded records. The Redis script agrees with this rule:
tests/integration/state/test_recency_store.py."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.local.samples import UMS_EXAMPLE, seed_example
from worker.processing.decode import decode
from worker.processing.models import Event
from worker.processing.offline import OUTPUT_TOPIC, Offline, PlainMessage
from worker.processing.processor import BatchResult
from worker.processing.recency import Emitted, GroupState, Occurrence, Seen, apply, micros, occurrence, time_text

positions = itertools.count()
TENANT = "VZhiEfgW2bLd7HgR-jjzAh6VnicipweT"
GROUP = ("t", "g")


def event_of(raw: dict[str, Any]) -> Event:
    decoded = decode(orjson.dumps(raw), [("content-type", b"application/cloudevents+json")])
    assert isinstance(decoded, Event)
    return decoded


def at(text: str) -> int:
    return micros(datetime.fromisoformat(text))


# ---- the occurrence of an event --------------------------------------------------------------------------------


def test_the_occurrence_is_the_event_time_else_last_updated_at(seed_event):
    updated = event_of(seed_event("group-updated", envelope={"time": "2024-05-14T12:00:00.5Z"}))
    assert occurrence(updated) == Occurrence(at("2024-05-14T12:00:00.500+00:00"), deleted=False)
    untimed = event_of(seed_event("group-updated", envelope={"time": ...}))
    assert occurrence(untimed) == Occurrence(at("2021-03-22T10:01:02+00:00"), deleted=False)


@pytest.mark.parametrize(
    ("name", "data", "deleted"),
    [
        ("group-created", None, False),
        ("group-deleted", None, True),
        ("group-users-modified", {"deleted": True}, True),
        ("group-users-modified", {"deleted": False}, False),
    ],
)
def test_deletions(seed_event, name, data, deleted):
    assert occurrence(event_of(seed_event(name, data=data))).deleted is deleted


def test_a_ums_webhook_occurs_at_its_occurred_at(seed_ums_event):
    event = seed_ums_event()
    assert occurrence(event) == Occurrence(at("2023-01-20T21:13:25.268+00:00"), deleted=False)
    assert occurrence(seed_ums_event(data={"isDeleted": True})).deleted


def test_times_are_fixed_width_text_in_their_own_order():
    early, late = micros(datetime(1, 1, 1, tzinfo=UTC)), micros(datetime(9999, 12, 31, 23, 59, tzinfo=UTC))
    assert time_text(early) == "0" * 18 and len(time_text(late)) == 18 and time_text(early) < time_text(late)


# ---- the rule -----------------------------------------------------------------------------------------------------

OCCURRENCES = st.builds(Occurrence, st.integers(0, 5), st.booleans())
STEPS = st.lists(
    st.one_of(
        st.builds(Emitted, st.just(GROUP), st.sampled_from("ABCDEFGH"), OCCURRENCES),
        st.builds(Emitted, st.just(GROUP), st.sampled_from("ABCDEFGH"), OCCURRENCES, st.sampled_from(["c1", "c2"])),
        st.builds(Seen, st.just(GROUP), st.sampled_from(["c1", "c2"]), st.integers(0, 5)),
    ),
    max_size=30,
)


def test_an_older_emission_is_superseded_and_a_deletion_wins_a_tie():
    state = GroupState()
    assert apply(state, Emitted(GROUP, "in:0:1", Occurrence(5, deleted=True))) is False
    assert apply(state, Emitted(GROUP, "in:0:2", Occurrence(3, deleted=False))) is True  # an old update, late
    assert apply(state, Emitted(GROUP, "in:0:3", Occurrence(5, deleted=False))) is True  # same time: the deletion wins
    assert apply(state, Emitted(GROUP, "in:0:4", Occurrence(5, deleted=True))) is False  # equal: not older
    assert apply(state, Emitted(GROUP, "in:0:5", Occurrence(6, deleted=False))) is False  # recreated later
    assert state.newest == Occurrence(6, deleted=False)


def test_a_change_is_as_recent_as_its_latest_part():
    state = GroupState()
    apply(state, Seen(GROUP, "c1", 2))
    apply(state, Seen(GROUP, "c1", 7))
    apply(state, Seen(GROUP, "c1", 4))
    assert apply(state, Emitted(GROUP, "in:0:1", Occurrence(6, deleted=True))) is False
    assert apply(state, Emitted(GROUP, "ctl:0:1", Occurrence(1, deleted=False), "c1")) is False  # 7 > 6
    assert apply(state, Emitted(GROUP, "ctl:0:2", Occurrence(9, deleted=False), "c2")) is False  # no part: its own


@given(STEPS)
def test_the_current_records_never_go_back_in_time(steps):
    state, current = GroupState(), []
    first_seen: set[str] = set()
    for step in steps:
        superseded = apply(state, step)
        if isinstance(step, Emitted) and step.tag not in first_seen:
            first_seen.add(step.tag)
            if not superseded:
                current.append(state.newest)
    assert current == sorted(current)  # type: ignore[type-var]


@given(STEPS)
def test_a_tagged_step_applied_again_gets_its_first_verdict_whatever_came_between(steps):
    state, first = GroupState(), {}
    for step in steps:
        verdict = apply(state, step)
        if isinstance(step, Emitted):
            assert first.setdefault(step.tag, verdict) == verdict
    newest = state.newest
    for step in steps:  # the whole sequence again: no verdict, no newest changes
        if isinstance(step, Emitted):
            assert apply(state, step) == first[step.tag]
    assert state.newest == newest


@given(STEPS)
def test_the_newest_is_the_latest_occurrence_ever_emitted(steps):
    state, occurrences, tags = GroupState(), [], set()
    for step in steps:
        if isinstance(step, Emitted) and step.tag not in tags:
            tags.add(step.tag)
            time = state.change_times.get(step.change_id, step.occurrence.time) if step.change_id else None
            occurrences.append(Occurrence(time, step.occurrence.deleted) if time is not None else step.occurrence)
        apply(state, step)
    assert state.newest == (max(occurrences) if occurrences else None)


# ---- the processor ---------------------------------------------------------------------------------------------


def message(raw: dict[str, Any]) -> PlainMessage:
    return PlainMessage(("in", 0, next(positions)), orjson.dumps(raw), [("content-type", b"application/json")])


def group_event(seed_event, name: str, time: str, event_id: str, **data: Any) -> dict[str, Any]:
    """A seed example at `time`, which is also its `lastUpdatedAt` (Qlik stamps each change with its own)."""
    return seed_event(name, envelope={"id": event_id, "time": time}, data={"lastUpdatedAt": time, **data})


def records(results: list[BatchResult]) -> list[dict[str, Any]]:
    return [orjson.loads(o.value) for r in results for o in r.outputs if o.topic == OUTPUT_TOPIC]


def test_an_old_update_arriving_after_the_deletion_is_superseded(seed_event):
    worker = Offline()
    deleted = worker.feed([message(group_event(seed_event, "group-deleted", "2024-05-14T12:00:02Z", "del"))])
    late = worker.feed([message(group_event(seed_event, "group-updated", "2024-05-14T12:00:01Z", "upd"))])
    assert [(r["change"], r["superseded"]) for r in records(deleted + late)] == [("deleted", False), ("updated", True)]


def test_a_replayed_creation_after_the_dedupe_window_is_superseded_and_does_not_count(seed_event):
    worker = Offline()
    created = message(group_event(seed_event, "group-created", "2024-05-14T12:00:00Z", "new"))
    worker.feed([created, message(group_event(seed_event, "group-deleted", "2024-05-14T12:05:00Z", "gone"))])
    assert worker.tenants.groups[TENANT] == set()
    worker.dedupe.owners.clear()  # 24 hours later: the claims expired
    (replay,) = worker.feed([PlainMessage(("in", 0, next(positions)), created.data, created.header_list)])
    (record,) = records([replay])
    assert (record["change"], record["superseded"]) == ("created", True)
    assert worker.tenants.groups[TENANT] == set(), "a superseded creation does not bring the group back"
    assert replay.tenant_groups == {}


def test_membership_records_of_a_change_older_than_the_deletion_are_superseded(seed_event):
    worker = Offline()

    def part(index: int, time: str, users: list[str], final: bool) -> PlainMessage:
        data = {"deleted": False, "affectedUsers": users, "fullyProcessed": final}
        return message(seed_event(envelope={"id": f"part-{index}", "time": time}, data=data))

    worker.feed([part(1, "2024-05-14T12:00:00Z", ["ann"], final=False)])
    worker.feed([message(group_event(seed_event, "group-deleted", "2024-05-14T12:00:05Z", "del"))])
    closed = worker.feed([part(2, "2024-05-14T12:00:01Z", ["bob"], final=True)])
    assert {(r["user_id"], r["superseded"]) for r in records(closed)} == {("ann", True), ("bob", True)}
    later = worker.feed([part(3, "2024-05-14T12:00:09Z", ["cy"], final=False)])  # a late part, newer than it all
    assert [(r["user_id"], r["late"], r["superseded"]) for r in records(later)] == [("cy", True, False)]


def test_a_retried_batch_gets_its_first_verdicts_even_after_newer_events(seed_event):
    """A zombie, or a retry after an abort, running an old position after newer events were emitted: the same
    records as its first run, superseded flags included (rule 2 of docs/guarantees.md)."""
    worker = Offline()
    old = message(group_event(seed_event, "group-updated", "2024-05-14T12:00:01Z", "old"))
    first = worker.processor.process([old], 0)
    worker.feed([message(group_event(seed_event, "group-updated", "2024-05-14T12:00:09Z", "new"))])
    again = worker.processor.process([old], 0)
    assert again.outputs == first.outputs and records([again])[0]["superseded"] is False


def test_events_in_one_batch_are_judged_in_output_order(seed_event):
    worker = Offline()
    (result,) = worker.feed(
        [
            message(group_event(seed_event, "group-updated", "2024-05-14T12:00:09Z", "new")),
            message(group_event(seed_event, "group-updated", "2024-05-14T12:00:01Z", "old")),
            message(group_event(seed_event, "group-created", "2024-05-14T12:00:01Z", "x", id="another-group")),
        ]
    )
    assert [(r["event_id"], r["superseded"]) for r in records([result])] == [
        ("new", False),
        ("old", True),
        ("x", False),  # another group: its own newest
    ]


@pytest.fixture
def seed_ums_event():
    def build(data: dict[str, Any] | None = None) -> Event:
        raw = orjson.loads(seed_example(UMS_EXAMPLE))
        raw["data"].update(data or {})
        decoded = decode(orjson.dumps(raw), [])
        assert isinstance(decoded, Event)
        return decoded

    return build
