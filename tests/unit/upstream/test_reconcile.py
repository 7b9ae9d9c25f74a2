"""The reconciliation's rule (worker/upstream/reconcile.py `differences`): what Qlik has and the worker never saw
created, what the worker holds and Qlik no longer has; a group in the middle of changing (in one read of the set
only, or created just now) is left alone. Property: after the corrections, the worker's set is Qlik's list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from worker.qlik.api import Group
from worker.upstream.reconcile import RECENT, differences

NOW = datetime(2026, 3, 1, tzinfo=UTC)
OLD = NOW - timedelta(days=30)


def group(group_id: str, created: datetime = OLD) -> Group:
    return Group(id=group_id, name=group_id, created_at=created, last_updated_at=created)


def test_missing_creations_and_deletions_and_what_is_left_alone() -> None:
    qlik = [group("kept"), group("never-seen"), group("fresh", NOW - RECENT / 2), group("appeared-meanwhile")]
    found = differences(qlik, {"kept", "gone", "gone-meanwhile"}, {"kept", "gone", "appeared-meanwhile"}, NOW)
    assert [g.id for g in found.created] == ["never-seen"]
    assert found.deleted == ["gone"]
    assert found.recent == 1


ids = st.sets(st.sampled_from([f"g{i}" for i in range(12)]))


@given(ids, ids)
def test_after_the_corrections_the_worker_holds_exactly_qliks_groups(in_qlik: set[str], known: set[str]) -> None:
    found = differences([group(g) for g in in_qlik], known, known, NOW)
    corrected = (known | {g.id for g in found.created}) - set(found.deleted)
    assert corrected == in_qlik
