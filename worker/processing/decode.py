"""Decoding: Kafka message bytes and headers -> a validated `Event`, a `Skipped` unknown type, or a `Rejected`
with the dead-letter reason. Pure: no I/O, never raises on bad input.

Two input formats, which may share a topic:
- CloudEvents, in both Kafka binding modes:
  - binary: the context attributes are `ce_*` headers and the value is the event data;
  - structured: the value is the whole event as JSON (`content-type` `application/cloudevents+json`,
    `application/json`, or absent). `data` may be an object, a string holding a JSON object, or `data_base64`.
  `datacontenttype` is not trusted for the shape of `data` (the Qlik examples say `"string"` with an object).
- UMS user-group webhooks (`worker/processing/ums.py`): the value is the JSON wrapper; no `ce_` headers.
The format is recognised per message: any `ce_` header means CloudEvents; otherwise a JSON object without
`specversion` but with `application` is a UMS webhook, anything else is taken as a structured CloudEvent.
`format` (a per-topic setting) skips the detection: `"cloudevents"` never reads UMS, `"ums"` reads only UMS.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from worker.processing.models import DATA_MODELS, WHOLE_EVENT, Envelope, Event
from worker.processing.ums import UMS_TYPE, UmsEnvelope, looks_like_ums

Reason = Literal["not_json", "invalid_cloudevent", "invalid_data", "invalid_ums_envelope", "invalid_ums_data"]
Format = Literal["cloudevents", "ums"]
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


def decode(value: bytes | None, headers: Headers, format: Format | None = None) -> Decoded:
    """`format` None: recognise the format from the message itself (see the module doc)."""
    if format == "ums":
        return _ums(_loads(value))
    attributes: dict[str, Any] = {}
    content_type: str | None = None
    for name, raw in headers.items() if isinstance(headers, dict) else headers or ():
        lowered = name.lower()
        if lowered.startswith(BINARY_PREFIX):
            attributes[lowered[3:]] = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        elif lowered == "content-type":
            content_type = header_text(raw)
    structured_type = (content_type or "").lower().startswith("application/cloudevents")
    if "specversion" in attributes and not structured_type:  # the binding: this content type means structured
        return _binary(attributes, value)
    return _structured(value, content_type, detect=format is None and not attributes)


def _binary(attributes: dict[str, Any], value: bytes | None) -> Decoded:
    """The headers decide first: an unknown type is skipped whatever its value; a known one whose value is not
    JSON is `not_json`, named by its id and type."""
    data = _loads(value)
    decoded = _validate(attributes, data)
    if isinstance(data, Rejected) and isinstance(decoded, Rejected) and decoded.reason == "invalid_data":
        return Rejected(data.reason, data.detail, decoded.event_id, decoded.event_type)
    return decoded


def _structured(value: bytes | None, content_type: str | None, *, detect: bool) -> Decoded:
    if content_type and content_type.split(";", 1)[0].strip().lower() not in STRUCTURED_TYPES:
        return Rejected("invalid_cloudevent", f"unsupported content-type {content_type[:60]!r} without ce_ headers")
    event = _loads(value)
    if isinstance(event, Rejected):
        return event
    if detect and looks_like_ums(event):
        return _ums(event)
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
    """Envelope first (its reason wins), then the type, then `data` (parsed already, or a Rejected).
    A valid event of a known type with an object as `data`, nearly every message, takes one validation
    (`_whole`); everything else, or when that fails, the steps below, which name the reason."""
    if isinstance(data, dict) and isinstance(event_type := attributes.get("type"), str) and event_type in DATA_MODELS:
        whole = _whole(attributes if attributes.get("data") is data else {**attributes, "data": data})
        if whole is not None:
            return whole
    return _stepwise(attributes, data)


def _stepwise(attributes: dict[str, Any], data: Any) -> Decoded:
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


def _whole(event: dict[str, Any]) -> Event | None:
    """The event if it is valid as a whole, else None: then the step-by-step validation says why."""
    try:
        whole = WHOLE_EVENT.validate_python(event)
    except ValidationError:
        return None
    if not whole.tenantid or whole.data.tenant_id != whole.tenantid:
        return None
    return Event(whole, whole.data)


def _ums(message: Any) -> Decoded:
    """A UMS webhook, parsed already (or a Rejected). Errors of the wrapper (`data` missing or not an object
    included) win over those inside `data`."""
    if isinstance(message, Rejected):
        return Rejected(message.reason, message.detail, None, UMS_TYPE)
    if not isinstance(message, dict):
        shape = type(message).__name__
        return Rejected("invalid_ums_envelope", f"webhook is a JSON {shape}, not an object", None, UMS_TYPE)
    try:
        envelope = UmsEnvelope.model_validate(message)
    except ValidationError as error:
        errors = error.errors(include_url=False)
        wrapper = [e for e in errors if e["loc"][:1] != ("data",) or len(e["loc"]) == 1]
        reason: Reason = "invalid_ums_envelope" if wrapper else "invalid_ums_data"
        return Rejected(reason, _describe(wrapper or errors), _event_id(message) or None, UMS_TYPE)
    return Event(envelope, envelope.data)


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
    return _describe(error.errors(include_url=False), prefix)


def _describe(errors: list[ErrorDetails], prefix: str = "") -> str:
    """The first error, readable, with how many more there are."""
    first = errors[0]
    location = ".".join(str(part) for part in first["loc"]) or "event"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{prefix}{location}: {first['msg']}{more}"[:300]
