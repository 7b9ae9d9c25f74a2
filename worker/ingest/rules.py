"""What the webhook endpoint decides about one request, as pure functions (no I/O): whether its
`Qlik-Signature` matches, whether its content type is one we take, and which Kafka key and record headers its
body gets. `worker/ingest/server.py` calls these; the property tests in tests/unit/ingest/test_rules.py pin them down.

Qlik signs a webhook with the hex HMAC-SHA256 of the raw request body under the secret the tenant admin set on
the webhook. The check runs over the raw bytes, before anything is parsed, and against every configured secret
(rotation: old and new are both configured for a while) in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, datetime

# Request header carrying the signature (HTTP header names are case-insensitive; ASGI hands them lower-cased).
SIGNATURE_HEADER = "qlik-signature"
# Media types of a webhook body: Qlik's CloudEvents (structured mode) and UMS webhooks (plain JSON).
MEDIA_TYPES = frozenset({"application/json", "application/cloudevents+json"})
# Record headers the ingest writes. `content-type` is the one the worker's decoder reads (worker/processing/decode.py);
# `ingest.received_at` says when the endpoint took the request (RFC 3339), for tracing delays upstream.
CONTENT_TYPE_HEADER = "content-type"
RECEIVED_AT_HEADER = "ingest.received_at"


def sign(body: bytes, secret: str) -> str:
    """The `Qlik-Signature` value Qlik sends for `body` under `secret` (lower-case hex)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(body: bytes, signature: str | None, secrets: Sequence[str]) -> bool:
    """True when `signature` is the HMAC of `body` under any of `secrets`, hex in either case.

    Every secret is compared, with `hmac.compare_digest`, whether or not an earlier one matched, so the time
    taken says nothing about which secret (or how much of a guess) was right."""
    if signature is None:
        return False
    given = signature.strip().lower().encode("ascii", "replace")
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(given, sign(body, secret).encode())
    return matched


def media_type_accepted(content_type: str | None) -> bool:
    """`application/json` or `application/cloudevents+json`, in any case, with or without parameters
    (`; charset=utf-8`)."""
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() in MEDIA_TYPES


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _short(value: str | None) -> str | None:
    return value[:200] if value else None


def record_key(event: dict[str, object]) -> bytes | None:
    """`<tenant>:<group>` so every part of one group change lands on one partition (and one worker):
    CloudEvents `tenantid` and `data.id`, UMS webhooks `tenantId` and `data.groupId`; otherwise None (no key).
    Nothing else is checked here: whether the event is valid is the worker's decision."""
    data = event.get("data")
    if not isinstance(data, dict):
        return None
    if (tenant := _text(event.get("tenantid"))) and (group := _text(data.get("id"))):
        return f"{tenant}:{group}".encode()
    if (tenant := _text(event.get("tenantId"))) and (group := _text(data.get("groupId"))):
        return f"{tenant}:{group}".encode()
    return None


def log_fields(event: dict[str, object]) -> dict[str, str | None]:
    """Tenant and event id of a body, for the log line: never more of the body than that."""
    return {
        "tenant": _short(_text(event.get("tenantid")) or _text(event.get("tenantId"))),
        "event_id": _short(_text(event.get("id"))),
    }


def received_at(now: datetime) -> str:
    """RFC 3339 UTC with milliseconds, as the records' own times."""
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
