"""worker.processing.decode: Kafka value + headers -> Event | Skipped | Rejected, for the seed examples, the official
cloudevents SDK in both binding modes, every `data` form, and every kind of bad input."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from cloudevents.core.bindings import kafka as core_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as CoreCloudEvent
from cloudevents.v1 import kafka as legacy_kafka
from cloudevents.v1.http import CloudEvent as LegacyCloudEvent
from cloudevents.v1.pydantic import CloudEvent as PydanticCloudEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.processing.decode import Rejected, Skipped, _stepwise, _whole, decode
from worker.processing.models import (
    GROUP_CREATED,
    GROUP_DELETED,
    GROUP_UPDATED,
    MAX_GROUP_NAME,
    USERS_MODIFIED,
    Event,
    Group,
    GroupUpdate,
    Role,
    Update,
    UsersModified,
)

FAST = settings(max_examples=300, deadline=None, database=None)

TENANT = "VZhiEfgW2bLd7HgR-jjzAh6VnicipweT"
EVENT_ID = "A234-1234-1234"
GROUP_ID = "507f191e810c19729de860ea"
ROLE = Role(id=GROUP_ID, name="My Custom Role", type="custom", level="user")
SEED_UPDATES = [Update(path="/attributePath", new_value="Dan", old_value="Dylan")]

# seed file stem -> (envelope type, source, data model)
SEEDS: dict[str, tuple[str, str, type[Group]]] = {
    "group-created": (GROUP_CREATED, "com.qlik/identities", Group),
    "group-updated": (GROUP_UPDATED, "com.qlik/identities", GroupUpdate),
    "group-deleted": (GROUP_DELETED, "com.qlik/groups", Group),
    "group-users-modified": (USERS_MODIFIED, "com.qlik/identities", UsersModified),
}

STRUCTURED_HEADERS = {
    "no headers (None)": None,
    "no headers ([])": [],
    "cloudevents+json": [("content-type", b"application/cloudevents+json")],
    "application/json": [("content-type", b"application/json")],
    "cloudevents+json; charset, capitalised name": [("Content-Type", b"application/cloudevents+json; charset=utf-8")],
    "dict of str": {"content-type": "application/json"},
    "unrelated header only": [("traceparent", b"00-abc-def-01")],
}


def assert_seed_event(event: Event, name: str) -> None:
    event_type, source, model = SEEDS[name]
    envelope, data = event.envelope, event.data
    assert (envelope.type, envelope.id, envelope.source) == (event_type, EVENT_ID, source)
    assert envelope.tenantid == TENANT
    assert envelope.userid == TENANT
    assert envelope.time == datetime(2018, 10, 30, 7, 6, 22, tzinfo=UTC)
    assert type(data) is model
    assert (data.id, data.name, data.status, data.tenant_id) == (GROUP_ID, "Development", "active", TENANT)
    assert data.idp_id == "4ecbe7f9e8c1c9092c000027"
    assert data.provider_type == "idp"
    assert data.description == "string"
    assert data.created_at == datetime(2021, 3, 21, 17, 32, 28, tzinfo=UTC)
    assert data.last_updated_at == datetime(2021, 3, 22, 10, 1, 2, tzinfo=UTC)
    assert data.assigned_roles == [ROLE]
    if isinstance(data, GroupUpdate):
        assert data.updates == SEED_UPDATES
    if isinstance(data, UsersModified):
        assert data.deleted is True
        assert data.affected_users == [TENANT]
        assert data.fully_processed is True


# --- the seed examples -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", STRUCTURED_HEADERS.values(), ids=STRUCTURED_HEADERS.keys())
@pytest.mark.parametrize("name", SEEDS)
def test_seed_example_decodes_verbatim_in_structured_mode(name, headers, seed_bytes, decoded):
    assert_seed_event(decoded(seed_bytes[name], headers), name)


@pytest.mark.parametrize("name", SEEDS)
def test_seed_example_decodes_in_binary_mode(name, binary, decoded):
    value, headers = binary(name)
    assert_seed_event(decoded(value, headers), name)


def test_users_modified_defaults_when_optional_fields_are_absent(structured, decoded):
    value = structured(data={"deleted": ..., "affectedUsers": ..., "fullyProcessed": ..., "updates": ...})
    data = decoded(value).data
    assert isinstance(data, UsersModified)
    assert (data.deleted, data.affected_users, data.fully_processed, data.updates) == (False, [], True, [])


def test_timestamps_with_offsets_are_parsed_as_the_same_instant(structured, decoded):
    value = structured(data={"lastUpdatedAt": "2021-03-22T12:01:02.000+02:00"})
    assert decoded(value).data.last_updated_at == datetime(2021, 3, 22, 10, 1, 2, tzinfo=UTC)


# --- the official cloudevents SDK ---------------------------------------------------------------------------------


def sdk_attributes(event_type: str = GROUP_CREATED) -> dict[str, Any]:
    return {
        "type": event_type,
        "source": "com.qlik/identities",
        "id": "sdk-event-1",
        "tenantid": TENANT,
        "userid": "sdk-user",
        "datacontenttype": "application/json",
    }


def assert_sdk_event(event: Event, event_type: str = GROUP_CREATED) -> None:
    assert (event.envelope.type, event.envelope.id) == (event_type, "sdk-event-1")
    assert (event.envelope.tenantid, event.envelope.userid) == (TENANT, "sdk-user")
    assert event.envelope.time is not None and event.envelope.time.tzinfo is not None
    assert (event.data.id, event.data.name, event.data.tenant_id) == (GROUP_ID, "Development", TENANT)


LEGACY_MAKERS = {
    "v1.http.CloudEvent": lambda attributes, data: LegacyCloudEvent(attributes, data),
    "v1.pydantic.CloudEvent": lambda attributes, data: PydanticCloudEvent.create(attributes, data),
}


@pytest.mark.parametrize("mode", ["structured", "binary"])
@pytest.mark.parametrize("maker", LEGACY_MAKERS.values(), ids=LEGACY_MAKERS.keys())
def test_legacy_sdk_kafka_messages_decode(maker, mode, seed_event, kafka_headers, decoded):
    event = maker(sdk_attributes(), seed_event("group-created")["data"])
    message = legacy_kafka.to_structured(event) if mode == "structured" else legacy_kafka.to_binary(event)
    if mode == "binary":
        assert "ce_tenantid" in message.headers and "ce_userid" in message.headers
    assert_sdk_event(decoded(message.value, kafka_headers(message.headers)))


@pytest.mark.parametrize("mode", ["structured", "binary"])
@pytest.mark.parametrize("data_as", ["object", "bytes"])
def test_core_sdk_kafka_messages_decode(mode, data_as, seed_event, kafka_headers, decoded):
    data: Any = seed_event("group-users-modified")["data"]
    if data_as == "bytes":  # structured mode then carries it as data_base64
        data = orjson.dumps(data)
    event = CoreCloudEvent(sdk_attributes(USERS_MODIFIED), data)
    convert = core_kafka.to_structured if mode == "structured" else core_kafka.to_binary
    message = convert(event, JSONFormat())
    if mode == "structured" and data_as == "bytes":
        assert b"data_base64" in message.value
    result = decoded(message.value, kafka_headers(message.headers))
    assert_sdk_event(result, USERS_MODIFIED)
    assert isinstance(result.data, UsersModified) and result.data.affected_users == [TENANT]


# --- forms of `data` ----------------------------------------------------------------------------------------------


def _data_forms(event: dict[str, Any]) -> dict[str, dict[str, Any]]:
    data = event.pop("data")
    text = orjson.dumps(data).decode()
    return {
        "object": {**event, "data": data},
        "string holding JSON": {**event, "data": text},
        "data_base64": {**event, "data_base64": base64.b64encode(text.encode()).decode()},
        "data null + data_base64": {**event, "data": None, "data_base64": base64.b64encode(text.encode()).decode()},
    }


@pytest.mark.parametrize("form", ["object", "string holding JSON", "data_base64", "data null + data_base64"])
def test_every_form_of_data_decodes(form, seed_event, decoded):
    value = orjson.dumps(_data_forms(seed_event("group-updated"))[form])
    assert_seed_event(decoded(value), "group-updated")


# --- tolerated input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_unknown_event_type_is_skipped_not_rejected(mode, structured, binary):
    envelope = {"type": "com.qlik.v1.user.created", "tenantid": ...}
    if mode == "structured":
        result = decode(structured(envelope=envelope, data={"name": ...}), None)
    else:
        result = decode(*binary(envelope=envelope, data={"name": ...}))
    assert result == Skipped("com.qlik.v1.user.created", EVENT_ID)


@pytest.mark.parametrize(
    "value",
    [None, b"", b"<user/>"],
    ids=["no value (event without data)", "empty value", "XML value"],
)
def test_unknown_event_type_in_binary_mode_is_skipped_whatever_its_data(value):
    headers = [("ce_specversion", b"1.0"), ("ce_id", b"x-1"), ("ce_source", b"s"), ("ce_type", b"com.qlik.v1.app.x")]
    assert decode(value, headers) == Skipped("com.qlik.v1.app.x", "x-1")


def test_unknown_type_with_unusable_data_is_skipped_in_structured_mode(structured):
    value = structured(envelope={"type": "com.example.other", "data": "not json at all"})
    assert decode(value, None) == Skipped("com.example.other", EVENT_ID)


def test_extra_unknown_fields_in_envelope_and_data_are_ignored(seed_event, decoded):
    event = seed_event(
        "group-users-modified",
        envelope={"subject": "x", "dataschema": "https://example.com/s", "traceparent": "00-1-2-01", "extra": [1]},
        data={"futureField": {"nested": True}, "assignedRoles": [{**ROLE.model_dump(by_alias=True), "scope": "all"}]},
    )
    event["data"]["updates"][0]["op"] = "replace"
    assert_seed_event(decoded(orjson.dumps(event)), "group-users-modified")


def test_group_name_of_max_length_is_accepted(structured, decoded):
    name = "n" * MAX_GROUP_NAME
    assert MAX_GROUP_NAME == 256
    assert decoded(structured(data={"name": name})).data.name == name


# --- rejections ---------------------------------------------------------------------------------------------------

SEED_HEADERS = [("content-type", b"application/cloudevents+json")]
# (value builder args, reason, word the detail must mention, event id expected, event type expected)
REJECTIONS: dict[str, tuple[dict[str, Any], str, str, str | None, str | None]] = {
    # not_json
    "garbage bytes": ({"raw": b"\x00\xffgarbage{"}, "not_json", "JSON", None, None),
    "empty value": ({"raw": b""}, "not_json", "JSON", None, None),
    "tombstone (None)": ({"raw": None}, "not_json", "empty", None, None),
    "truncated JSON": ({"raw": b'{"id": "A234-1234-1234", "type": '}, "not_json", "JSON", None, None),
    # invalid_cloudevent
    "JSON array": ({"raw": b"[1, 2, 3]"}, "invalid_cloudevent", "list", None, None),
    "JSON number": ({"raw": b"42"}, "invalid_cloudevent", "int", None, None),
    "JSON string": ({"raw": b'"hello"'}, "invalid_cloudevent", "str", None, None),
    "missing id": ({"envelope": {"id": ...}}, "invalid_cloudevent", "id", None, None),
    "empty id": ({"envelope": {"id": ""}}, "invalid_cloudevent", "id", "", None),
    "missing source": ({"envelope": {"source": ...}}, "invalid_cloudevent", "source", EVENT_ID, None),
    "missing type": ({"envelope": {"type": ...}}, "invalid_cloudevent", "type", EVENT_ID, None),
    "missing specversion": ({"envelope": {"specversion": ...}}, "invalid_cloudevent", "specversion", EVENT_ID, None),
    "specversion 0.3": ({"envelope": {"specversion": "0.3"}}, "invalid_cloudevent", "specversion", EVENT_ID, None),
    "time without timezone": (
        {"envelope": {"time": "2018-10-30T07:06:22"}},
        "invalid_cloudevent",
        "time",
        EVENT_ID,
        None,
    ),
    "text/plain without ce_ headers": (
        {"headers": [("content-type", b"text/plain")]},
        "invalid_cloudevent",
        "content-type",
        None,
        None,
    ),
    "missing tenantid": ({"envelope": {"tenantid": ...}}, "invalid_cloudevent", "tenantid", EVENT_ID, USERS_MODIFIED),
    "empty tenantid": ({"envelope": {"tenantid": ""}}, "invalid_cloudevent", "tenantid", EVENT_ID, USERS_MODIFIED),
    # invalid_data
    "data missing": ({"envelope": {"data": ...}}, "invalid_data", "data", EVENT_ID, USERS_MODIFIED),
    "data null": ({"envelope": {"data": None}}, "invalid_data", "data", EVENT_ID, USERS_MODIFIED),
    "data a JSON list": ({"envelope": {"data": [1]}}, "invalid_data", "data", EVENT_ID, USERS_MODIFIED),
    "data a string that is not JSON": (
        {"envelope": {"data": "Development"}},
        "invalid_data",
        "data",
        EVENT_ID,
        USERS_MODIFIED,
    ),
    "data a string holding a JSON list": (
        {"envelope": {"data": "[1, 2]"}},
        "invalid_data",
        "data",
        EVENT_ID,
        USERS_MODIFIED,
    ),
    "bad data_base64": (
        {"envelope": {"data": ..., "data_base64": "!!not base64!!"}},
        "invalid_data",
        "data_base64",
        EVENT_ID,
        USERS_MODIFIED,
    ),
    "data_base64 a number": (
        {"envelope": {"data": ..., "data_base64": 12}},
        "invalid_data",
        "data_base64",
        EVENT_ID,
        USERS_MODIFIED,
    ),
    "data_base64 of non-JSON": (
        {"envelope": {"data": ..., "data_base64": base64.b64encode(b"\x89PNG").decode()}},
        "invalid_data",
        "data",
        EVENT_ID,
        USERS_MODIFIED,
    ),
    "missing name": ({"data": {"name": ...}}, "invalid_data", "data.name", EVENT_ID, USERS_MODIFIED),
    "empty name": ({"data": {"name": ""}}, "invalid_data", "data.name", EVENT_ID, USERS_MODIFIED),
    "name of 257 chars": (
        {"data": {"name": "n" * (MAX_GROUP_NAME + 1)}},
        "invalid_data",
        "data.name",
        EVENT_ID,
        USERS_MODIFIED,
    ),
    "missing group id": ({"data": {"id": ...}}, "invalid_data", "data.id", EVENT_ID, USERS_MODIFIED),
    "missing status": ({"data": {"status": ...}}, "invalid_data", "data.status", EVENT_ID, USERS_MODIFIED),
    "missing createdAt": ({"data": {"createdAt": ...}}, "invalid_data", "data.createdAt", EVENT_ID, USERS_MODIFIED),
    "missing lastUpdatedAt": (
        {"data": {"lastUpdatedAt": ...}},
        "invalid_data",
        "data.lastUpdatedAt",
        EVENT_ID,
        USERS_MODIFIED,
    ),
    "missing data.tenantId": ({"data": {"tenantId": ...}}, "invalid_data", "data.tenantId", EVENT_ID, USERS_MODIFIED),
    "status not in enum": ({"data": {"status": "archived"}}, "invalid_data", "data.status", EVENT_ID, USERS_MODIFIED),
    "providerType not in enum": (
        {"data": {"providerType": "scim"}},
        "invalid_data",
        "data.providerType",
        EVENT_ID,
        USERS_MODIFIED,
    ),
    "role type not in enum": (
        {"data": {"assignedRoles": [{"id": "r", "name": "R", "type": "builtin", "level": "user"}]}},
        "invalid_data",
        "data.assignedRoles.0.type",
        EVENT_ID,
        USERS_MODIFIED,
    ),
    "role without name": (
        {"data": {"assignedRoles": [{"id": "r", "type": "custom", "level": "user"}]}},
        "invalid_data",
        "data.assignedRoles.0.name",
        EVENT_ID,
        USERS_MODIFIED,
    ),
    "affectedUsers not a list": (
        {"data": {"affectedUsers": "user-1"}},
        "invalid_data",
        "data.affectedUsers",
        EVENT_ID,
        USERS_MODIFIED,
    ),
    "fullyProcessed not a boolean": (
        {"data": {"fullyProcessed": "perhaps"}},
        "invalid_data",
        "data.fullyProcessed",
        EVENT_ID,
        USERS_MODIFIED,
    ),
    "data.tenantId != tenantid": (
        {"data": {"tenantId": "another-tenant"}},
        "invalid_data",
        "tenantId",
        EVENT_ID,
        USERS_MODIFIED,
    ),
    "lastUpdatedAt without timezone": (
        {"data": {"lastUpdatedAt": "2021-03-22T10:01:02"}},
        "invalid_data",
        "data.lastUpdatedAt",
        EVENT_ID,
        USERS_MODIFIED,
    ),
    "createdAt without timezone": (
        {"data": {"createdAt": "2021-03-21 17:32:28"}},
        "invalid_data",
        "data.createdAt",
        EVENT_ID,
        USERS_MODIFIED,
    ),
    "createdAt not a timestamp": (
        {"data": {"createdAt": "yesterday"}},
        "invalid_data",
        "data.createdAt",
        EVENT_ID,
        USERS_MODIFIED,
    ),
}


@pytest.mark.parametrize(("case", "reason", "mentions", "event_id", "event_type"), REJECTIONS.values(), ids=REJECTIONS)
def test_bad_input_is_rejected_with_the_right_reason(case, reason, mentions, event_id, event_type, structured):
    value = case["raw"] if "raw" in case else structured(envelope=case.get("envelope"), data=case.get("data"))
    result = decode(value, case.get("headers", SEED_HEADERS))
    assert isinstance(result, Rejected), result
    assert result.reason == reason
    assert 0 < len(result.detail) <= 300
    assert mentions in result.detail
    assert (result.event_id, result.event_type) == (event_id, event_type)


BINARY_REJECTIONS = {
    "status not in enum": ({"data": {"status": "gone"}}, "invalid_data", "data.status"),
    "data.tenantId != tenantid": ({"data": {"tenantId": "other"}}, "invalid_data", "tenantId"),
    "missing tenantid": ({"envelope": {"tenantid": ...}}, "invalid_cloudevent", "tenantid"),
}


@pytest.mark.parametrize(("case", "reason", "mentions"), BINARY_REJECTIONS.values(), ids=BINARY_REJECTIONS)
def test_binary_mode_rejections_carry_the_event_id_and_type(case, reason, mentions, binary):
    result = decode(*binary(envelope=case.get("envelope"), data=case.get("data")))
    assert isinstance(result, Rejected)
    assert (result.reason, result.event_id, result.event_type) == (reason, EVENT_ID, USERS_MODIFIED)
    assert mentions in result.detail


@pytest.mark.parametrize("value", [b"not json", b"", None], ids=["non-JSON value", "empty value", "no value"])
def test_binary_mode_with_a_value_that_is_not_json_is_not_json(value, binary):
    _, headers = binary()
    result = decode(value, headers)
    assert isinstance(result, Rejected)
    assert result.reason == "not_json"
    assert result.detail


def test_binary_mode_not_json_rejection_names_the_event(binary):
    _, headers = binary()
    result = decode(b"not json", headers)
    assert isinstance(result, Rejected)
    assert (result.reason, result.event_id, result.event_type) == ("not_json", EVENT_ID, USERS_MODIFIED)


def test_invalid_envelope_detail_counts_the_other_errors(structured):
    result = decode(structured(envelope={"id": ..., "source": ..., "type": ...}), None)
    assert isinstance(result, Rejected) and result.reason == "invalid_cloudevent"
    assert "(+2 more)" in result.detail


def test_detail_is_bounded_even_for_huge_bad_input(structured):
    result = decode(structured(envelope={"data": "x" * 100_000}), None)
    assert isinstance(result, Rejected) and result.reason == "invalid_data"
    assert len(result.detail) <= 300


# --- never raises -------------------------------------------------------------------------------------------------

header_names = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["content-type", "Content-Type", "ce_specversion", "ce_id", "ce_type", "ce_source", "ce_tenantid"]),
)
header_values = st.one_of(st.none(), st.binary(max_size=40), st.sampled_from([b"1.0", USERS_MODIFIED.encode()]))
header_lists = st.lists(st.tuples(header_names, header_values), max_size=8)


@FAST
@given(value=st.one_of(st.none(), st.binary(max_size=300)), headers=header_lists)
def test_decode_never_raises_on_arbitrary_bytes_and_headers(value, headers):
    assert isinstance(decode(value, headers), Event | Skipped | Rejected)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


@FAST
@given(
    envelope=st.dictionaries(
        st.sampled_from(["id", "source", "type", "specversion", "time", "tenantid", "data", "data_base64"]),
        json_values,
    ),
    data=st.dictionaries(
        st.sampled_from(["id", "name", "status", "tenantId", "createdAt", "lastUpdatedAt", "affectedUsers", "updates"]),
        json_values,
    ),
)
def test_decode_never_raises_on_mutated_seed_json(envelope, data, seed_event):
    value = json.dumps(seed_event("group-users-modified", envelope=envelope, data=data)).encode()
    result = decode(value, None)
    assert isinstance(result, Event | Skipped | Rejected)
    if isinstance(result, Rejected):
        assert result.detail and len(result.detail) <= 300


def test_structured_content_type_wins_over_copied_ce_headers(seed_bytes, decoded):
    headers = [
        ("content-type", b"application/cloudevents+json"),
        ("ce_specversion", b"1.0"),
        ("ce_id", EVENT_ID.encode()),
        ("ce_source", b"com.qlik/identities"),
        ("ce_type", GROUP_CREATED.encode()),
        ("ce_tenantid", TENANT.encode()),
    ]
    assert_seed_event(decoded(seed_bytes["group-created"], headers), "group-created")


def test_null_lists_mean_none_and_timestamps_must_be_text(seed_bytes):
    event = orjson.loads(seed_bytes["group-users-modified"])
    event["data"].update(assignedRoles=None, updates=None, affectedUsers=None)
    decoded = decode(orjson.dumps(event), None)
    assert isinstance(decoded, Event)
    assert (decoded.data.assigned_roles, decoded.data.updates, decoded.data.affected_users) == ([], [], [])
    event["data"]["createdAt"] = 0
    rejected = decode(orjson.dumps(event), None)
    assert isinstance(rejected, Rejected) and rejected.reason == "invalid_data"
    assert "createdAt" in rejected.detail and "RFC 3339" in rejected.detail


@FAST
@given(
    envelope=st.dictionaries(
        st.sampled_from(["id", "source", "type", "specversion", "time", "tenantid", "userid"]),
        json_values | st.sampled_from([GROUP_CREATED, GROUP_UPDATED, USERS_MODIFIED, "2021-03-22T10:01:02+02:00"]),
    ),
    data=st.dictionaries(
        st.sampled_from(["id", "name", "status", "tenantId", "createdAt", "lastUpdatedAt", "affectedUsers", "updates"]),
        json_values | st.sampled_from(["active", TENANT, "2021-03-22T10:01:02Z", "1616407262", ["u1"]]),
    ),
)
def test_one_validation_of_the_whole_event_agrees_with_the_stepwise_one(envelope, data, seed_event):
    """The common case's single validation accepts only what the step-by-step one accepts, with equal models."""
    try:
        event = orjson.loads(json.dumps(seed_event("group-users-modified", envelope=envelope, data=data)))
    except orjson.JSONDecodeError:  # infinity, or an integer beyond 64 bits: not JSON to decode()
        return
    whole = _whole(event)
    stepwise = _stepwise(event, event.get("data"))
    if whole is None:
        return
    assert isinstance(stepwise, Event), stepwise
    assert whole.envelope.model_dump(exclude={"data"}) == stepwise.envelope.model_dump()
    assert whole.data == stepwise.data
