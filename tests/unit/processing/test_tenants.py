"""Tenant group limits: which records change a tenant's count, the bounded top-N gauge labels, and the
Processor's counting step (on the in-memory stores). Publishing to Prometheus: tests/unit/consumer/test_metrics.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from worker.processing.processor import Processor
from worker.processing.stores import MemoryChangeStore, MemoryDedupe, MemoryTenantGroups
from worker.processing.tenants import (
    GROUP_LIMIT,
    GroupCount,
    TopTenants,
    counted,
    exceeds_limit,
)


@pytest.mark.parametrize(
    ("change", "expected"),
    [("created", True), ("deleted", False), ("updated", None), ("deactivated", None)],
)
def test_only_creations_and_deletions_are_counted(change, expected):
    record: Any = {"change": change, "tenant_id": "t", "group_id": "g", "event_id": "e"}
    result = counted(record, "in:0:1")
    assert (None if result is None else result.created) == expected
    if result is not None:
        assert (result.tenant_id, result.group_id, result.event_id, result.tag) == ("t", "g", "e", "in:0:1")


def test_the_limit_is_exceeded_by_a_creation_above_it():
    created, deleted = GroupCount("t", "g", True, "e", "in:0:1"), GroupCount("t", "g", False, "e", "in:0:2")
    assert GROUP_LIMIT == 10_000
    assert not exceeds_limit(created, GROUP_LIMIT)
    assert exceeds_limit(created, GROUP_LIMIT + 1)
    assert not exceeds_limit(deleted, GROUP_LIMIT + 1)


# ---- top-N labels (pure) -----------------------------------------------------------------------------------


def test_top_shows_at_most_size_tenants_the_largest_first():
    top = TopTenants(size=2)
    change = top.update({"a": 5, "b": 10, "c": 1})
    assert change.shown == {"b": 10, "a": 5} and change.hidden == frozenset()
    change = top.update({"c": 50})
    assert change.shown == {"c": 50, "b": 10} and change.hidden == {"a"}
    change = top.update({"c": 2})  # c shrinks: a, remembered, comes back
    assert change.shown == {"b": 10, "a": 5} and change.hidden == {"c"}


def test_a_tenant_without_groups_is_not_shown():
    top = TopTenants(size=3)
    top.update({"a": 5, "b": 3})
    change = top.update({"a": 0})
    assert change.shown == {"b": 3} and change.hidden == {"a"}
    assert "a" not in top.counts


def test_ties_are_broken_the_same_way_whatever_the_order():
    one, other = TopTenants(size=1), TopTenants(size=1)
    assert one.update({"x": 3, "y": 3}).shown == other.update({"y": 3, "x": 3}).shown == {"y": 3}


def test_tracked_tenants_are_bounded_smallest_forgotten_first():
    top = TopTenants(size=2, keep=3)
    top.update({"a": 1, "b": 2, "c": 3, "d": 4})
    assert set(top.counts) == {"b", "c", "d"}
    top.update({"a": 9})  # a forgotten tenant comes back with its next count
    assert set(top.counts) == {"a", "c", "d"} and top.shown == {"a", "d"}


@given(st.lists(st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 20), max_size=5), max_size=20))
def test_shown_labels_follow_the_updates_and_stay_bounded(updates):
    top = TopTenants(size=3)
    labels: set[str] = set()
    last: dict[str, int] = {}
    for update in updates:
        change = top.update(update)
        last.update(update)
        labels = (labels - change.hidden) | change.shown.keys()
        assert labels == top.shown and len(labels) <= 3
        assert not change.hidden & change.shown.keys()
        expected = sorted(((c, t) for t, c in last.items() if c > 0), reverse=True)[:3]
        assert change.shown == {t: c for c, t in expected}


# ---- the Processor's counting step -------------------------------------------------------------------------


class FakeMessage:
    def __init__(self, offset: int, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
        self._offset, self._value, self._headers = offset, value, headers or []

    def topic(self) -> str:
        return "in"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers


class CountingTenantGroups(MemoryTenantGroups):
    """The in-memory store, counting its calls (each is one round trip in Redis)."""

    calls: int = 0

    def apply(self, changes: Sequence[GroupCount]) -> list[int]:
        self.calls += 1
        return super().apply(changes)


def cloudevent(event_id: str, kind: str, group: str, tenant: str = "t-1") -> bytes:
    data = {
        "id": group,
        "name": f"Group {group}",
        "status": "active",
        "tenantId": tenant,
        "createdAt": "2024-01-01T00:00:00Z",
        "lastUpdatedAt": "2024-01-02T00:00:00Z",
    }
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": "com.qlik/identities",
        "type": f"com.qlik.v1.group.{kind}",
        "tenantid": tenant,
        "data": data,
    }
    return orjson.dumps(event)


def webhook(event_id: str, action: str, group: str, tenant: str = "t-1") -> bytes:
    data = {"action": action, "groupId": group, "name": f"Group {group}", "lastModifiedTime": "2024-01-02 00:00:00"}
    message = {"id": event_id, "occurredAt": "2024-01-02T00:00:01Z", "tenantId": tenant, "application": "UserGroup"}
    return orjson.dumps({**message, "data": data})


def processor(tenants: MemoryTenantGroups | None) -> Processor:
    return Processor(
        MemoryDedupe(),
        MemoryChangeStore(timeout_ms=1_000, resend_ms=1_000),
        output_topic="out",
        dlq_topic="dlq",
        control_topic="control",
        tenants=tenants,
    )


def test_both_formats_count_into_one_set_and_duplicates_do_not_count():
    tenants = CountingTenantGroups()
    p = processor(tenants)
    values = [
        cloudevent("ce-1", "created", "g1"),
        webhook("ums-1", "Create", "g1"),  # the same group from the other source
        webhook("ums-2", "Create", "g2"),
        webhook("ums-2", "Create", "g2"),  # a copy: dropped by dedupe before counting
        cloudevent("ce-2", "updated", "g2"),
        webhook("ums-3", "Delete", "g1"),
        cloudevent("ce-3", "created", "g9", tenant="t-2"),
    ]
    result = p.process([FakeMessage(i, v) for i, v in enumerate(values)], 0)

    assert tenants.calls == 1  # one round trip for the batch
    assert tenants.groups == {"t-1": {"g2"}, "t-2": {"g9"}}
    assert result.tenant_groups == {"t-1": 1, "t-2": 1}
    assert result.tenant_limit_exceeded == 0
    assert result.events["UserGroup", "duplicate"] == 1
    assert result.records["group_change/v1"] == 6


def test_a_batch_without_creations_or_deletions_makes_no_round_trip():
    tenants = CountingTenantGroups()
    result = processor(tenants).process(
        [FakeMessage(0, cloudevent("ce-1", "updated", "g1")), FakeMessage(1, webhook("u-1", "Update", "g1"))], 0
    )
    assert tenants.calls == 0 and result.tenant_groups == {}


def test_creations_above_the_limit_are_counted_in_the_result_and_logged():
    full = {f"g{i}" for i in range(GROUP_LIMIT - 1)}
    tenants = CountingTenantGroups({"t-1": set(full)})
    values = [
        webhook("u-1", "Create", "new-1"),  # 10,000: at the limit
        cloudevent("ce-1", "created", "new-2"),  # 10,001: above
        webhook("u-2", "Create", "new-2"),  # the same group again: still above, counted again
        webhook("u-3", "Delete", "new-2"),
    ]
    with capture_logs() as logs:
        result = processor(tenants).process([FakeMessage(i, v) for i, v in enumerate(values)], 0)

    assert result.tenant_limit_exceeded == 2
    assert result.tenant_groups == {"t-1": GROUP_LIMIT}
    warnings = [entry for entry in logs if entry["event"] == "tenant_group_limit_exceeded"]
    assert [(w["tenant"], w["groups"], w["limit"], w["event_id"]) for w in warnings] == [
        ("t-1", GROUP_LIMIT + 1, GROUP_LIMIT, "ce-1"),
        ("t-1", GROUP_LIMIT + 1, GROUP_LIMIT, "u-2"),
    ]
    assert all(w["log_level"] == "warning" and "name" not in w for w in warnings)  # no payload fields


def test_without_a_tenant_store_nothing_is_counted():
    result = processor(None).process([FakeMessage(0, cloudevent("ce-1", "created", "g1"))], 0)
    assert result.tenant_groups == {} and result.tenant_limit_exceeded == 0
