"""UMS user-group webhooks, the second input format: the seed example decodes verbatim, the format is told
apart from CloudEvents, malformed webhooks are rejected with their own reasons, and the records join the
CloudEvents ones in one stream."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from worker.local.samples import UMS_EXAMPLE, expected_counts, samples
from worker.processing.decode import Rejected, decode
from worker.processing.models import Envelope, Event
from worker.processing.records import GROUP, GroupChange, digest, encode, group_change, json_schemas
from worker.processing.stores import dedupe_id
from worker.processing.ums import UMS_SOURCE, UMS_TYPE, UmsEnvelope, UmsGroup, looks_like_ums

SEED_DOC = "ums-usergroup-updated-v1-webhook.txt"
TENANT = "b4d8bb18-dc97-4e18-8049-50a04edf453f"
GROUP_ID = "f68c05b7-b6a0-46bf-9b6d-d8fecd31db21"
EVENT_ID = "4d22c89a-6c2f-4b36-8cd8-218973dfe04f"
MANAGERS = ["62f6aa49-64d0-4c3e-aa3b-f8f02d4caaf7", "f15b1448-0af4-47bc-a1c5-ea5740fc7c1f"]


@pytest.fixture(scope="module")
def fixtures_dir(seed_dir):
    return seed_dir.parent


@pytest.fixture(scope="module")
def seed_ums(fixtures_dir) -> bytes:
    return (fixtures_dir / "ums-usergroup-updated.json").read_bytes()


def ums(seed: bytes, envelope: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> bytes:
    """The seed example with overrides; a value of `...` removes the key."""
    message = copy.deepcopy(orjson.loads(seed))
    for target, overrides in ((message["data"], data), (message, envelope)):
        for key, value in (overrides or {}).items():
            if value is ...:
                target.pop(key, None)
            else:
                target[key] = value
    return orjson.dumps(message)


def event_of(value: bytes, headers: Any = None, format: Any = None) -> Event:
    result = decode(value, headers, format)
    assert isinstance(result, Event), result
    assert isinstance(result.envelope, UmsEnvelope) and isinstance(result.data, UmsGroup)
    return result


def rejected(value: bytes | None, headers: Any = None, format: Any = None) -> Rejected:
    result = decode(value, headers, format)
    assert isinstance(result, Rejected), result
    return result


# ---- the seed example ------------------------------------------------------------------------------------------


def test_fixture_and_packaged_example_are_the_seed_example_verbatim(fixtures_dir, seed_ums):
    doc = (fixtures_dir / SEED_DOC).read_text()
    assert seed_ums.decode().rstrip("\n") in doc
    assert seed_ums == (files("worker.local") / "examples" / f"{UMS_EXAMPLE}.json").read_bytes()


def test_seed_example_decodes_verbatim(seed_ums):
    event = event_of(seed_ums)
    envelope, data = event.envelope, event.data
    assert isinstance(envelope, UmsEnvelope) and isinstance(data, UmsGroup)
    assert (envelope.id, envelope.tenant_id, envelope.tenant_name) == (EVENT_ID, TENANT, "fsdev")
    assert envelope.version == "UserGroupMemberChangeV1"  # informational: the page is UserGroupUpdatedV1
    assert (envelope.application, envelope.product_area) == ("UserGroup", "UMS")
    assert envelope.occurred_at == datetime(2023, 1, 20, 21, 13, 25, 268000, tzinfo=UTC)
    assert (envelope.source, envelope.type) == (UMS_SOURCE, UMS_TYPE) == ("ums", "UserGroup")
    assert data.id == "d675de53-e998-4c72-a6f3-6e9d63a99914"
    assert (data.action, data.change, data.tenant, data.tenant_id) == ("updated", "updated", "fsdev", TENANT)
    assert (data.group_id, data.name, data.type) == (GROUP_ID, "luke", "Standard")
    assert (data.parent_id, data.external_id) == (None, None)  # "" in the example
    assert (data.is_deleted, data.is_deactivated) == (False, False)
    assert data.created_time == data.last_modified_time == datetime(2024, 5, 14, 12, 21, 11, 167000, tzinfo=UTC)
    assert data.deleted_time == datetime(2024, 6, 14, 12, 21, 11, 167000, tzinfo=UTC)
    assert data.manager_ids == MANAGERS


def test_seed_example_record(seed_ums):
    assert group_change(event_of(seed_ums)) == {
        "schema": GROUP,
        "record_id": digest(GROUP, TENANT, "ums", "UserGroup", EVENT_ID),
        "tenant_id": TENANT,
        "group_id": GROUP_ID,
        "group_name": "luke",
        "change": "updated",
        "status": "active",
        "provider_type": None,
        "idp_id": None,
        "assigned_roles": [],
        "updates": [],
        "occurred_at": "2024-05-14T12:21:11.167Z",  # lastModifiedTime, read as UTC
        "event_id": EVENT_ID,
        "source_system": "ums",
        "parent_group_id": None,
        "external_id": None,
        "manager_ids": MANAGERS,
        "superseded": False,
    }


def test_ums_and_cloudevents_records_share_one_schema(seed_ums, seed_bytes):
    records = [group_change(event_of(seed_ums))]
    records += [group_change(decode(seed_bytes[name], None)) for name in ("group-created", "group-deleted")]  # type: ignore[arg-type]
    schema = json_schemas()["group_change.v1.json"]
    for record in records:
        assert TypeAdapter(GroupChange).validate_json(encode(record), strict=True) == record
        assert set(record) == set(schema["properties"])
    assert [r["source_system"] for r in records] == ["ums", "qlik-cloud", "qlik-cloud"]
    assert all(r["manager_ids"] == [] and r["parent_group_id"] is r["external_id"] is None for r in records[1:])


# ---- times and empty strings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "instant"),
    [
        ("2024-05-14 12:21:11.167", "2024-05-14T12:21:11.167Z"),  # no T, no zone: UTC
        ("2024-05-14T12:21:11.167", "2024-05-14T12:21:11.167Z"),
        ("2024-05-14 12:21:11", "2024-05-14T12:21:11.000Z"),
        ("2024-05-14T12:21:11.167Z", "2024-05-14T12:21:11.167Z"),
        ("2024-05-14T14:21:11.167+02:00", "2024-05-14T12:21:11.167Z"),  # a zone is kept
    ],
)
def test_times_without_zone_are_utc(seed_ums, written, instant):
    record = group_change(event_of(ums(seed_ums, data={"lastModifiedTime": written})))
    assert record["occurred_at"] == instant


def test_occurred_at_falls_back_to_the_wrapper_time(seed_ums):
    for absent in (..., "", None):
        record = group_change(event_of(ums(seed_ums, data={"lastModifiedTime": absent})))
        assert record["occurred_at"] == "2023-01-20T21:13:25.268Z"


def test_empty_strings_and_nulls_mean_absent(seed_ums):
    value = ums(
        seed_ums,
        envelope={"tenantName": "", "version": None, "productArea": ""},
        data={"deletedTime": "", "createdTime": None, "type": "", "managerIds": None, "tenant": ""},
    )
    event = event_of(value)
    assert isinstance(event.envelope, UmsEnvelope) and isinstance(event.data, UmsGroup)
    assert (event.envelope.tenant_name, event.envelope.version, event.envelope.product_area) == (None, None, None)
    assert (event.data.deleted_time, event.data.created_time, event.data.type, event.data.tenant) == (None,) * 4
    assert event.data.manager_ids == []


def test_set_parent_and_external_ids_reach_the_record(seed_ums):
    record = group_change(event_of(ums(seed_ums, data={"parentId": "p-1", "externalId": "ext-1"})))
    assert (record["parent_group_id"], record["external_id"]) == ("p-1", "ext-1")


def test_unknown_fields_are_ignored(seed_ums):
    event_of(ums(seed_ums, envelope={"newField": {"x": 1}}, data={"somethingNew": [1, 2]}))


# ---- change and status -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "deleted", "deactivated", "change", "status"),
    [
        ("Create", False, False, "created", "active"),
        ("created", False, False, "created", "active"),
        ("CREATE", False, True, "created", "disabled"),
        ("Update", False, False, "updated", "active"),
        (" update ", False, False, "updated", "active"),
        ("Update", False, True, "deactivated", "disabled"),  # the flag wins over Update
        ("Update", True, False, "deleted", "active"),  # deleted wins over everything
        ("Update", True, True, "deleted", "disabled"),
        ("Delete", False, False, "deleted", "active"),
        ("deleted", False, False, "deleted", "active"),
        ("Deactivate", False, True, "deactivated", "disabled"),
    ],
)
def test_change_and_status_from_action_and_flags(seed_ums, action, deleted, deactivated, change, status):
    value = ums(seed_ums, data={"action": action, "isDeleted": deleted, "isDeactivated": deactivated})
    record = group_change(event_of(value))
    assert (record["change"], record["status"]) == (change, status)


# ---- format detection ------------------------------------------------------------------------------------------


def test_the_seed_example_is_recognised_whatever_its_content_type(seed_ums):
    for headers in (None, [], [("content-type", b"application/json")], {"content-type": "application/json"}):
        event_of(seed_ums, headers)


def test_cloudevents_are_not_taken_for_ums(seed_bytes):
    for name, value in seed_bytes.items():
        result = decode(value, [("content-type", b"application/cloudevents+json")])
        assert isinstance(result, Event) and isinstance(result.envelope, Envelope), name
    # a structured CloudEvent with an `application` extension attribute is still a CloudEvent
    event = orjson.loads(seed_bytes["group-created"]) | {"application": "UserGroup"}
    assert isinstance(decode(orjson.dumps(event), None).envelope, Envelope)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "headers",
    [
        [("ce_id", b"x")],  # any ce_ header: CloudEvents (structured, as without a ce_specversion)
        [("CE_SOURCE", b"s"), ("content-type", b"application/json")],
    ],
)
def test_ce_headers_force_cloudevents(seed_ums, headers):
    assert rejected(seed_ums, headers).reason == "invalid_cloudevent"


def test_binary_cloudevent_whose_data_looks_like_ums_is_a_cloudevent(seed_ums):
    headers = [("ce_specversion", b"1.0"), ("ce_id", b"e1"), ("ce_source", b"s"), ("ce_type", b"x.other")]
    assert decode(seed_ums, headers).__class__.__name__ == "Skipped"


def test_looks_like_ums():
    assert looks_like_ums({"application": "UserGroup"})
    assert looks_like_ums({"application": "User", "id": "x"})  # recognised, then rejected for its application
    assert not looks_like_ums({"specversion": "1.0", "application": "UserGroup"})
    assert not looks_like_ums({"hello": "world"})
    assert not looks_like_ums([{"application": "UserGroup"}])


def test_json_without_either_marker_stays_an_invalid_cloudevent():
    assert rejected(b'{"hello": "world"}').reason == "invalid_cloudevent"


def test_format_setting_overrides_detection(seed_ums, seed_bytes):
    assert rejected(seed_ums, None, "cloudevents").reason == "invalid_cloudevent"
    assert isinstance(decode(seed_bytes["group-created"], None, "cloudevents"), Event)
    event_of(seed_ums, [("ce_id", b"copied")], "ums")  # ums: the headers are not looked at
    not_ums = rejected(seed_bytes["group-created"], None, "ums")
    assert (not_ums.reason, not_ums.event_type) == ("invalid_ums_envelope", UMS_TYPE)
    assert not_ums.detail.startswith("application: Field required")


# ---- malformed webhooks ----------------------------------------------------------------------------------------

ENVELOPE, DATA = "invalid_ums_envelope", "invalid_ums_data"
LONG = "x" * 257


@pytest.mark.parametrize(
    ("envelope", "data", "reason", "detail"),
    [
        ({"id": ...}, None, ENVELOPE, "id: Field required"),
        ({"id": ""}, None, ENVELOPE, "id: Field required"),
        ({"id": 5}, None, ENVELOPE, "id: Input should be a valid string"),
        ({"tenantId": ...}, None, ENVELOPE, "tenantId: Field required"),
        ({"tenantId": ""}, None, ENVELOPE, "tenantId: Field required"),
        ({"data": ...}, None, ENVELOPE, "data: Field required"),
        ({"data": [1]}, None, ENVELOPE, "data: Value error, must be an object, not a JSON list"),
        ({"data": '{"groupId": "g"}'}, None, ENVELOPE, "data: Value error, must be an object, not a JSON str"),
        ({"application": "User"}, None, ENVELOPE, "application: Input should be 'UserGroup'"),
        ({"application": ""}, None, ENVELOPE, "application: Field required"),
        ({"occurredAt": ...}, None, ENVELOPE, "occurredAt: Field required"),
        ({"occurredAt": "yesterday"}, None, ENVELOPE, "occurredAt: Input should be a valid datetime"),
        ({"occurredAt": 1700000000}, None, ENVELOPE, "occurredAt: Value error, a time must be a string"),
        (None, {"action": "Frobnicate"}, DATA, "data.action: Value error, unknown action 'Frobnicate'"),
        (None, {"action": ...}, DATA, "data.action: Field required"),
        (None, {"action": 3}, DATA, "data.action: Input should be"),
        (None, {"groupId": ...}, DATA, "data.groupId: Field required"),
        (None, {"groupId": ""}, DATA, "data.groupId: Field required"),
        (None, {"name": ...}, DATA, "data.name: Field required"),
        (None, {"name": LONG}, DATA, "data.name: String should have at most 256 characters"),
        (None, {"lastModifiedTime": "2024-13-45 99:00"}, DATA, "data.lastModifiedTime: Input should be a valid"),
        (None, {"createdTime": "soon"}, DATA, "data.createdTime: Input should be a valid datetime"),
        (None, {"deletedTime": 0}, DATA, "data.deletedTime: Value error, a time must be a string"),
        (None, {"isDeleted": "maybe"}, DATA, "data.isDeleted: Input should be a valid boolean"),
        (None, {"managerIds": "m1"}, DATA, "data.managerIds: Input should be a valid list"),
        ({"id": ...}, {"action": "Frobnicate"}, ENVELOPE, "id: Field required"),  # the wrapper's errors win
    ],
)
def test_malformed_webhooks_are_rejected_with_a_clear_reason(seed_ums, envelope, data, reason, detail):
    result = rejected(ums(seed_ums, envelope, data))
    assert (result.reason, result.event_type) == (reason, UMS_TYPE)
    assert result.detail.startswith(detail), result.detail
    has_id = not envelope or envelope.get("id", EVENT_ID) == EVENT_ID
    assert result.event_id == (EVENT_ID if has_id else None)


def test_a_name_of_max_length_is_accepted(seed_ums):
    assert group_change(event_of(ums(seed_ums, data={"name": "x" * 256})))["group_name"] == "x" * 256


def test_the_detail_counts_the_other_errors(seed_ums):
    detail = rejected(ums(seed_ums, data={"groupId": ..., "name": ..., "action": "?"})).detail
    assert detail.endswith("(+2 more)")


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [
        (b"[1, 2]", ENVELOPE, "webhook is a JSON list, not an object"),
        (b'"text"', ENVELOPE, "webhook is a JSON str, not an object"),
        (b"{not json", "not_json", "value is not JSON"),
        (None, "not_json", "value is empty (tombstone)"),
    ],
)
def test_a_ums_topic_rejects_what_is_not_a_webhook_object(value, reason, detail):
    result = rejected(value, None, "ums")
    assert (result.reason, result.event_type) == (reason, UMS_TYPE)
    assert result.detail.startswith(detail)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
KEYS = ["id", "action", "groupId", "name", "isDeleted", "isDeactivated", "lastModifiedTime", "managerIds"]


@settings(max_examples=200, deadline=None)
@given(
    envelope=st.dictionaries(st.sampled_from(["id", "tenantId", "occurredAt", "application", "data"]), JSON),
    data=st.dictionaries(st.sampled_from(KEYS), JSON),
)
def test_decode_never_raises_on_mutated_webhooks(envelope, data):
    seed = (files("worker.local") / "examples" / f"{UMS_EXAMPLE}.json").read_bytes()
    result = decode(ums(seed, envelope, data), None)
    assert isinstance(result, Event | Rejected)


# ---- one stream: deduplication and the demo ------------------------------------------------------------------


def test_dedupe_id_is_tenant_ums_and_id(seed_ums, seed_bytes):
    a = event_of(seed_ums)
    copy_ = event_of(ums(seed_ums, data={"name": "renamed"}))  # a replay may differ in content, not in id
    other = event_of(ums(seed_ums, envelope={"id": "another"}))
    other_tenant = event_of(ums(seed_ums, envelope={"tenantId": "t-2"}))
    assert dedupe_id(a) == dedupe_id(copy_) == digest(TENANT, "ums", "UserGroup", EVENT_ID)
    assert len({dedupe_id(a), dedupe_id(other), dedupe_id(other_tenant)}) == 3
    same_id_cloudevent = orjson.loads(seed_bytes["group-created"]) | {"id": EVENT_ID, "tenantid": TENANT}
    same_id_cloudevent["data"]["tenantId"] = TENANT
    ce = decode(orjson.dumps(same_id_cloudevent), None)
    assert isinstance(ce, Event) and dedupe_id(ce) != dedupe_id(a)


def test_demo_samples_hold_the_ums_seed_example_and_expected_counts_follow(seed_ums):
    ums_samples = [s for s in samples() if s.value == seed_ums]
    assert len(ums_samples) == 1
    assert expected_counts() == (11, 1)  # 3 group changes + 1 UMS + 1 + 6 membership records; 1 poison
    assert expected_counts([*samples(), ums_samples[0]]) == (11, 1)  # a copy is a duplicate
