"""Pydantic models of the input: the CloudEvents envelope and the data of the four Qlik group event types,
and `Event`, what decoding gives for either input format (the UMS webhook models are in `worker/processing/ums.py`).

Field rules follow the seed (`tests/fixtures/qlik-group-events.txt` is the source document): required fields
are required, enums are closed, unknown extra fields are ignored so newer producers do not break us.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, GetCoreSchemaHandler, JsonValue, TypeAdapter
from pydantic.alias_generators import to_camel
from pydantic_core import CoreSchema, core_schema

from worker.processing.limits import MAX_GROUP_NAME
from worker.processing.ums import UmsEnvelope, UmsGroup

GROUP_CREATED = "com.qlik.v1.group.created"
GROUP_UPDATED = "com.qlik.v1.group.updated"
GROUP_DELETED = "com.qlik.v1.group.deleted"
USERS_MODIFIED = "com.qlik.v1.group.users.modified"


class _Rfc3339:
    """A timezone-aware timestamp given as RFC 3339 text (or a datetime), validated by pydantic's Rust core
    alone: a number is not one (pydantic would read it as epoch seconds), a string without zone is refused."""

    @classmethod
    def __get_pydantic_core_schema__(cls, _source: Any, _handler: GetCoreSchemaHandler) -> CoreSchema:
        text_or_datetime = core_schema.union_schema(
            [core_schema.str_schema(strict=True), core_schema.datetime_schema(strict=True)]
        )
        return core_schema.chain_schema(
            [
                core_schema.custom_error_schema(
                    text_or_datetime,
                    custom_error_type="rfc3339_text",
                    custom_error_message="Value error, must be an RFC 3339 timestamp string",
                ),
                core_schema.datetime_schema(tz_constraint="aware"),
            ]
        )


Timestamp = Annotated[datetime, _Rfc3339]
# Producers that serialise empty lists as null (Go's nil slices) mean "none".
EmptyIfNull = BeforeValidator(lambda value: [] if value is None else value)


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
    created_at: Timestamp
    created_by: str | None = None
    updated_by: str | None = None
    description: str | None = None
    provider_type: Literal["idp", "custom"] | None = None
    assigned_roles: Annotated[list[Role], EmptyIfNull] = []
    last_updated_at: Timestamp


class GroupUpdate(Group):
    """`data` of group.updated."""

    updates: Annotated[list[Update], EmptyIfNull] = []


class UsersModified(GroupUpdate):
    """`data` of group.users.modified: one part of a possibly multi-part change.

    `fullyProcessed` absent means a single-part change (nothing more is announced); `deleted` absent means
    the group was updated, not deleted.
    """

    deleted: bool = False
    affected_users: Annotated[list[str], EmptyIfNull] = []
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
    time: Timestamp | None = None
    datacontenttype: str | None = None
    userid: str | None = None
    tenantid: str | None = None


class _Whole(Envelope):
    """A CloudEvent of a known type with its `data` (an object), validated in one call: the common case.
    Anything this does not accept is validated again step by step (`worker/processing/decode.py`), for the reason."""

    data: Group


class _Created(_Whole):
    type: Literal["com.qlik.v1.group.created"]


class _Deleted(_Whole):
    type: Literal["com.qlik.v1.group.deleted"]


class _Updated(_Whole):
    type: Literal["com.qlik.v1.group.updated"]
    data: GroupUpdate


class _UsersModified(_Whole):
    type: Literal["com.qlik.v1.group.users.modified"]
    data: UsersModified


# The envelope and `data` of a known type in one validation, the type choosing the data model.
WHOLE_EVENT: TypeAdapter[_Whole] = TypeAdapter(
    Annotated[_Created | _Deleted | _Updated | _UsersModified, Field(discriminator="type")]
)


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded, validated event of a known type: a CloudEvent (`Envelope`, a `Group` model) or a UMS webhook
    (`UmsEnvelope`, its `UmsGroup` data). Both envelopes name the event by `source`, `type` and `id`, and both
    data carry `tenant_id`: deduplication and record ids read only those, whichever the format."""

    envelope: Envelope | UmsEnvelope
    data: Group | UmsGroup


def rfc3339(value: datetime) -> str:
    """Canonical UTC text of a timestamp, to the millisecond: the same instant always prints the same way, as
    `value.astimezone(UTC).isoformat(timespec="milliseconds")` with `Z` for `+00:00` (record ids depend on
    it). orjson prints it in half the time: `YYYY-MM-DDTHH:MM:SS`, then `.ffffff` unless the microseconds are
    0, then `Z` (in quotes)."""
    offset = value.utcoffset()
    if offset is None or offset:  # naive (local time, as astimezone takes it), or not UTC
        value = value.astimezone(UTC)
    text = orjson.dumps(value, option=orjson.OPT_UTC_Z)
    if len(text) == 22:  # no fraction
        return text[1:20].decode() + ".000Z"
    return text[1:24].decode() + "Z"
