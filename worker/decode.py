"""Decoding: Kafka message bytes and headers -> a validated `Event`, a `Skipped` unknown type, or a `Rejected`
with the dead-letter reason. Pure: no I/O, never raises on bad input.

Both CloudEvents Kafka binding modes are accepted:
- binary: the context attributes are `ce_*` headers and the value is the event data;
- structured: the value is the whole event as JSON (`content-type` `application/cloudevents+json`,
  `application/json`, or absent). `data` may be an object, a string holding a JSON object, or `data_base64`.
`datacontenttype` is not trusted for the shape of `data` (the Qlik examples say `"string"` with an object).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson
from pydantic import ValidationError

from worker.models import DATA_MODELS, Envelope, Event

Reason = Literal["not_json", "invalid_cloudevent", "invalid_data"]
HeaderValue = str | bytes | None
Headers = list[tuple[str, HeaderValue]] | dict[str, HeaderValue] | None

BINARY_PREFIX: Final = "ce_"
STRUCTURED_TYPES: Final = ("application/cloudevents+json", "application/json")


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: Reason
    detail: str
    event_id: str | None = None
    event_type: str | None = None


@dataclass(frozen=True, slots=True)
class Skipped:
    """A well-formed CloudEvent of a type this worker does not handle."""

    type: str
    event_id: str


Decoded = Event | Skipped | Rejected


def decode(value: bytes | None, headers: Headers) -> Decoded:
    attributes: dict[str, Any] = {}
    content_type: str | None = None
    for name, raw in header_pairs(headers):
        lowered = name.lower()
        if lowered.startswith(BINARY_PREFIX):
            attributes[lowered[len(BINARY_PREFIX) :]] = header_text(raw)
        elif lowered == "content-type":
            content_type = header_text(raw)
    if "specversion" in attributes:
        return _binary(attributes, value)
    return _structured(value, content_type)


def _binary(attributes: dict[str, Any], value: bytes | None) -> Decoded:
    data = _loads(value)
    if isinstance(data, Rejected):
        return data
    return _validate(attributes, data)


def _structured(value: bytes | None, content_type: str | None) -> Decoded:
    if content_type and content_type.split(";", 1)[0].strip().lower() not in STRUCTURED_TYPES:
        return Rejected("invalid_cloudevent", f"unsupported content-type {content_type[:60]!r} without ce_ headers")
    event = _loads(value)
    if isinstance(event, Rejected):
        return event
    if not isinstance(event, dict):
        return Rejected("invalid_cloudevent", f"event is a JSON {type(event).__name__}, not an object")
    data: Any = event.get("data")
    if data is None and "data_base64" in event:
        try:
            data = base64.b64decode(event["data_base64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            data = Rejected("invalid_data", "data_base64 is not valid base64")
    if isinstance(data, str | bytes):
        data = _loads(data, what="data")
    return _validate(event, data)


def _validate(attributes: dict[str, Any], data: Any) -> Decoded:
    """Envelope first (its reason wins), then the type, then `data` (parsed already, or a Rejected)."""
    try:
        envelope = Envelope.model_validate(attributes)
    except ValidationError as error:
        return Rejected("invalid_cloudevent", _first_error(error), _event_id(attributes))
    model = DATA_MODELS.get(envelope.type)
    if model is None:
        return Skipped(envelope.type, envelope.id)
    if not envelope.tenantid:
        return _reject(envelope, "invalid_cloudevent", "tenantid: required for " + envelope.type)
    if isinstance(data, Rejected):
        return _reject(envelope, "invalid_data", data.detail)
    if not isinstance(data, dict):
        shape = "missing" if data is None else f"a JSON {type(data).__name__}"
        return _reject(envelope, "invalid_data", f"data is {shape}, not an object")
    try:
        group = model.model_validate(data)
    except ValidationError as error:
        return _reject(envelope, "invalid_data", _first_error(error, prefix="data."))
    if group.tenant_id != envelope.tenantid:
        return _reject(envelope, "invalid_data", "data.tenantId does not match the event's tenantid")
    return Event(envelope, group)


def _reject(envelope: Envelope, reason: Reason, detail: str) -> Rejected:
    return Rejected(reason, detail, envelope.id, envelope.type)


def _loads(raw: bytes | str | None, what: str = "value") -> Any:
    if raw is None:
        return Rejected("not_json", f"{what} is empty (tombstone)")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        return Rejected("not_json", f"{what} is not JSON: {str(error)[:120]}")


def header_pairs(headers: Headers) -> list[tuple[str, HeaderValue]]:
    """Kafka headers as (name, value) pairs, whichever form the client gave."""
    return list(headers.items() if isinstance(headers, dict) else headers or ())


def header_text(raw: HeaderValue) -> str | None:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _event_id(attributes: dict[str, Any]) -> str | None:
    value = attributes.get("id")
    return value if isinstance(value, str) else None


def _first_error(error: ValidationError, prefix: str = "") -> str:
    first = error.errors(include_url=False)[0]
    location = ".".join(str(part) for part in first["loc"]) or "event"
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{prefix}{location}: {first['msg']}{more}"[:300]
