"""What the upstream jobs put on the ingest topic, as pure functions: the CloudEvent of an audit item (backfill),
the corrective CloudEvents of a reconciliation, and the Kafka message of an event, as the ingest would have made
it (structured mode, the ingest's key) plus a header saying where it came from.

An audit item becomes the CloudEvent Qlik would have delivered: its `eventId` is the event id (the audit item's
own `id` where it has none), `eventType` the type, `eventTime` the time, `source`, `tenantId`, `userId` as they
are, and its `data` the event's data (README "Qlik Cloud APIs": what the code assumes about audit items). Where
the ids differ from the webhook's, the worker still recognises the change by its content
(`worker.processing.stores.content_id`).

A reconciliation's events have `source` `RECONCILIATION_SOURCE` (their records say `source_system:
"reconciliation"`) and ids made of what they correct, so running it twice sends the same events:
- a group Qlik has and the worker never saw created: `group.created` with the group as the Groups API lists it;
- a group the worker holds and Qlik no longer has: `group.deleted` with what is known of it: its id (also as its
  name: Qlik has forgotten the group and the worker keeps no names), status `disabled`, and the time the
  reconciliation noticed the deletion as its `createdAt` and `lastUpdatedAt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import orjson

from worker.ingest.rules import CONTENT_TYPE_HEADER, RECEIVED_AT_HEADER, received_at, record_key
from worker.processing.models import GROUP_CREATED, GROUP_DELETED, rfc3339
from worker.processing.records import RECONCILIATION_SOURCE, digest
from worker.qlik.api import AuditItem, Group

Origin = Literal["backfill", "reconcile"]
# Record header on what the upstream jobs produce: which job made the record, where the ingest's records have
# none (it did not come through the webhook endpoint). For tracing only: the worker reads it not.
ORIGIN_HEADER: Final = "upstream.origin"
QLIK_SOURCE: Final = "com.qlik/identities"  # the seed examples' source, for an audit item without one
STRUCTURED: Final = b"application/cloudevents+json"


@dataclass(frozen=True, slots=True)
class Outgoing:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, str | bytes | None]]


def from_audit(item: AuditItem) -> dict[str, Any]:
    data = dict(item.data or {})
    tenant = item.tenant_id or data.get("tenantId")
    if tenant:
        data.setdefault("tenantId", tenant)
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": item.event_id or item.id,
        "source": item.source or QLIK_SOURCE,
        "type": item.event_type,
        "time": rfc3339(item.event_time),
        "datacontenttype": "application/json",
        "tenantid": tenant,
        "data": data,
    }
    if item.user_id:
        event["userid"] = item.user_id
    return event


def reconcile_created(tenant_id: str, group: Group) -> dict[str, Any]:
    data = {
        "id": group.id,
        "name": group.name,
        "status": group.status,
        "tenantId": tenant_id,
        "createdAt": rfc3339(group.created_at),
        "lastUpdatedAt": rfc3339(group.last_updated_at),
        "assignedRoles": group.assigned_roles,
    }
    return _reconciliation(GROUP_CREATED, tenant_id, group.id, data)


def reconcile_deleted(tenant_id: str, group_id: str, noticed_at: datetime) -> dict[str, Any]:
    noticed = rfc3339(noticed_at)
    data = {
        "id": group_id,
        "name": group_id,
        "status": "disabled",
        "tenantId": tenant_id,
        "createdAt": noticed,
        "lastUpdatedAt": noticed,
    }
    return _reconciliation(GROUP_DELETED, tenant_id, group_id, data)


def _reconciliation(event_type: str, tenant_id: str, group_id: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": digest("reconciliation", tenant_id, group_id, event_type),
        "source": RECONCILIATION_SOURCE,
        "type": event_type,
        "time": data["lastUpdatedAt"],
        "datacontenttype": "application/json",
        "tenantid": tenant_id,
        "data": data,
    }


def outgoing(event: dict[str, Any], origin: Origin, now: datetime) -> Outgoing:
    """The Kafka message of an event, as the ingest would have stored it, with `ORIGIN_HEADER`."""
    headers: list[tuple[str, str | bytes | None]] = [
        (CONTENT_TYPE_HEADER, STRUCTURED),
        (RECEIVED_AT_HEADER, received_at(now).encode()),
        (ORIGIN_HEADER, origin.encode()),
    ]
    return Outgoing(record_key(event), orjson.dumps(event), headers)
