"""worker.ingest.rules: content types, the tenants a body names, Seismic's challenge, record key and header values,
the sampling of refusal lines (pure, property-tested). The signature check: test_secrets.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.ingest.rules import (
    RefusalLog,
    log_fields,
    media_type,
    received_at,
    record_key,
    tenants_named,
    ums_challenge,
)
from worker.local.samples import SEED_EXAMPLES, UMS_EXAMPLE, seed_example


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/cloudevents+json",
        "application/json; charset=utf-8",
        "Application/CloudEvents+JSON;charset=UTF-8",
        " application/json ",
    ],
)
def test_accepted_media_types_are_stored_canonical(content_type):
    assert media_type(content_type) == content_type.split(";")[0].strip().lower()


@pytest.mark.parametrize(
    "content_type",
    [None, "", "text/plain", "application/xml", "application/jsonx", "application/cloudevents-batch+json", "json"],
)
def test_refused_media_types(content_type):
    assert media_type(content_type) is None


@pytest.mark.parametrize(
    ("event", "named"),
    [
        ({"tenantid": "a", "data": {"tenantId": "a"}}, ["a", "a"]),
        ({"tenantid": "a", "data": {"tenantId": "b"}}, ["a", "b"]),
        ({"tenantId": "u", "data": {"groupId": "g"}}, ["u"]),
        ({"tenantid": None, "data": "text"}, [None]),
        ({"id": "x", "data": {"id": "g"}}, []),
        ({"tenantid": 7}, [7]),
    ],
)
def test_tenants_named_are_every_tenant_field_as_written(event, named):
    assert tenants_named(event) == named


def test_tenants_named_of_the_seed_examples():
    assert set(tenants_named(orjson.loads(seed_example("group-created")))) == {"VZhiEfgW2bLd7HgR-jjzAh6VnicipweT"}
    assert tenants_named(orjson.loads(seed_example(UMS_EXAMPLE))) == ["b4d8bb18-dc97-4e18-8049-50a04edf453f"]


def test_seismics_url_verification_in_both_forms():
    old = ums_challenge({"type": "verification", "challenge": "3eZb"})
    assert old is not None and (old.body, old.media_type) == (b"3eZb", "text/plain")
    new = ums_challenge({"version": "WebhookChallengeV1", "application": "AppRegistry", "data": {"challenge": "91"}})
    assert new is not None and (orjson.loads(new.body), new.media_type) == ({"challenge": "91"}, "application/json")
    long = ums_challenge({"type": "verification", "challenge": "x" * 10_000})
    assert long is not None and len(long.body) == 256


@pytest.mark.parametrize(
    "event",
    [
        orjson.loads(seed_example(UMS_EXAMPLE)),
        {"type": "verification"},
        {"type": "verification", "challenge": 7},
        {"version": "WebhookChallengeV1", "data": "text"},
        {"version": "UserGroupUpdatedV1", "data": {"challenge": "x"}},
    ],
)
def test_no_challenge_in_other_bodies(event):
    assert ums_challenge(event) is None


@given(st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=300))
def test_refusal_lines_are_bounded_and_every_dropped_one_is_reported(gaps):
    sampler, now, logged, reported = RefusalLog(rate=1.0, burst=10), 0.0, 0, 0
    for gap in gaps:
        now += gap
        dropped = sampler.admit("401", now)
        if dropped is not None:
            logged += 1
            reported += dropped
    assert logged <= 10 + now * 1.0 + 1e-9
    assert logged + reported + sampler._dropped.get("401", 0) == len(gaps)


def test_refusal_kinds_are_sampled_apart():
    sampler = RefusalLog(rate=1.0, burst=1)
    assert sampler.admit("401", 0.0) == 0 and sampler.admit("401", 0.1) is None
    assert sampler.admit("413", 0.1) == 0
    assert sampler.admit("401", 1.2) == 1


@pytest.mark.parametrize("name", SEED_EXAMPLES)
def test_key_of_a_cloudevent_is_tenantid_and_data_id(name):
    event = orjson.loads(seed_example(name))
    assert record_key(event) == f"{event['tenantid']}:{event['data']['id']}".encode()


def test_key_of_a_ums_webhook_is_tenant_id_and_group_id():
    event = orjson.loads(seed_example(UMS_EXAMPLE))
    assert record_key(event) == b"b4d8bb18-dc97-4e18-8049-50a04edf453f:f68c05b7-b6a0-46bf-9b6d-d8fecd31db21"


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"tenantid": "t"},
        {"tenantid": "t", "data": "not an object"},
        {"tenantid": "t", "data": {"name": "no id"}},
        {"tenantid": "", "data": {"id": "g"}},
        {"tenantid": 7, "data": {"id": "g"}},
        {"tenantId": "t", "data": {"id": "UMS data.id is the data event's id, not the group"}},
        {"data": {"id": "g", "groupId": "g"}},
    ],
)
def test_no_key_without_tenant_and_group(event):
    assert record_key(event) is None


@given(st.dictionaries(st.text(max_size=10), st.recursive(st.none() | st.text(max_size=5), st.lists, max_leaves=5)))
def test_key_never_fails_on_any_object(event):
    key = record_key(event)
    assert key is None or b":" in key


def test_log_fields_are_tenant_and_event_id_only():
    assert log_fields(orjson.loads(seed_example("group-created"))) == {
        "tenant": "VZhiEfgW2bLd7HgR-jjzAh6VnicipweT",
        "event_id": "A234-1234-1234",
    }
    assert log_fields(orjson.loads(seed_example(UMS_EXAMPLE)))["tenant"] == "b4d8bb18-dc97-4e18-8049-50a04edf453f"
    assert log_fields({"id": "x" * 1000, "tenantid": ["not", "text"]}) == {"tenant": None, "event_id": "x" * 200}


def test_received_at_is_rfc3339_utc_with_milliseconds():
    moment = datetime(2024, 5, 14, 14, 21, 11, 167_891, tzinfo=timezone(timedelta(hours=2)))
    assert received_at(moment) == "2024-05-14T12:21:11.167Z"
    assert datetime.fromisoformat(received_at(datetime.now(UTC))).tzinfo is not None
