"""worker.ingest.rules: signature check, content types, record key and header values (pure, property-tested)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from worker.ingest.rules import log_fields, media_type_accepted, received_at, record_key, sign, signature_matches
from worker.local.samples import SEED_EXAMPLES, UMS_EXAMPLE, seed_example

bodies = st.binary(max_size=2048)
secrets = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=32, max_size=64)


@given(bodies, secrets)
def test_sign_is_the_hex_hmac_sha256_of_the_raw_body(body, secret):
    assert sign(body, secret) == hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@given(bodies, secrets, st.booleans())
def test_own_signature_matches_in_either_hex_case(body, secret, upper):
    signature = sign(body, secret)
    assert signature_matches(body, signature.upper() if upper else signature, [secret])


@given(bodies, st.lists(secrets, min_size=1, max_size=4), st.data())
def test_any_configured_secret_matches(body, configured, data):
    secret = data.draw(st.sampled_from(configured))
    assert signature_matches(body, sign(body, secret), configured)


@given(bodies, secrets, secrets)
def test_another_secret_does_not_match(body, secret, other):
    assume(secret != other)
    assert not signature_matches(body, sign(body, other), [secret])


@given(bodies, secrets, st.integers(min_value=0, max_value=2047), st.integers(min_value=1, max_value=255))
def test_a_tampered_body_does_not_match(body, secret, index, flip):
    assume(body)
    index %= len(body)
    tampered = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    assert not signature_matches(tampered, sign(body, secret), [secret])


@pytest.mark.parametrize("signature", [None, "", "not-hex", "0" * 64, "é" * 64, "sha256=" + sign(b"{}", "s" * 32)])
def test_missing_or_malformed_signature_does_not_match(signature):
    assert not signature_matches(b"{}", signature, ["s" * 32])


def test_no_secret_matches_nothing():
    assert not signature_matches(b"{}", sign(b"{}", "s" * 32), [])


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
def test_accepted_media_types(content_type):
    assert media_type_accepted(content_type)


@pytest.mark.parametrize(
    "content_type",
    [None, "", "text/plain", "application/xml", "application/jsonx", "application/cloudevents-batch+json", "json"],
)
def test_refused_media_types(content_type):
    assert not media_type_accepted(content_type)


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
