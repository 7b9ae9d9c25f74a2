"""Tenant group limits, the pure rules: which records change a tenant's set of live groups, when a creation
exceeds Qlik's limit, and which tenants a worker exports.

Qlik Cloud holds at most 10,000 active groups per tenant (API changelog, "Group validation updates",
`tests/fixtures/qlik-api-changelog-groups-tenants-users.txt`). The worker counts, per tenant, the groups it saw
created and not deleted since, from both input formats (`group_change/v1` records with `change` created or
deleted): groups that existed before the worker first saw the tenant are not known, so the count is a lower
bound until every group was created or deleted once in front of it. The sets live behind
`worker.processing.stores.TenantGroupStore` (Redis: `worker/state/tenants.py`).

The gauge `worker_tenant_groups{tenant}` exists only for the `TOP_TENANTS` largest tenants a worker has seen
(`TopTenants`), so its label set stays bounded however many tenants there are.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from worker.processing.records import GroupChange

GROUP_LIMIT: Final = 10_000  # per tenant, API changelog
TOP_TENANTS: Final = 20  # tenants with a gauge child, per worker
TRACKED_TENANTS: Final = 1_000  # last counts kept in memory to pick the top ones from


@dataclass(frozen=True, slots=True)
class GroupCount:
    """A change of a tenant's set of live groups: its group created (`created`) or deleted, by the input message
    at `tag` (its position). A tag applied before changes nothing again and gives the size it gave then: a
    zombie's run of a committed creation cannot re-add a group deleted since."""

    tenant_id: str
    group_id: str
    created: bool
    event_id: str
    tag: str


def counted(record: GroupChange, tag: str) -> GroupCount | None:
    """What a group record changes in its tenant's count: creations and deletions do, the rest does not."""
    if record["change"] not in ("created", "deleted"):
        return None
    created = record["change"] == "created"
    return GroupCount(record["tenant_id"], record["group_id"], created, record["event_id"], tag)


def exceeds_limit(change: GroupCount, size: int) -> bool:
    """A creation that leaves its tenant above the limit (a deletion never does: it only shrinks the set)."""
    return change.created and size > GROUP_LIMIT


@dataclass(frozen=True, slots=True)
class TopChange:
    """What the gauge must show after an update: children to set (tenant -> count) and children to remove."""

    shown: dict[str, int]
    hidden: frozenset[str]


@dataclass
class TopTenants:
    """The `size` largest tenants by their last known count, out of at most `keep` tracked ones (the smallest
    are forgotten first; a forgotten tenant comes back with its next count). Ties go to the greater tenant id,
    so every worker picks the same. Tenants with no live group are not shown."""

    size: int = TOP_TENANTS
    keep: int = TRACKED_TENANTS
    counts: dict[str, int] = field(default_factory=dict)
    shown: frozenset[str] = frozenset()

    def update(self, counts: Mapping[str, int]) -> TopChange:
        for tenant_id, count in counts.items():
            if count > 0:
                self.counts[tenant_id] = count
            else:
                self.counts.pop(tenant_id, None)
        if len(self.counts) > self.keep:
            for tenant_id, _ in heapq.nsmallest(len(self.counts) - self.keep, self.counts.items(), key=_rank):
                del self.counts[tenant_id]
        top = dict(heapq.nlargest(self.size, self.counts.items(), key=_rank))
        change = TopChange(top, self.shown - top.keys())
        self.shown = frozenset(top)
        return change


def _rank(item: tuple[str, int]) -> tuple[int, str]:
    return item[1], item[0]
