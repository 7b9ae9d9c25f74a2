"""What the webhook endpoints decide about one request, as pure functions (no I/O): the media type a body is
stored with, which tenants a body names (a signature's secret must be bound to that tenant:
`worker/ingest/secrets.py`), whether a UMS body is Seismic's URL verification challenge, which Kafka key and
record headers a body gets, and which refusals are logged (`RefusalLog`). `worker/ingest/server.py` calls
these; the property tests in tests/unit/ingest/test_rules.py pin them down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import orjson

# Request headers carrying the signature (HTTP header names are case-insensitive; ASGI hands them lower-cased):
# Qlik Cloud's, and the UMS endpoint's own (Seismic documents no signature for its webhooks: README "Security").
SIGNATURE_HEADER: Final = "qlik-signature"
UMS_SIGNATURE_HEADER: Final = "ums-signature"
# Media types of a webhook body: Qlik's CloudEvents (structured mode) and UMS webhooks (plain JSON).
MEDIA_TYPES: Final = frozenset({"application/json", "application/cloudevents+json"})
# Record headers the ingest writes. `content-type` is the one the worker's decoder reads (worker/processing/decode.py);
# `ingest.received_at` says when the endpoint took the request (RFC 3339), for tracing delays upstream.
CONTENT_TYPE_HEADER: Final = "content-type"
RECEIVED_AT_HEADER: Final = "ingest.received_at"
# Seismic's URL verification (its "Events & webhooks" guide): a request whose answer must echo `challenge`,
# in its old form `{"type": "verification", "challenge": ...}` or its new one, a UMS-style wrapper of version
# `WebhookChallengeV1` with `data.challenge`.
CHALLENGE_VERSION: Final = "WebhookChallengeV1"
CHALLENGE_MAX: Final = 256  # characters echoed at most: a challenge is a UUID or a 52-character token


def media_type(content_type: str | None) -> str | None:
    """The canonical media type of an accepted `Content-Type` (`application/json` or
    `application/cloudevents+json`, any case, with or without parameters such as `; charset=utf-8`: JSON is
    UTF-8), or None for any other. The record stores this, not the raw header."""
    if content_type is None:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    return media if media in MEDIA_TYPES else None


def tenants_named(event: dict[str, object]) -> list[object]:
    """Every tenant id a body names, as it wrote it: CloudEvents `tenantid`, UMS `tenantId` and `data.tenantId`.
    The worker keys, dedupes and records by these, so a bound secret must cover each one."""
    named = [event[name] for name in ("tenantid", "tenantId") if name in event]
    data = event.get("data")
    if isinstance(data, dict) and "tenantId" in data:
        named.append(data["tenantId"])
    return named


@dataclass(frozen=True, slots=True)
class Challenge:
    """Seismic's URL verification: the answer's body and media type, as its guide documents them."""

    body: bytes
    media_type: str


def ums_challenge(event: dict[str, object]) -> Challenge | None:
    """The answer to a URL verification request, or None for any other body."""
    if event.get("type") == "verification" and _text(event.get("challenge")):
        token = str(event["challenge"])[:CHALLENGE_MAX]
        return Challenge(token.encode(), "text/plain")
    data = event.get("data")
    if event.get("version") == CHALLENGE_VERSION and isinstance(data, dict) and _text(data.get("challenge")):
        token = str(data["challenge"])[:CHALLENGE_MAX]
        return Challenge(orjson.dumps({"challenge": token}), "application/json")
    return None


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


@dataclass
class RefusalLog:
    """Which refusals get a log line: per kind (a status, or a reason), the first `burst` and then `rate` per
    second; the lines dropped in between are counted and reported on the next line of that kind (`suppressed`).
    A flood of bad requests then costs a bounded number of lines, and the metrics still count every one."""

    rate: float = 1.0
    burst: int = 10
    _tokens: dict[str, float] = field(default_factory=dict)
    _last: dict[str, float] = field(default_factory=dict)
    _dropped: dict[str, int] = field(default_factory=dict)

    def admit(self, kind: str, now: float) -> int | None:
        """None: drop this line; else log it, with this many lines of its kind dropped since the last one.
        `now` is a monotonic clock in seconds."""
        tokens = min(self.burst, self._tokens.get(kind, self.burst) + (now - self._last.get(kind, now)) * self.rate)
        self._last[kind] = now
        if tokens < 1:
            self._tokens[kind] = tokens
            self._dropped[kind] = self._dropped.get(kind, 0) + 1
            return None
        self._tokens[kind] = tokens - 1
        return self._dropped.pop(kind, 0)
