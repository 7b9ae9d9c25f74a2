"""Output record shapes, their deterministic ids, and their JSON encoding. Pure.

Two shapes, both JSON objects keyed `"<tenant_id>:<group_id>"` on the output topic:
- `membership_change/v1`: one per (change, affected user) of a `users.modified` change;
- `group_change/v1`: one per group created/updated/deleted event, from either input format: a Qlik Cloud
  CloudEvent (`source_system: "qlik-cloud"`, or `"reconciliation"` for a reconciliation's correction) or a UMS
  webhook (`"ums"`), so both make one stream. Fields one format does not have are null or empty in its records.
  Fields are only ever added to a schema version, and an added field is optional in the JSON Schema, so records
  written before it stay valid.
Both carry `superseded`: the group already showed a newer occurrence (`worker/processing/recency.py`).
`record_id` is a digest of what identifies the record, so any copy of a record has the same id.
The JSON Schemas in `worker/processing/schemas/` are generated from the TypedDicts below (`make schemas`).
"""

from __future__ import annotations

import hashlib
import json
from binascii import hexlify
from collections.abc import Iterable
from pathlib import Path
from typing import Final, Literal, NotRequired

import orjson
from pydantic import JsonValue, TypeAdapter
from typing_extensions import TypedDict

from worker.processing.models import (
    GROUP_CREATED,
    GROUP_DELETED,
    GROUP_UPDATED,
    Event,
    Group,
    GroupUpdate,
    UsersModified,
    rfc3339,
)
from worker.processing.ums import UmsEnvelope

# The source of the CloudEvents a reconciliation sends (worker/upstream/reconcile.py): their records say
# `source_system: "reconciliation"`, so a reader tells a correction from a change Qlik reported.
RECONCILIATION_SOURCE: Final = "group-events-worker/reconcile"
MEMBERSHIP: Final = "membership_change/v1"
GROUP: Final = "group_change/v1"
SCHEMA_DIR = Path(__file__).parent / "schemas"

_SEP = "\x1f"  # unit separator: cannot appear in ids taken from JSON strings by accident
_MEMBERSHIP_HEAD = b'{"schema":"' + MEMBERSHIP.encode() + b'","record_id":"'
_GROUP_CHANGE: dict[str, Literal["created", "updated", "deleted"]] = {
    GROUP_CREATED: "created",
    GROUP_UPDATED: "updated",
    GROUP_DELETED: "deleted",
}


class UpdateRecord(TypedDict):
    path: str | None
    newValue: JsonValue
    oldValue: JsonValue


class RoleRecord(TypedDict):
    id: str
    name: str
    type: str
    level: str


class ChangeInfo(TypedDict):
    """What every membership record of one change shares; stored with the change while it is open."""

    change_id: str
    tenant_id: str
    group_id: str
    group_name: str
    change: Literal["group_updated", "group_deleted"]
    updates: list[UpdateRecord]
    occurred_at: str


class MembershipChange(ChangeInfo):
    schema: Literal["membership_change/v1"]
    record_id: str
    user_id: str
    complete: bool
    late: bool
    event_id: str
    # Added to v1 (issue 20): always written, optional in the schema (a reader takes a missing one as false).
    # True: the group already showed a newer occurrence when this was emitted (worker/processing/recency.py).
    superseded: NotRequired[bool]


class GroupChange(TypedDict):
    schema: Literal["group_change/v1"]
    record_id: str
    tenant_id: str
    group_id: str
    group_name: str
    change: Literal["created", "updated", "deleted", "deactivated"]  # deactivated: UMS only
    status: Literal["active", "disabled"]
    provider_type: Literal["idp", "custom"] | None
    idp_id: str | None
    assigned_roles: list[RoleRecord]
    updates: list[UpdateRecord]
    occurred_at: str
    event_id: str
    # Added to v1 with the UMS source: always written, but not required, so records written before still
    # validate against the schema (a reader takes a missing source_system as "qlik-cloud").
    source_system: NotRequired[Literal["qlik-cloud", "ums", "reconciliation"]]
    parent_group_id: NotRequired[str | None]  # UMS only
    external_id: NotRequired[str | None]  # UMS only
    manager_ids: NotRequired[list[str]]  # UMS only
    # Added to v1 (issue 20), as in MembershipChange: an event older than what its group already showed.
    superseded: NotRequired[bool]


def digest(*parts: str) -> str:
    return hashlib.blake2b(_SEP.join(parts).encode(), digest_size=16).hexdigest()


def change_info(event: Event) -> ChangeInfo:
    data = event.data
    assert isinstance(data, UsersModified)
    occurred_at = rfc3339(data.last_updated_at)
    return {
        "change_id": digest(data.tenant_id, data.id, occurred_at, "deleted" if data.deleted else "updated"),
        "tenant_id": data.tenant_id,
        "group_id": data.id,
        "group_name": data.name,
        "change": "group_deleted" if data.deleted else "group_updated",
        "updates": _updates(data),
        "occurred_at": occurred_at,
    }


def membership_change(
    info: ChangeInfo, user_id: str, event_id: str, *, complete: bool, late: bool, superseded: bool = False
) -> MembershipChange:
    return {
        "schema": MEMBERSHIP,
        "record_id": digest(MEMBERSHIP, info["change_id"], user_id),
        **info,
        "user_id": user_id,
        "complete": complete,
        "late": late,
        "event_id": event_id,
        "superseded": superseded,
    }


class MembershipRecords:
    """The membership records of one change's emission as (key, value) bytes, exactly
    `(record_key(r), encode(r))` of `membership_change(info, user, event_id, ...)` for each user, at a fraction
    of the cost: what all records of the change share (key, the JSON of `info`, the digest's prefix) is built
    once, and each record's JSON is that plus its own fields, as orjson prints them (compact, keys in the
    record's order), instead of a dict spread and a dump of the whole of `info` per user."""

    def __init__(self, info: ChangeInfo, *, complete: bool, late: bool, superseded: bool = False) -> None:
        self.key = f"{info['tenant_id']}:{info['group_id']}".encode()
        self._digest = hashlib.blake2b(_SEP.join((MEMBERSHIP, info["change_id"], "")).encode(), digest_size=16)
        shared = orjson.dumps(info)[1:-1]  # its fields, between the schema/record_id and the user's
        self._middle = b'",' + shared + b',"user_id":' if shared else b'","user_id":'
        self._flags = b',"complete":' + orjson.dumps(complete) + b',"late":' + orjson.dumps(late) + b',"event_id":'
        self._tail = b',"superseded":' + orjson.dumps(superseded) + b"}"

    def value(self, user_id: str, event_id: str) -> bytes:
        return self.values([(user_id, event_id)])[0]

    def values(self, users: Iterable[tuple[str, str]]) -> list[bytes]:
        """`value` of each (user, event id), in one pass: a change's users come in runs of one part's event id,
        whose JSON is printed once per run."""
        copy, head, middle, flags, tail = self._digest.copy, _MEMBERSHIP_HEAD, self._middle, self._flags, self._tail
        out: list[bytes] = []
        last_event: str | None = None
        event_json = b""
        for user_id, event_id in users:
            if event_id != last_event:
                last_event, event_json = event_id, orjson.dumps(event_id)
            hasher = copy()
            hasher.update(user_id.encode())
            out.append(
                b"".join((head, hexlify(hasher.digest()), middle, orjson.dumps(user_id), flags, event_json, tail))
            )
        return out


def group_change(event: Event, *, superseded: bool = False) -> GroupChange:
    """The record of a group created/updated/deleted event (a UMS webhook, or a CloudEvent of those types)."""
    envelope, data = event.envelope, event.data
    record_id = digest(GROUP, data.tenant_id, envelope.source, envelope.type, envelope.id)
    if isinstance(envelope, UmsEnvelope):
        ums = envelope.data
        return {
            "schema": GROUP,
            "record_id": record_id,
            "tenant_id": ums.tenant_id,
            "group_id": ums.group_id,
            "group_name": ums.name,
            "change": ums.change,
            "status": "disabled" if ums.is_deactivated else "active",
            "provider_type": None,
            "idp_id": None,
            "assigned_roles": [],
            "updates": [],
            "occurred_at": rfc3339(envelope.event_time),
            "event_id": envelope.id,
            "source_system": "ums",
            "parent_group_id": ums.parent_id,
            "external_id": ums.external_id,
            "manager_ids": list(ums.manager_ids),
            "superseded": superseded,
        }
    assert isinstance(data, Group)  # a CloudEvents envelope comes with a CloudEvents data model
    return {
        "schema": GROUP,
        "record_id": record_id,
        "tenant_id": data.tenant_id,
        "group_id": data.id,
        "group_name": data.name,
        "change": _GROUP_CHANGE[envelope.type],
        "status": data.status,
        "provider_type": data.provider_type,
        "idp_id": data.idp_id,
        "assigned_roles": [{"id": r.id, "name": r.name, "type": r.type, "level": r.level} for r in data.assigned_roles],
        "updates": _updates(data),
        "occurred_at": rfc3339(data.last_updated_at),
        "event_id": envelope.id,
        "source_system": "reconciliation" if envelope.source == RECONCILIATION_SOURCE else "qlik-cloud",
        "parent_group_id": None,
        "external_id": None,
        "manager_ids": [],
        "superseded": superseded,
    }


def record_key(record: GroupChange | MembershipChange) -> bytes:
    return f"{record['tenant_id']}:{record['group_id']}".encode()


def encode(record: GroupChange | MembershipChange | ChangeInfo) -> bytes:
    return orjson.dumps(record)


def _updates(data: object) -> list[UpdateRecord]:
    if not isinstance(data, GroupUpdate):
        return []
    return [{"path": u.path, "newValue": u.new_value, "oldValue": u.old_value} for u in data.updates]


def json_schemas() -> dict[str, dict[str, object]]:
    """File name -> JSON Schema of each record shape."""
    return {
        "membership_change.v1.json": TypeAdapter(MembershipChange).json_schema(),
        "group_change.v1.json": TypeAdapter(GroupChange).json_schema(),
    }


def write_schemas() -> None:
    for name, schema in json_schemas().items():
        (SCHEMA_DIR / name).write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
