"""What the upstream jobs produce: an audit item becomes the CloudEvent the worker reads (the worker's decoder
accepts it, with the ingest's key), and a reconciliation's events have ids made of what they correct and give
records that say `source_system: "reconciliation"`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from worker.ingest.rules import record_key
from worker.processing.decode import decode
from worker.processing.models import Event
from worker.processing.records import group_change
from worker.qlik.api import AuditItem, Group
from worker.upstream.events import ORIGIN_HEADER, from_audit, outgoing, reconcile_created, reconcile_deleted

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def event_of(document: dict[str, Any]) -> Event:
    message = outgoing(document, "backfill", NOW)
    decoded = decode(message.value, message.headers)
    assert isinstance(decoded, Event), decoded
    assert message.key == record_key(document) and (ORIGIN_HEADER, b"backfill") in message.headers
    return decoded


def test_an_audit_item_becomes_the_delivered_cloudevent(seed_event: Any) -> None:
    delivered = seed_event("group-deleted")
    item = AuditItem.model_validate({
        "id": "audit-1", "eventId": delivered["id"], "eventTime": delivered["time"], "eventType": delivered["type"],
        "source": delivered["source"], "tenantId": delivered["tenantid"], "userId": delivered["userid"],
        "data": delivered["data"], "contentType": "application/json",
    })  # fmt: skip
    event = event_of(from_audit(item))
    assert event.envelope.id == delivered["id"] and event.data.id == delivered["data"]["id"]
    assert group_change(event)["record_id"] == group_change(event_of(delivered))["record_id"]
    without_event_id = AuditItem.model_validate({**item.model_dump(by_alias=True), "eventId": None})
    assert event_of(from_audit(without_event_id)).envelope.id == "audit-1"


def test_reconciliation_events_are_deterministic_and_say_so() -> None:
    group = Group.model_validate(
        {
            "id": "g1",
            "name": "Sales",
            "status": "active",
            "tenantId": "t",
            "createdAt": "2025-01-01T00:00:00Z",
            "lastUpdatedAt": "2025-02-01T00:00:00Z",
        }
    )
    created = [reconcile_created("t", group) for _ in range(2)]
    deleted = [reconcile_deleted("t", "g2", at) for at in (NOW, datetime(2026, 5, 1, tzinfo=UTC))]
    assert created[0] == created[1] and deleted[0]["id"] == deleted[1]["id"] != created[0]["id"]
    for document, change in ((created[0], "created"), (deleted[0], "deleted")):
        record = group_change(event_of(document))
        assert (record["change"], record["source_system"]) == (change, "reconciliation")
    assert orjson.loads(outgoing(deleted[0], "reconcile", NOW).value)["data"]["name"] == "g2"
