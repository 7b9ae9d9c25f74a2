"""worker.processing.records: record shapes, deterministic ids, keys, and the committed JSON Schemas."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from worker.processing.models import Event, Group, rfc3339
from worker.processing.records import (
    GROUP,
    MEMBERSHIP,
    SCHEMA_DIR,
    ChangeInfo,
    GroupChange,
    MembershipChange,
    MembershipRecords,
    change_info,
    encode,
    group_change,
    json_schemas,
    membership_change,
    record_key,
    write_schemas,
)

TENANT = "VZhiEfgW2bLd7HgR-jjzAh6VnicipweT"
GROUP_ID = "507f191e810c19729de860ea"
ROLES = [{"id": GROUP_ID, "name": "My Custom Role", "type": "custom", "level": "user"}]
SEED_UPDATES = [{"path": "/attributePath", "newValue": "Dan", "oldValue": "Dylan"}]


@pytest.fixture(scope="module")
def event(structured, decoded):
    """Decoded Event of a (modified) seed example."""

    def build(name: str = "group-users-modified", envelope=None, data=None) -> Event:
        return decoded(structured(name, envelope=envelope, data=data))

    return build


def change_id(event, **data) -> str:
    return change_info(event(data=data))["change_id"]


# --- ids ----------------------------------------------------------------------------------------------------------


def test_two_parts_of_one_change_share_the_change_id(event):
    part_1 = event(envelope={"id": "evt-1"}, data={"affectedUsers": ["u1", "u2"], "fullyProcessed": False})
    part_2 = event(envelope={"id": "evt-2"}, data={"affectedUsers": ["u3"], "fullyProcessed": True})
    assert change_info(part_1) == change_info(part_2)


@pytest.mark.parametrize(
    "other",
    [
        {"deleted": False},
        {"lastUpdatedAt": "2021-03-22T10:01:03Z"},
        {"lastUpdatedAt": "2021-03-22T10:01:02.001Z"},
        {"id": "another-group"},
    ],
    ids=["deleted differs", "lastUpdatedAt +1s", "lastUpdatedAt +1ms", "group differs"],
)
def test_change_id_differs_when_the_change_differs(event, other):
    assert change_id(event, deleted=True) != change_id(event, **{"deleted": True, **other})


def test_change_id_differs_per_tenant(event):
    other = event(envelope={"tenantid": "other-tenant"}, data={"tenantId": "other-tenant"})
    assert change_info(other)["change_id"] != change_info(event())["change_id"]


@pytest.mark.parametrize(
    "written",
    ["2021-03-22T10:01:02Z", "2021-03-22T10:01:02.000+00:00", "2021-03-22T12:01:02+02:00", "2021-03-22T10:01:02.000Z"],
)
def test_change_id_does_not_depend_on_how_lastupdatedat_is_written(event, written):
    assert change_id(event, lastUpdatedAt=written) == change_id(event, lastUpdatedAt="2021-03-22T10:01:02Z")
    assert change_info(event(data={"lastUpdatedAt": written}))["occurred_at"] == "2021-03-22T10:01:02.000Z"


def test_membership_record_id_is_deterministic(event):
    info = change_info(event())
    first = membership_change(info, "u1", "evt-1", complete=True, late=False)
    copy = membership_change(change_info(event()), "u1", "evt-1", complete=True, late=False)
    # another copy of the same user's record (emitted again by a replay, or late): still the same record
    replayed = membership_change(info, "u1", "evt-9", complete=False, late=True)
    assert first["record_id"] == copy["record_id"] == replayed["record_id"]
    assert len(first["record_id"]) == 32 and int(first["record_id"], 16) >= 0


def test_membership_record_id_differs_per_user_and_per_change(event):
    info = change_info(event())
    other_change = change_info(event(data={"deleted": False}))
    ids = {
        membership_change(info, "u1", "e", complete=True, late=False)["record_id"],
        membership_change(info, "u2", "e", complete=True, late=False)["record_id"],
        membership_change(other_change, "u1", "e", complete=True, late=False)["record_id"],
    }
    assert len(ids) == 3


def test_group_record_id_is_deterministic_and_differs_per_event(event):
    assert group_change(event("group-created"))["record_id"] == group_change(event("group-created"))["record_id"]
    ids = {
        group_change(event("group-created"))["record_id"],
        group_change(event("group-created", envelope={"id": "another-event"}))["record_id"],
        group_change(event("group-updated"))["record_id"],
        group_change(event("group-deleted"))["record_id"],
    }
    assert len(ids) == 4


def test_ids_cannot_collide_by_shifting_text_between_fields(event):
    a = event(envelope={"tenantid": "ab"}, data={"tenantId": "ab", "id": "c"})
    b = event(envelope={"tenantid": "a"}, data={"tenantId": "a", "id": "bc"})
    assert change_info(a)["change_id"] != change_info(b)["change_id"]


# --- record contents ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "change", "updates"),
    [("group-created", "created", []), ("group-updated", "updated", SEED_UPDATES), ("group-deleted", "deleted", [])],
)
def test_group_change_of_each_seed_example(event, name, change, updates):
    record = group_change(event(name))
    expected = {
        "schema": GROUP,
        "tenant_id": TENANT,
        "group_id": GROUP_ID,
        "group_name": "Development",
        "change": change,
        "status": "active",
        "provider_type": "idp",
        "idp_id": "4ecbe7f9e8c1c9092c000027",
        "assigned_roles": ROLES,
        "updates": updates,
        "occurred_at": "2021-03-22T10:01:02.000Z",
        "event_id": "A234-1234-1234",
    }
    # fields are only ever added to a schema version: compare the ones the Qlik seed defines
    assert {key: record[key] for key in expected if key in record} == expected


def test_group_change_with_optional_fields_absent(event):
    record = group_change(event("group-created", data={"providerType": ..., "idpId": ..., "assignedRoles": ...}))
    assert (record["provider_type"], record["idp_id"], record["assigned_roles"]) == (None, None, [])
    disabled = group_change(event("group-updated", data={"status": "disabled", "providerType": "custom"}))
    assert (disabled["status"], disabled["provider_type"]) == ("disabled", "custom")


def test_change_info_and_membership_change_of_the_users_modified_seed(event):
    info = change_info(event())
    assert {key: value for key, value in info.items() if key != "change_id"} == {
        "tenant_id": TENANT,
        "group_id": GROUP_ID,
        "group_name": "Development",
        "change": "group_deleted",
        "updates": SEED_UPDATES,
        "occurred_at": "2021-03-22T10:01:02.000Z",
    }
    assert change_info(event(data={"deleted": False}))["change"] == "group_updated"
    record = membership_change(info, TENANT, "A234-1234-1234", complete=True, late=False)
    assert record["schema"] == MEMBERSHIP
    assert (record["user_id"], record["event_id"], record["complete"], record["late"]) == (
        TENANT,
        "A234-1234-1234",
        True,
        False,
    )
    assert {key: record[key] for key in info} == info


def test_update_values_keep_their_json_types(event):
    updates = [{"path": "/roles", "newValue": ["a", {"b": 1}], "oldValue": None}, {"newValue": 3}]
    record = group_change(event("group-updated", data={"updates": updates}))
    assert record["updates"] == [
        {"path": "/roles", "newValue": ["a", {"b": 1}], "oldValue": None},
        {"path": None, "newValue": 3, "oldValue": None},
    ]


# --- shapes -------------------------------------------------------------------------------------------------------


def all_records(event) -> list[tuple[type, dict]]:
    info = change_info(event())
    return [
        (GroupChange, group_change(event("group-created"))),
        (GroupChange, group_change(event("group-updated"))),
        (GroupChange, group_change(event("group-deleted"))),
        (ChangeInfo, info),
        (MembershipChange, membership_change(info, "u1", "evt-1", complete=False, late=True)),
    ]


def test_records_validate_against_their_typeddicts(event):
    for shape, record in all_records(event):
        adapter = TypeAdapter(shape)
        assert adapter.validate_python(record, strict=True) == record
        assert adapter.validate_json(encode(record), strict=True) == record


def test_typeddict_validation_would_catch_a_wrong_record(event):
    record = dict(group_change(event("group-created")), status="archived")
    with pytest.raises(ValidationError):
        TypeAdapter(GroupChange).validate_python(record)
    del record["status"]
    with pytest.raises(ValidationError):
        TypeAdapter(GroupChange).validate_python(record)


def test_encode_is_compact_json(event):
    record = group_change(event("group-updated"))
    encoded = encode(record)
    assert isinstance(encoded, bytes) and orjson.loads(encoded) == record
    assert b"\n" not in encoded


@pytest.mark.parametrize("name", ["membership_change.v1.json", "group_change.v1.json"])
def test_committed_json_schema_matches_the_typeddicts(name):
    generated = json_schemas()[name]
    path = SCHEMA_DIR / name
    assert path.exists(), f"{path} is missing: run `make schemas`"
    assert json.loads(path.read_text()) == generated, f"{path} is stale: run `make schemas`"
    assert path.read_text() == json.dumps(generated, indent=2, sort_keys=True) + "\n", f"{path}: run `make schemas`"


def test_every_schema_file_is_generated():
    assert {path.name for path in SCHEMA_DIR.glob("*.json")} == set(json_schemas())


# Fields added to group_change/v1 with the UMS source (issue 7) and to both with supersession (issue 20): optional,
# so older records stay valid.
ADDED_TO_GROUP_V1 = {"source_system", "parent_group_id", "external_id", "manager_ids", "superseded"}
ADDED_TO_MEMBERSHIP_V1 = {"superseded"}


def test_schemas_require_every_field_but_those_added_later(event):
    for shape, record in all_records(event):
        if shape is ChangeInfo:
            continue
        schema = json_schemas()["group_change.v1.json" if shape is GroupChange else "membership_change.v1.json"]
        added = ADDED_TO_GROUP_V1 if shape is GroupChange else ADDED_TO_MEMBERSHIP_V1
        assert set(record) == set(schema["properties"]), "the worker writes every field"
        assert set(schema["required"]) == set(record) - added


def test_a_group_record_written_before_the_ums_fields_still_validates(event):
    record = group_change(event("group-created"))
    older = {key: value for key, value in record.items() if key not in ADDED_TO_GROUP_V1}
    assert TypeAdapter(GroupChange).validate_python(older, strict=True) == older


def test_records_written_before_superseded_still_validate_against_the_committed_schemas(event):
    """A reader validating with the shipped JSON Schema (not our TypedDicts) takes a record from before."""
    jsonschema = pytest.importorskip("jsonschema")
    info = change_info(event())
    for name, record in (
        ("group_change.v1.json", group_change(event("group-deleted"), superseded=True)),
        ("membership_change.v1.json", membership_change(info, "u1", "e1", complete=True, late=False, superseded=True)),
    ):
        schema = json.loads((SCHEMA_DIR / name).read_text())
        jsonschema.validate(orjson.loads(encode(record)), schema)
        older = {key: value for key, value in record.items() if key != "superseded"}
        jsonschema.validate(older, schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**record, "superseded": "yes"}, schema)


def test_write_schemas_writes_what_json_schemas_returns(tmp_path, monkeypatch):
    monkeypatch.setattr("worker.processing.records.SCHEMA_DIR", tmp_path)
    write_schemas()
    for name, schema in json_schemas().items():
        assert json.loads((tmp_path / name).read_text()) == schema


# --- keys ---------------------------------------------------------------------------------------------------------


def test_record_key_is_tenant_and_group(event):
    expected = f"{TENANT}:{GROUP_ID}".encode()
    info = change_info(event())
    assert record_key(group_change(event("group-created"))) == expected
    assert record_key(membership_change(info, "u1", "e1", complete=True, late=False)) == expected


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
INFOS = st.fixed_dictionaries(
    {
        "change_id": st.text(),
        "tenant_id": st.text(),
        "group_id": st.text(),
        "group_name": st.text(),
        "change": st.sampled_from(["group_updated", "group_deleted"]),
        "updates": st.lists(
            st.fixed_dictionaries({"path": st.none() | st.text(), "newValue": JSON_VALUES, "oldValue": JSON_VALUES}),
            max_size=3,
        ),
        "occurred_at": st.text(),
    }
)


@given(
    INFOS,
    st.lists(st.tuples(st.text(), st.sampled_from(["event-1", "event-2", 'ê"\\']) | st.text()), min_size=1, max_size=8),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_membership_records_are_the_bytes_of_the_records(info, users, complete, late, superseded):
    records = MembershipRecords(info, complete=complete, late=late, superseded=superseded)
    expected = []
    for user, event_id in users:
        record = membership_change(info, user, event_id, complete=complete, late=late, superseded=superseded)
        assert records.key == record_key(record)
        assert records.value(user, event_id) == encode(record)
        expected.append(encode(record))
    assert records.values(users) == expected  # in one pass, runs of one event id included


def test_membership_records_of_the_users_modified_seed(event):
    info = change_info(event())
    record = membership_change(info, "user-1", "event-1", complete=True, late=False)
    assert MembershipRecords(info, complete=True, late=False).value("user-1", "event-1") == encode(record)


AWARE = st.datetimes(
    min_value=datetime(2, 1, 1),
    max_value=datetime(9998, 12, 31),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(0)), timezone(timedelta(hours=14)), timezone(-timedelta(hours=12, minutes=30))]
    ),
)


@given(value=AWARE | st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)))
def test_rfc3339_is_isoformat_in_utc_to_the_millisecond(value: datetime) -> None:
    """Record ids hash this text: the fast form must print exactly what isoformat printed (naive: local time)."""
    expected = value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert rfc3339(value) == expected


@pytest.mark.parametrize(
    "text",
    ["2024-02-01T00:00:00Z", "2024-02-01T00:00:00+00:00", "2024-02-01T23:30:00.5+02:00", "0999-12-31T23:59:59.999999Z"],
)
def test_rfc3339_of_parsed_timestamps(text: str) -> None:
    """pydantic's own tzinfo (what the models give), zero and other offsets."""
    parsed = Group.model_validate(
        {"id": "g", "name": "n", "status": "active", "tenantId": "t", "createdAt": text, "lastUpdatedAt": text}
    ).created_at
    expected = parsed.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert rfc3339(parsed) == expected
