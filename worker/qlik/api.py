"""The parts of the Qlik Cloud APIs the upstream jobs call, with the shapes qlik.dev documents (README "Qlik
Cloud APIs" lists them and what the code assumes where the documentation leaves something open):

- Audits: `GET /api/v1/audits` with `eventType`, `eventTime=<start>/<end>`, `sort=+eventTime`, `limit` (≤ 100).
- Groups: `GET /api/v1/groups` (≤ 100 per page).
- Webhooks: `GET /api/v1/webhooks`, `PATCH /api/v1/webhooks/{id}` (JSON Patch of `/enabled`),
  `GET /api/v1/webhooks/{id}/deliveries` (kept 7 days), `POST .../deliveries/{deliveryId}/actions/resend`.
- Users: `GET /api/v1/users/me` (its `tenantId` names the tenant when it is not configured).
Unknown fields are ignored, so newer answers do not break the jobs.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from worker.processing.models import rfc3339
from worker.qlik.client import QlikClient, QlikError

PAGE_LIMIT = 100  # the documented maximum of limit for audits, groups, webhooks and deliveries
DELIVERY_HISTORY_DAYS = 7  # how long Qlik keeps a webhook's deliveries


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class AuditItem(_Wire):
    id: str  # of the audit item
    event_id: str | None = None  # "the event's unique identifier": the CloudEvent id, where Qlik keeps it
    event_time: datetime
    event_type: str
    source: str | None = None
    tenant_id: str | None = None
    user_id: str | None = None
    data: dict[str, Any] | None = None


class Group(_Wire):
    id: str
    name: str
    status: Literal["active", "disabled"] = "active"
    tenant_id: str | None = None
    created_at: datetime
    last_updated_at: datetime
    assigned_roles: list[dict[str, Any]] = []


class Webhook(_Wire):
    id: str
    name: str = ""
    url: str = ""
    enabled: bool = True
    disabled_reason: str | None = None
    disabled_reason_code: str | None = None
    event_types: list[str] = []
    updated_at: datetime | None = None


class Delivery(_Wire):
    id: str
    webhook_id: str | None = None
    event_type: str = ""
    status: Literal["success", "fail"]
    status_message: str | None = None
    triggered_at: datetime
    request: dict[str, Any] = Field(default_factory=dict)

    @property
    def event_id(self) -> str | None:
        """The id of the CloudEvent this delivery carried (`request.body.id`), where the history has the body."""
        body = self.request.get("body")
        if isinstance(body, str | bytes):
            try:
                body = orjson.loads(body)
            except orjson.JSONDecodeError:
                return None
        value = body.get("id") if isinstance(body, dict) else None
        return value if isinstance(value, str) else None


def interval(start: datetime, end: datetime) -> str:
    """An `eventTime` filter: `<start>/<end>`, RFC 3339 with milliseconds, as the documentation's example."""
    return f"{rfc3339(start)}/{rfc3339(end)}"


def audit_pages(client: QlikClient, event_type: str, start: datetime, end: datetime) -> Iterator[list[AuditItem]]:
    """The audit items of one event type in [start, end], oldest first, a page at a time."""
    params = {"eventType": event_type, "eventTime": interval(start, end), "sort": "+eventTime", "limit": PAGE_LIMIT}
    for page in client.pages("/api/v1/audits", params):
        yield [AuditItem.model_validate(item) for item in page.get("data") or []]


def groups(client: QlikClient) -> Iterator[Group]:
    for page in client.pages("/api/v1/groups", {"limit": PAGE_LIMIT}):
        yield from (Group.model_validate(item) for item in page.get("data") or [])


def webhooks(client: QlikClient) -> list[Webhook]:
    pages = client.pages("/api/v1/webhooks", {"limit": PAGE_LIMIT})
    return [Webhook.model_validate(item) for page in pages for item in page.get("data") or []]


def deliveries(client: QlikClient, webhook_id: str, since: datetime) -> list[Delivery]:
    """A webhook's deliveries triggered at or after `since`, newest first (pages stop once past `since`)."""
    out: list[Delivery] = []
    params = {"sort": "-triggeredAt", "limit": PAGE_LIMIT}
    for page in client.pages(f"/api/v1/webhooks/{webhook_id}/deliveries", params):
        batch = [Delivery.model_validate(item) for item in page.get("data") or []]
        out += [d for d in batch if d.triggered_at >= since]
        if any(d.triggered_at < since for d in batch):
            break
    return out


def resend(client: QlikClient, webhook_id: str, delivery_id: str) -> Delivery:
    path = f"/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/actions/resend"
    return Delivery.model_validate(client.request("POST", path).json())


def enable(client: QlikClient, webhook_id: str) -> None:
    patch = [{"op": "replace", "path": "/enabled", "value": True}]
    client.request("PATCH", f"/api/v1/webhooks/{webhook_id}", body=patch)


def tenant_id(client: QlikClient) -> str:
    """The configured tenant id, else the one `GET /api/v1/users/me` names."""
    if client.tenant.tenant_id:
        return client.tenant.tenant_id
    value = client.get("/api/v1/users/me").get("tenantId")
    if not isinstance(value, str) or not value:
        raise QlikError(f"GET /api/v1/users/me on tenant {client.tenant.name!r}: no tenantId in the answer")
    return value
