"""worker.ingest.secrets: the signature check against every configured secret, in constant time, chunk by chunk,
and which tenants a match grants (pure, property-tested)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from worker.ingest.secrets import ANY, Grant, Keyring, sign, well_formed

bodies = st.binary(max_size=2048)
secrets = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=32, max_size=64)
tenants = st.sampled_from(["tenant-a", "tenant-b", "tenant-c"])


def grant(entries: list[tuple[str | None, str]], body: bytes, signature: str | None, chunks: int = 1) -> Grant | None:
    verifier = Keyring(entries).verifier()
    step = max(1, len(body) // chunks)
    for start in range(0, len(body), step):
        verifier.update(body[start : start + step])
    return verifier.grant(signature)


@given(bodies, secrets)
def test_sign_is_the_hex_hmac_sha256_of_the_raw_body(body, secret):
    assert sign(body, secret) == hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@given(bodies, secrets, st.booleans(), st.integers(1, 8))
def test_own_signature_matches_in_either_hex_case_however_the_body_is_chunked(body, secret, upper, chunks):
    signature = sign(body, secret)
    assert grant([(None, secret)], body, signature.upper() if upper else signature, chunks) == ANY


@given(bodies, st.lists(st.tuples(st.none() | tenants, secrets), min_size=1, max_size=4), st.data())
def test_a_match_grants_the_tenant_of_the_secret_or_any_for_a_bare_one(body, configured, data):
    tenant, secret = data.draw(st.sampled_from(configured))
    granted = grant(configured, body, sign(body, secret))
    assert granted is not None
    if tenant is None:
        assert granted == ANY
    else:
        assert granted.allows([tenant, tenant])


@given(bodies, secrets, secrets)
def test_another_secret_does_not_match(body, secret, other):
    assume(secret != other)
    assert grant([("tenant-a", secret)], body, sign(body, other)) is None


@given(bodies, secrets, st.integers(min_value=0, max_value=2047), st.integers(min_value=1, max_value=255))
def test_a_tampered_body_does_not_match(body, secret, index, flip):
    assume(body)
    index %= len(body)
    tampered = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    assert grant([(None, secret)], tampered, sign(body, secret)) is None


@pytest.mark.parametrize("signature", [None, "", "not-hex", "0" * 64, "é" * 64, "sha256=" + sign(b"{}", "s" * 32)])
def test_missing_or_malformed_signature_does_not_match(signature):
    assert grant([(None, "s" * 32)], b"{}", signature) is None


def test_no_secret_matches_nothing():
    assert grant([], b"{}", sign(b"{}", "s" * 32)) is None


@pytest.mark.parametrize(
    ("granted", "named", "allowed"),
    [
        (Grant(frozenset({"a"})), ["a"], True),
        (Grant(frozenset({"a"})), ["a", "a"], True),
        (Grant(frozenset({"a"})), ["b"], False),
        (Grant(frozenset({"a"})), ["a", "b"], False),
        (Grant(frozenset({"a", "b"})), ["a", "b"], False),
        (Grant(frozenset({"a"})), [], False),
        (Grant(frozenset({"a"})), [None], False),
        (ANY, [], True),
        (ANY, ["x", 7], True),
    ],
)
def test_a_grant_allows_a_body_naming_one_granted_tenant(granted, named, allowed):
    assert granted.allows(named) is allowed


def test_the_same_secret_bound_to_two_tenants_grants_both():
    secret = "s" * 40
    granted = grant([("tenant-a", secret), ("tenant-b", secret)], b"{}", sign(b"{}", secret))
    assert granted == Grant(frozenset({"tenant-a", "tenant-b"}))


@pytest.mark.parametrize(
    ("signature", "shaped"),
    [
        (None, False),
        ("", False),
        ("ab" * 32, True),
        (" " + "AB" * 32 + " ", True),
        ("ab" * 31, False),
        ("g" * 64, False),
    ],
)
def test_only_64_hex_digits_are_worth_reading_a_body_for(signature, shaped):
    assert well_formed(signature) is shaped


def test_a_keyring_shows_its_tenants_never_its_secrets():
    keyring = Keyring([("tenant-a", "a" * 40), (None, "b" * 40)])
    assert repr(keyring) == "Keyring(2 secret(s) for *, tenant-a)"
    assert "a" * 40 not in repr(keyring._keys) and "b" * 40 not in repr(keyring._keys)
