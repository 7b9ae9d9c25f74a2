"""`python -m worker reconcile`: a tenant's groups as Qlik lists them (`GET /api/v1/groups`) against the groups
the worker holds for it (its tenant group set, `worker/state/tenants.py`):

- groups Qlik has that the worker never saw created (created before the worker knew the tenant, or a creation
  the stream missed);
- groups the worker holds that Qlik no longer has: a deletion the stream never delivered.

It reports both; with `emit`, it sends a corrective event for each through the normal path (the ingest topic:
`worker/upstream/events.py`), each of which the worker turns into one `group_change/v1` record with
`source_system: "reconciliation"`. The events' ids are made of what they correct, and the worker claims them
by content too, so a reconciliation run again (or racing the real event) emits nothing twice. Once the worker
processed them, its tenant group set is Qlik's list: the tenant's group count is exact.

The set is read before and after the list is fetched: a group counts as deleted upstream only when it was in
the set both times, as missing only when it was in neither. Groups created in the last `RECENT` are left to the
webhook (their event is likely on its way).
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from worker.qlik.api import Group, groups
from worker.qlik.client import QlikClient
from worker.state.client import Client
from worker.state.tenants import live_groups
from worker.upstream.events import outgoing, reconcile_created, reconcile_deleted
from worker.upstream.sending import Sender

log = structlog.get_logger("worker.upstream.reconcile")

RECENT = timedelta(minutes=10)


@dataclass(frozen=True)
class Differences:
    created: list[Group]  # in Qlik, not in the worker's set
    deleted: list[str]  # in the worker's set, not in Qlik
    recent: int  # groups left out: created less than RECENT ago


@dataclass
class Report:
    tenant: str
    qlik_groups: int
    known_groups: int
    missing_created: list[str] = field(default_factory=list)
    missing_deleted: list[str] = field(default_factory=list)
    left_to_the_webhook: int = 0
    emitted: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def differences(qlik: Iterable[Group], known_before: Set[str], known_after: Set[str], now: datetime) -> Differences:
    """Pure: what to correct, from Qlik's groups and the worker's set read before and after listing them."""
    listed = {group.id: group for group in qlik}
    created = [g for gid, g in listed.items() if gid not in known_before and gid not in known_after]
    fresh = [g for g in created if g.created_at > now - RECENT]
    deleted = sorted((set(known_before) & set(known_after)) - listed.keys())
    return Differences([g for g in created if g not in fresh], deleted, len(fresh))


def reconcile(client: QlikClient, redis: Client, tenant_id: str, *, sender: Sender | None, now: datetime) -> Report:
    """Compare, and with a `sender` emit the corrections (flushed). Raises `QlikError`, `NotStored`, RedisError."""
    before = live_groups(redis, tenant_id)
    listed = list(groups(client))
    after = live_groups(redis, tenant_id)
    found = differences(listed, before, after, now)
    report = Report(client.tenant.name, len(listed), len(after), [g.id for g in found.created], found.deleted,
                    found.recent)  # fmt: skip
    if sender is not None:
        events = [reconcile_created(tenant_id, g) for g in found.created]
        events += [reconcile_deleted(tenant_id, gid, now) for gid in found.deleted]
        for event in events:
            sender.send(outgoing(event, "reconcile", now))
        sender.flush()
        report.emitted = len(events)
    log.info(
        "reconciled", tenant=client.tenant.name, qlik_groups=report.qlik_groups, known_groups=report.known_groups,
        missing_created=len(found.created), missing_deleted=len(found.deleted), emitted=report.emitted,
    )  # fmt: skip
    return report
