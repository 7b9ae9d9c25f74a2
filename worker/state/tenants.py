"""Tenant group sets in Redis: `worker.processing.stores.TenantGroupStore` (the rules are in
`worker/processing/tenants.py`).

Key layout (one hash tag per tenant):
- `gew:tenant:{<tenant_id>}:groups`: set of live group ids. A set, not a counter, so duplicates and the same
  group reported by both formats count once. Changed only by `worker/state/lua/tenant_groups.lua` (one call
  per tenant per batch, all in one round trip, only for batches that create or delete groups). Its TTL,
  `TTL_SECONDS`, restarts at every change: it only collects tenants that went away; a tenant without group
  creations or deletions for that long starts counting from zero again.
- `gew:tenant:{<tenant_id>}:applied:<tag>`: the set's size right after the creation or deletion at input
  position `tag`: a position applied again (a replay, a zombie) changes nothing and gives the same size. A key
  per position, each expiring on its own after `applied_ttl` (the replay window, `BATCH_TIMEOUT + DEDUPE_TTL`
  as the recency verdicts: a position is never replayed later than that), so an active tenant holds the
  positions of that window only.
- `gew:tenant:{<tenant_id>}:applied` (legacy): the same as one hash per tenant, written before issue 22 with
  the set's TTL restarted at every change, so an active tenant's hash only grew. Read for positions the old
  layout applied (a replay across the upgrade), never written nor kept alive: it expires within `TTL_SECONDS`
  of the last write by a worker of before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from worker.processing.tenants import GroupCount
from worker.state.client import Call, Client, LuaScript, in_batch_order, indexes_by

TTL_SECONDS: Final = 30 * 86_400


def groups_key(tenant_id: str) -> str:
    return "gew:tenant:{" + tenant_id + "}:groups"


def applied_key(tenant_id: str, tag: str) -> str:
    return "gew:tenant:{" + tenant_id + "}:applied:" + tag


def legacy_applied_key(tenant_id: str) -> str:
    return "gew:tenant:{" + tenant_id + "}:applied"


class TenantGroups:
    """`worker.processing.stores.TenantGroupStore` in Redis: the sets of live group ids, one per tenant (the keys
    of a call share the tenant's hash tag, so one cluster slot)."""

    def __init__(self, client: Client, ttl_seconds: int = TTL_SECONDS, *, applied_ttl_seconds: int) -> None:
        """`applied_ttl_seconds`: how long a position's result is kept, the longest a position can be replayed."""
        self._script = LuaScript(client, "tenant_groups")
        self._ttl, self._applied_ttl = ttl_seconds, applied_ttl_seconds

    def apply(self, changes: Sequence[GroupCount]) -> list[int]:
        """In one round trip (none when there are no changes)."""
        by_tenant = indexes_by([change.tenant_id for change in changes])
        calls: list[Call] = []
        for tenant_id, indexes in by_tenant.items():
            keys = [groups_key(tenant_id), legacy_applied_key(tenant_id)]
            args: list[str | int] = [self._ttl, self._applied_ttl]
            for i in indexes:
                keys.append(applied_key(tenant_id, changes[i].tag))
                args += ["+" if changes[i].created else "-", changes[i].group_id, changes[i].tag]
            calls.append((keys, args))
        return [int(size) for size in in_batch_order(by_tenant, self._script.run(calls), len(changes))]


def live_groups(client: Client, tenant_id: str) -> set[str]:
    """The tenant's live group ids as the worker knows them (what a reconciliation compares with Qlik's)."""
    members: set[bytes] = client.smembers(groups_key(tenant_id))  # type: ignore[assignment]  # raw replies
    return {member.decode() for member in members}
