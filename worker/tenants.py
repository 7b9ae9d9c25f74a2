"""Tenant group limits: how many live groups each tenant has, kept in Redis, and which tenants are exported.

Qlik Cloud holds at most 10,000 active groups per tenant (API changelog, "Group validation updates",
`tests/fixtures/qlik-api-changelog-groups-tenants-users.txt`). The worker counts, per tenant, the groups it saw
created and not deleted since, from both input formats (`group_change/v1` records with `change` created or
deleted): groups that existed before the worker first saw the tenant are not known, so the count is a lower
bound until every group was created or deleted once in front of it.

Key layout:
- `gew:tenant:{<tenant_id>}:groups`: set of live group ids. A set, not a counter, so replays, duplicates and
  the same group reported by both formats count once. Changed only by `worker/lua/tenant_groups.lua` (one
  call per tenant per batch, all in one round trip, only for batches that create or delete groups). Its TTL,
  `TTL_SECONDS`, restarts at every change: it only collects tenants that went away; a tenant without group
  creations or deletions for that long starts counting from zero again.
Metrics (published after the batch committed, from `BatchResult`): `worker_tenant_group_count` observes every
new count; the gauge `worker_tenant_groups{tenant}` exists only for the `TOP_TENANTS` largest tenants this
worker has seen (`TopTenants`, pure), so its label set stays bounded however many tenants there are; and
`worker_tenant_group_limit_exceeded_total` counts group creations that left a tenant above `GROUP_LIMIT`.
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from worker import metrics
from worker.records import GroupChange
from worker.redis_scripts import Call, Client, LuaScript

GROUP_LIMIT: Final = 10_000  # per tenant, API changelog
TOP_TENANTS: Final = 20  # tenants with a gauge child, per worker
TRACKED_TENANTS: Final = 1_000  # last counts kept in memory to pick the top ones from
TTL_SECONDS: Final = 30 * 86_400


def groups_key(tenant_id: str) -> str:
    return "gew:tenant:{" + tenant_id + "}:groups"


@dataclass(frozen=True, slots=True)
class GroupCount:
    """A change of a tenant's set of live groups: its group created (`created`) or deleted."""

    tenant_id: str
    group_id: str
    created: bool
    event_id: str


def counted(record: GroupChange) -> GroupCount | None:
    """What a group record changes in its tenant's count: creations and deletions do, the rest does not."""
    if record["change"] not in ("created", "deleted"):
        return None
    return GroupCount(record["tenant_id"], record["group_id"], record["change"] == "created", record["event_id"])


def exceeds_limit(change: GroupCount, size: int) -> bool:
    """A creation that leaves its tenant above the limit (a deletion never does: it only shrinks the set)."""
    return change.created and size > GROUP_LIMIT


class TenantGroups:
    """`worker.stores.TenantGroupStore` in Redis: the sets of live group ids, one per tenant (one key per call,
    so one cluster slot)."""

    def __init__(self, client: Client, ttl_seconds: int = TTL_SECONDS) -> None:
        self._script = LuaScript(client, "tenant_groups")
        self._ttl = ttl_seconds

    def apply(self, changes: Sequence[GroupCount]) -> list[int]:
        """In one round trip (none when there are no changes)."""
        by_tenant: dict[str, list[int]] = {}
        for index, change in enumerate(changes):
            by_tenant.setdefault(change.tenant_id, []).append(index)
        calls: list[Call] = []
        for tenant_id, indexes in by_tenant.items():
            args: list[str | int] = [self._ttl]
            for i in indexes:
                args += ["+" if changes[i].created else "-", changes[i].group_id]
            calls.append(([groups_key(tenant_id)], args))
        sizes = [0] * len(changes)
        for indexes, replies in zip(by_tenant.values(), self._script.run(calls), strict=True):
            for i, size in zip(indexes, replies, strict=True):
                sizes[i] = int(size)
        return sizes


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


class TenantMetrics:
    """Publishes a committed batch's tenant counts to Prometheus (see the module doc)."""

    def __init__(self, top: TopTenants | None = None) -> None:
        self._top = top or TopTenants()

    def publish(self, counts: Mapping[str, int], limit_exceeded: int) -> None:
        for count in counts.values():
            metrics.TENANT_GROUP_COUNT.observe(count)
        change = self._top.update(counts)
        for tenant_id in change.hidden:
            with contextlib.suppress(KeyError):
                metrics.TENANT_GROUPS.remove(tenant_id)
        for tenant_id, count in change.shown.items():
            metrics.TENANT_GROUPS.labels(tenant_id).set(count)
        if limit_exceeded:
            metrics.TENANT_GROUP_LIMIT_EXCEEDED.inc(limit_exceeded)
