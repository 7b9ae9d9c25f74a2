"""Tenant group sets in Redis: `worker.processing.stores.TenantGroupStore` (the rules are in
`worker/processing/tenants.py`).

Key layout (one hash tag per tenant):
- `gew:tenant:{<tenant_id>}:groups`: set of live group ids. A set, not a counter, so duplicates and the same
  group reported by both formats count once. Changed only by `worker/state/lua/tenant_groups.lua` (one call
  per tenant per batch, all in one round trip, only for batches that create or delete groups).
- `gew:tenant:{<tenant_id>}:applied`: hash input position (tag) -> the set's size right after that creation or
  deletion: a position applied again (a replay, a zombie) changes nothing and gives the same size. One field
  per group creation or deletion of the tenant within the TTL.
Their TTL, `TTL_SECONDS`, restarts at every change: it only collects tenants that went away; a tenant without
group creations or deletions for that long starts counting from zero again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from worker.processing.tenants import GroupCount
from worker.state.client import Call, Client, LuaScript, in_batch_order, indexes_by

TTL_SECONDS: Final = 30 * 86_400


def groups_key(tenant_id: str) -> str:
    return "gew:tenant:{" + tenant_id + "}:groups"


def applied_key(tenant_id: str) -> str:
    return "gew:tenant:{" + tenant_id + "}:applied"


class TenantGroups:
    """`worker.processing.stores.TenantGroupStore` in Redis: the sets of live group ids, one per tenant (one key
    per call, so one cluster slot)."""

    def __init__(self, client: Client, ttl_seconds: int = TTL_SECONDS) -> None:
        self._script = LuaScript(client, "tenant_groups")
        self._ttl = ttl_seconds

    def apply(self, changes: Sequence[GroupCount]) -> list[int]:
        """In one round trip (none when there are no changes)."""
        by_tenant = indexes_by([change.tenant_id for change in changes])
        calls: list[Call] = []
        for tenant_id, indexes in by_tenant.items():
            args: list[str | int] = [self._ttl]
            for i in indexes:
                args += ["+" if changes[i].created else "-", changes[i].group_id, changes[i].tag]
            calls.append(([groups_key(tenant_id), applied_key(tenant_id)], args))
        return [int(size) for size in in_batch_order(by_tenant, self._script.run(calls), len(changes))]


def live_groups(client: Client, tenant_id: str) -> set[str]:
    """The tenant's live group ids as the worker knows them (what a reconciliation compares with Qlik's)."""
    members: set[bytes] = client.smembers(groups_key(tenant_id))  # type: ignore[assignment]  # raw replies
    return {member.decode() for member in members}
