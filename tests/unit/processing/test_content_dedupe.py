"""The same change under another event id is a duplicate (issue 21): a backfill from Qlik's Audits API may not
carry the id the webhook delivered, so the worker also recognises a Qlik CloudEvent by its content: tenant,
group, type, and `lastUpdatedAt` for updates (a group is created and deleted once), plus the users and the
final flag of a `users.modified` part. UMS webhooks keep their id alone."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from worker.local.samples import UMS_EXAMPLE, seed_example
from worker.processing.offline import OUTPUT_TOPIC, Offline, PlainMessage
from worker.processing.stores import content_id, dedupe_ids

offsets = itertools.count()
SeedEvent = Callable[..., dict[str, Any]]


def message(event: dict[str, Any]) -> PlainMessage:
    return PlainMessage(("in", 0, next(offsets)), orjson.dumps(event))


def records(offline: Offline, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for event in events:
        for result in offline.feed([message(event)]):
            out += [orjson.loads(o.value) for o in result.outputs if o.topic == OUTPUT_TOPIC]
    return out


def test_a_group_change_under_another_id_is_a_duplicate(seed_event: SeedEvent) -> None:
    """Failed before: a backfilled copy with the audit item's own id came out as a second record."""
    for name in ("group-created", "group-updated", "group-deleted"):
        delivered = seed_event(name, envelope={"id": "webhook-id"})
        backfilled = seed_event(name, envelope={"id": "audit-id", "source": "com.qlik/audits"})
        assert len(records(Offline(), [delivered, backfilled])) == 1, name
        assert len(records(Offline(), [backfilled, delivered])) == 1, name


def test_updates_at_other_times_and_other_groups_are_changes_of_their_own(seed_event: SeedEvent) -> None:
    events = [
        seed_event("group-updated", envelope={"id": "u1"}),
        seed_event("group-updated", envelope={"id": "u2"}, data={"lastUpdatedAt": "2021-03-22T10:05:00Z"}),
        seed_event("group-created", envelope={"id": "c1"}),
        seed_event("group-created", envelope={"id": "c2"}, data={"id": "another-group"}),
    ]
    assert len(records(Offline(), events)) == 4


def test_a_users_modified_part_under_another_id_adds_no_record_and_counts_as_a_duplicate(seed_event: SeedEvent) -> None:
    offline = Offline()
    part = {"affectedUsers": ["ann", "bob"], "fullyProcessed": True}
    delivered = seed_event(envelope={"id": "p-webhook"}, data=part)
    backfilled = seed_event(envelope={"id": "p-audit"}, data=part)
    other_part = seed_event(envelope={"id": "p-2"}, data={**part, "affectedUsers": ["cid"]})
    assert [r["user_id"] for r in records(offline, [delivered])] == ["ann", "bob"]
    outcomes = Counter(o for result in offline.feed([message(backfilled)]) for (_t, o) in result.events.elements())
    assert outcomes == {"duplicate": 1}
    assert [r["user_id"] for r in records(offline, [other_part])] == ["cid"]


def test_ums_webhooks_have_no_content_identity(decoded: Any) -> None:
    event = decoded(seed_example(UMS_EXAMPLE))
    assert content_id(event) is None and len(dedupe_ids(event)) == 1


names = st.sampled_from(["group-created", "group-updated", "group-deleted", "group-users-modified"])
times = st.sampled_from(["2021-03-22T10:01:02Z", "2021-03-22T10:01:03Z"])


@given(st.lists(st.tuples(names, times, st.integers(0, 3)), max_size=12))
def test_each_change_comes_out_once_whatever_ids_its_copies_carry(seed_event: SeedEvent, copies: list[Any]) -> None:
    """Any mix of copies with fresh ids: one group record per (type, time) change, one record per user."""
    events = [
        seed_event(name, envelope={"id": f"e{i}"}, data={"lastUpdatedAt": at, "affectedUsers": [f"u{user}"]})
        for i, (name, at, user) in enumerate(copies)
    ]
    out = records(Offline(), events)
    groups = Counter((r["change"], r["occurred_at"]) for r in out if r["schema"] == "group_change/v1")
    assert all(count == 1 for count in groups.values())
    members = Counter((r["change_id"], r["user_id"]) for r in out if r["schema"] == "membership_change/v1")
    assert all(count == 1 for count in members.values())


def test_a_reconciliation_and_qliks_own_event_are_the_same_change(seed_event: SeedEvent) -> None:
    """Whichever comes first gives the one record: a reconciliation's correction of a deletion (its own source,
    id and time) and the deletion Qlik delivers late."""
    qliks = seed_event("group-deleted", envelope={"id": "qlik-delete"})
    correction = seed_event(
        "group-deleted",
        envelope={"id": "reconciliation-id", "source": "group-events-worker/reconcile"},
        data={"name": "507f191e810c19729de860ea", "lastUpdatedAt": "2026-01-01T00:00:00Z"},
    )
    for order in ([qliks, correction], [correction, qliks]):
        (record,) = records(Offline(), order)
        assert record["event_id"] == order[0]["id"]
