"""Dead-letter headers, written and read here only: the worker adds them to a message it cannot process, the
operator commands (`dlq inspect`, `dlq redrive`, the demo) read them back.

A DLQ message keeps the original key, value and headers, minus any `dlq.*` headers of an earlier failure (a
message redriven by hand that fails again carries only this failure's), plus:
- `dlq.reason`: a short machine-readable cause (`not_json`, `invalid_cloudevent`, ...)
- `dlq.detail`: a readable cause
- `dlq.source.topic`, `dlq.source.partition`, `dlq.source.offset`: where the message came from
"""

from __future__ import annotations

from worker.processing.decode import Headers, HeaderValue, header_pairs, header_text

PREFIX = "dlq."
REASON = PREFIX + "reason"
DETAIL = PREFIX + "detail"
SOURCE_TOPIC = PREFIX + "source.topic"
SOURCE_PARTITION = PREFIX + "source.partition"
SOURCE_OFFSET = PREFIX + "source.offset"


def dead_letter_headers(
    original: Headers, reason: str, detail: str, topic: str | None, partition: int | None, offset: int | None
) -> list[tuple[str, HeaderValue]]:
    """The original headers without earlier `dlq.*` ones, then this failure's."""
    headers = original_headers(original)
    for name, value in (
        (REASON, reason),
        (DETAIL, detail),
        (SOURCE_TOPIC, topic),
        (SOURCE_PARTITION, partition),
        (SOURCE_OFFSET, offset),
    ):
        headers.append((name, str(value).encode()))
    return headers


def original_headers(headers: Headers) -> list[tuple[str, HeaderValue]]:
    """The headers of the message as it was before it was dead-lettered."""
    return [(k, v) for k, v in header_pairs(headers) if not k.startswith(PREFIX)]


def dead_letter_fields(headers: Headers) -> dict[str, str]:
    """The `dlq.*` headers without the prefix: reason, detail, source.topic, source.partition, source.offset."""
    return {k[len(PREFIX) :]: header_text(v) or "" for k, v in header_pairs(headers) if k.startswith(PREFIX)}
