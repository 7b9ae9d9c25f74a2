"""Pydantic models of the input: the CloudEvents envelope and the data of the four Qlik group event types.

Field rules follow the seed (`tests/fixtures/qlik-group-events.txt` is the source document): required fields
are required, enums are closed, unknown extra fields are ignored so newer producers do not break us.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue
from pydantic.alias_generators import to_camel

GROUP_CREATED = "com.qlik.v1.group.created"
GROUP_UPDATED = "com.qlik.v1.group.updated"
GROUP_DELETED = "com.qlik.v1.group.deleted"
USERS_MODIFIED = "com.qlik.v1.group.users.modified"

# Qlik Cloud limits group names to 256 characters (API changelog, "Group validation updates").
MAX_GROUP_NAME = 256


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class Role(_Wire):
    id: str
    name: str
    type: Literal["default", "custom"]
    level: Literal["admin", "user"]


class Update(_Wire):
    path: str | None = None
    new_value: JsonValue = None
    old_value: JsonValue = None


class Group(_Wire):
    """`data` of group.created and group.deleted."""

    id: str = Field(min_length=1)
    name: str = Field(min_length=1, max_length=MAX_GROUP_NAME)
    idp_id: str | None = None
    status: Literal["active", "disabled"]
    tenant_id: str = Field(min_length=1)
    created_at: AwareDatetime
    created_by: str | None = None
    updated_by: str | None = None
    description: str | None = None
    provider_type: Literal["idp", "custom"] | None = None
    assigned_roles: list[Role] = []
    last_updated_at: AwareDatetime


class GroupUpdate(Group):
    """`data` of group.updated."""

    updates: list[Update] = []


class UsersModified(GroupUpdate):
    """`data` of group.users.modified: one part of a possibly multi-part change.

    `fullyProcessed` absent means a single-part change (nothing more is announced); `deleted` absent means
    the group was updated, not deleted.
    """

    deleted: bool = False
    affected_users: list[str] = []
    fully_processed: bool = True


DATA_MODELS: dict[str, type[Group]] = {
    GROUP_CREATED: Group,
    GROUP_UPDATED: GroupUpdate,
    GROUP_DELETED: Group,
    USERS_MODIFIED: UsersModified,
}


class Envelope(BaseModel):
    """CloudEvents 1.0 context attributes we rely on (extension names are lower-case by the spec)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    specversion: Literal["1.0"]
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    time: AwareDatetime | None = None
    datacontenttype: str | None = None
    userid: str | None = None
    tenantid: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded, validated event of a known type."""

    envelope: Envelope
    data: Group


def rfc3339(value: datetime) -> str:
    """Canonical UTC text of a timestamp: the same instant always prints the same way."""
    text = value.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")
