"""`python -m worker backfill`: a tenant's group events from Qlik's Audits API, between two times, produced to
the ingest topic as the CloudEvents the webhook would have delivered (`worker/upstream/events.py`), oldest first.

- Order: the four event types are read as four ascending lists (`sort=+eventTime`) and merged by event time,
  so the changes of one group reach its partition in the order they happened.
- Resumable: every `CHECKPOINT_EVERY` events, once Kafka acknowledged all of them, `through` (the event time
  of the last one) is saved for this tenant and `--since` (`worker/state/upstream.py`); a run with the same
  tenant and `--since` starts there. Events at that exact time are sent again: harmless, see next.
- Idempotent end to end: the worker drops every event it already processed within its dedupe window, by id and
  by content (`worker.processing.stores.dedupe_ids`), so a backfill run twice, or over events the webhook
  delivered, emits no record twice.
- The dedupe window bounds that promise: an event older than `WORKER_DEDUPE_TTL_SECONDS` (less a margin for the
  time it takes the worker to see it) may have been forgotten, and would come out again. Such events are not
  read unless `beyond_dedupe` is set; the summary says from when on events were left out (a reconciliation
  corrects which groups exist).
- Invalid items are produced all the same (the worker dead-letters them, with the reason); the summary counts
  them, as the worker's decoder judges them.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog

from worker.processing.decode import Rejected, decode
from worker.processing.models import rfc3339
from worker.qlik.api import AuditItem, audit_pages
from worker.qlik.client import QlikClient, Stats
from worker.state.upstream import Checkpoints
from worker.upstream.events import STRUCTURED, from_audit, outgoing
from worker.upstream.sending import Sender

log = structlog.get_logger("worker.upstream.backfill")

GROUP_EVENT_TYPES = (
    "com.qlik.v1.group.created",
    "com.qlik.v1.group.updated",
    "com.qlik.v1.group.deleted",
    "com.qlik.v1.group.users.modified",
)
CHECKPOINT_EVERY = 500  # events between checkpoints
MAX_DEDUPE_MARGIN = timedelta(hours=1)  # kept off the dedupe window's far end: the worker sees events later


@dataclass(frozen=True)
class Interval:
    since: datetime
    until: datetime
    dry_run: bool = False
    restart: bool = False  # ignore the checkpoint of an earlier run
    beyond_dedupe: bool = False  # also events older than the dedupe window (they may come out twice)


@dataclass
class Summary:
    tenant: str
    since: str
    until: str
    started_from: str = ""
    left_out_before: str | None = None  # events before this time were not read: older than the dedupe window
    pages: int = 0
    events: Counter[str] = field(default_factory=Counter)  # by type, without the common prefix
    invalid: int = 0
    requests: int = 0
    rate_limited: int = 0
    retries: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    def progress(self) -> str:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.events.items())) or "none yet"
        return (
            f"backfill {self.tenant}: {self.pages} pages, {sum(self.events.values())} events ({kinds}), "
            f"{self.requests} requests, {self.rate_limited} 429s"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "events": dict(self.events), "total": sum(self.events.values())}


def dedupe_window_start(now: datetime, dedupe_ttl_seconds: int) -> datetime:
    """The oldest event time a backfill sends by default: the dedupe window, less a margin (a tenth of it, an
    hour at most) for the time between reading an event and the worker claiming it."""
    ttl = timedelta(seconds=dedupe_ttl_seconds)
    return now - ttl + min(MAX_DEDUPE_MARGIN, ttl / 10)


def backfill(
    client: QlikClient,
    tenant_id: str,
    interval: Interval,
    *,
    sender: Sender | None,
    checkpoints: Checkpoints | None,
    dedupe_ttl_seconds: int,
    now: datetime,
    progress: Callable[[str], None] = lambda _line: None,
) -> Summary:
    """Backfill one tenant; `sender` None (or a dry run): read and count only. Raises `QlikError`, `NotStored`."""
    started, before = time.monotonic(), replace(client.stats)
    summary = Summary(client.tenant.name, rfc3339(interval.since), rfc3339(interval.until), dry_run=interval.dry_run)
    start = interval.since
    oldest = dedupe_window_start(now, dedupe_ttl_seconds)
    if start < oldest and not interval.beyond_dedupe:
        summary.left_out_before, start = rfc3339(oldest), oldest
        log.warning("backfill_left_out_beyond_dedupe_window", tenant=client.tenant.name, before=rfc3339(oldest))
    since_ms = _ms(interval.since)
    writing = sender is not None and not interval.dry_run
    if writing and checkpoints is not None and not interval.restart:
        through = checkpoints.through(tenant_id, since_ms)
        if through is not None:
            start = max(start, datetime.fromtimestamp(through / 1000, UTC))
    summary.started_from = rfc3339(start)
    if start < interval.until:
        streams = [_items(client, t, start, interval.until, summary, before, progress) for t in GROUP_EVENT_TYPES]
        count = 0
        for item in heapq.merge(*streams, key=lambda i: i.event_time):
            event = from_audit(item)
            _count(summary, event)
            if writing:
                assert sender is not None
                sender.send(outgoing(event, "backfill", datetime.now(UTC)))
                count += 1
                if count % CHECKPOINT_EVERY == 0:
                    _checkpoint(sender, checkpoints, tenant_id, since_ms, _ms(item.event_time), interval)
        if writing:
            assert sender is not None
            _checkpoint(sender, checkpoints, tenant_id, since_ms, _ms(interval.until), interval)
    _count_requests(summary, client, before)
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


def _items(
    client: QlikClient,
    event_type: str,
    start: datetime,
    end: datetime,
    summary: Summary,
    before: Stats,
    progress: Callable[[str], None],
) -> Iterator[AuditItem]:
    for page in audit_pages(client, event_type, start, end):
        summary.pages += 1
        _count_requests(summary, client, before)
        progress(summary.progress())
        yield from page


def _count_requests(summary: Summary, client: QlikClient, before: Stats) -> None:
    summary.requests = client.stats.requests - before.requests
    summary.rate_limited = client.stats.rate_limited - before.rate_limited
    summary.retries = client.stats.retries - before.retries


def _count(summary: Summary, event: dict[str, Any]) -> None:
    summary.events[str(event["type"]).removeprefix("com.qlik.v1.group.")] += 1
    decoded = decode(orjson.dumps(event), [("content-type", STRUCTURED)])
    if isinstance(decoded, Rejected):
        summary.invalid += 1
        log.warning("backfill_invalid_item", event_id=event["id"], reason=decoded.reason, detail=decoded.detail)


def _checkpoint(
    sender: Sender, checkpoints: Checkpoints | None, tenant_id: str, since_ms: int, through_ms: int, interval: Interval
) -> None:
    sender.flush()
    if checkpoints is not None:
        checkpoints.save(tenant_id, since_ms, through_ms, _ms(interval.until))


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)
