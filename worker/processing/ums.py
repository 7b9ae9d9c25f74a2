"""UMS user-group webhooks (`UserGroupUpdatedV1` and its siblings): the second input format. Pure.

Promises: the pydantic models of the webhook wrapper and its `data` as the seed documents them
(`tests/fixtures/ums-usergroup-updated-v1-webhook.txt`), how a message is recognised as one, and which group
change it reports. The decoding flow (and its dead-letter reasons) is in `worker/processing/decode.py`, next to the
CloudEvents one, so both formats give the same `Event`.

Rules, from the seed and its example:
- The wrapper is not a CloudEvent: no `specversion`, and `application` says what it is about. Only
  `application: "UserGroup"` is handled; `version` is informational (the example says
  `UserGroupMemberChangeV1` on the `UserGroupUpdatedV1` page), so it is not checked.
- Times may lack the `T` and the zone (`2024-05-14 12:21:11.167`): read as UTC. Times with a zone keep it.
- An empty string (`"parentId": ""`) or null means absent, in the wrapper and in `data`.
- `data` names the tenant only by name (`tenant`); the wrapper's `tenantId` is copied into it, so the data of
  every event, whichever its format, carries `tenant_id` (deduplication and records key on it).
- The event is named by (source `ums`, type = `application`, wrapper `id`), as a CloudEvent is by
  (source, type, id): deduplication and record ids treat both formats alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from worker.processing.limits import MAX_GROUP_NAME

UMS_SOURCE: Final = "ums"
UMS_TYPE: Final = "UserGroup"  # the wrapper's `application`; also the event type label of UMS messages

Change = Literal["created", "updated", "deleted", "deactivated"]

# Spellings of `data.action` (compared lower-cased). The seed documents only "Update"; the other verbs are
# assumed from the data's flags (isDeleted, isDeactivated) and accepted with or without the past tense.
ACTIONS: Final[dict[str, Change]] = {
    "create": "created",
    "created": "created",
    "update": "updated",
    "updated": "updated",
    "delete": "deleted",
    "deleted": "deleted",
    "deactivate": "deactivated",
    "deactivated": "deactivated",
}


def looks_like_ums(message: object) -> bool:
    """A JSON object without CloudEvents' `specversion` but with the UMS wrapper's `application`."""
    return isinstance(message, dict) and "specversion" not in message and "application" in message


def _text_time(value: object) -> object:
    if not isinstance(value, str):  # pydantic would take numbers as Unix times: not a UMS time
        raise ValueError("a time must be a string like 2024-05-14 12:21:11.167 or 2023-01-20T21:13:25.268Z")
    return value


def _utc_if_naive(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _action(value: object) -> object:
    if not isinstance(value, str):
        return value  # pydantic says what it is
    action = ACTIONS.get(value.strip().lower())
    if action is None:
        raise ValueError(f"unknown action {value[:40]!r}, expected Create, Update, Delete or Deactivate")
    return action


def _json_object(value: object) -> object:
    if not isinstance(value, dict):
        raise ValueError(f"must be an object, not a JSON {type(value).__name__}")
    return value


UmsTime = Annotated[datetime, BeforeValidator(_text_time), AfterValidator(_utc_if_naive)]


class _UmsWire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _without_empty(cls, values: Any) -> Any:
        """Empty strings and nulls mean absent: defaults apply, required fields are reported missing."""
        if isinstance(values, dict):
            return {k: v for k, v in values.items() if v is not None and v != ""}
        return values


class UmsGroup(_UmsWire):
    """`data` of a UMS user-group webhook, plus `tenant_id` copied from the wrapper."""

    id: str | None = None  # of the data event; the wrapper's id names the event
    action: Annotated[Change, BeforeValidator(_action)]
    tenant: str | None = None  # tenant name
    tenant_id: str = Field(min_length=1)
    group_id: str = Field(min_length=1)
    name: str = Field(min_length=1, max_length=MAX_GROUP_NAME)
    type: str | None = None
    parent_id: str | None = None
    external_id: str | None = None
    created_time: UmsTime | None = None
    is_deleted: bool = False
    is_deactivated: bool = False
    last_modified_time: UmsTime | None = None
    deleted_time: UmsTime | None = None
    manager_ids: list[str] = []

    @property
    def change(self) -> Change:
        """The flags say what the group is now: deleted wins over everything, deactivated over an update."""
        if self.is_deleted:
            return "deleted"
        if self.is_deactivated and self.action == "updated":
            return "deactivated"
        return self.action


class UmsEnvelope(_UmsWire):
    """The webhook wrapper, `data` included. `application` comes first: when something else arrives on a UMS
    topic, its first error says so."""

    application: Literal["UserGroup"]
    id: str = Field(min_length=1)
    version: str | None = None
    occurred_at: UmsTime
    tenant_id: str = Field(min_length=1)
    tenant_name: str | None = None
    data: Annotated[UmsGroup, BeforeValidator(_json_object)]
    product_area: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _copy_tenant_id(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("data"), dict):
            return {**values, "data": {**values["data"], "tenantId": values.get("tenantId")}}
        return values

    @property
    def source(self) -> str:
        return UMS_SOURCE

    @property
    def type(self) -> str:
        return self.application

    @property
    def event_time(self) -> datetime:
        """When the group changed: `data.lastModifiedTime`, else the wrapper's `occurredAt`.
        (`deletedTime` is not used: the seed's example sets it on a group that is not deleted.)"""
        return self.data.last_modified_time or self.occurred_at
