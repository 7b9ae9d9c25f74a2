"""The backfill against a mock Audits API: the four types read in ascending time and merged, the dedupe window
(events older than it are left out unless asked, and the summary says from when), and a dry run that sends
nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import SecretStr

from worker.qlik.client import QlikClient
from worker.qlik.tenants import Tenant
from worker.upstream.backfill import Interval, backfill, dedupe_window_start
from worker.upstream.events import Outgoing

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = 86_400


class Recorder:
    def __init__(self) -> None:
        self.sent: list[Outgoing] = []
        self.flushes = 0

    def send(self, message: Outgoing) -> None:
        self.sent.append(message)

    def flush(self) -> None:
        self.flushes += 1


def audits(asked: list[str]) -> httpx.MockTransport:
    """One item per event type, an hour apart in reverse type order, so the merge has work to do."""

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params["eventTime"])
        event_type = request.url.params["eventType"]
        hours = {"created": 4, "updated": 3, "deleted": 2, "modified": 1}[event_type.rsplit(".", 1)[1]]
        at = (NOW - timedelta(hours=hours)).isoformat().replace("+00:00", "Z")
        data = {"id": "g1", "name": "G", "status": "active", "tenantId": "t", "createdAt": at, "lastUpdatedAt": at}
        item = {"id": f"a-{hours}", "eventId": f"e-{hours}", "eventTime": at, "eventType": event_type,
                "tenantId": "t", "data": data}  # fmt: skip
        return httpx.Response(200, json={"data": [item], "links": {}})

    return httpx.MockTransport(handler)


def client(asked: list[str]) -> QlikClient:
    tenant = Tenant("t", "https://t.example", SecretStr("k"), "", SecretStr(""), "t", "environment")
    return QlikClient(tenant, 1000, transport=audits(asked))


def run(interval: Interval, sender: Any, asked: list[str]) -> Any:
    return backfill(client(asked), "t", interval, sender=sender, checkpoints=None, dedupe_ttl_seconds=DAY, now=NOW)


def test_events_come_out_oldest_first_across_types() -> None:
    sender, asked = Recorder(), []
    summary = run(Interval(NOW - timedelta(hours=6), NOW), sender, asked)
    assert [m.value.count(b"e-") for m in sender.sent] == [1, 1, 1, 1]
    assert [m.key for m in sender.sent] == [b"t:g1"] * 4
    order = [next(h for h in ("e-4", "e-3", "e-2", "e-1") if h.encode() in m.value) for m in sender.sent]
    assert order == ["e-4", "e-3", "e-2", "e-1"] and summary.events["created"] == 1 and sender.flushes == 1
    assert summary.requests == 4 and summary.left_out_before is None


def test_events_older_than_the_dedupe_window_are_left_out_unless_asked() -> None:
    since = NOW - timedelta(days=3)
    window = dedupe_window_start(NOW, DAY)
    assert window == NOW - timedelta(days=1) + timedelta(hours=1)  # a tenth of a day is more than the hour
    asked: list[str] = []
    summary = run(Interval(since, NOW), Recorder(), asked)
    assert summary.left_out_before == "2026-05-31T13:00:00.000Z"
    assert all(span.startswith("2026-05-31T13:00:00.000Z/") for span in asked)
    asked.clear()
    summary = run(Interval(since, NOW, beyond_dedupe=True), Recorder(), asked)
    assert summary.left_out_before is None and all(span.startswith("2026-05-29T12:00:00.000Z/") for span in asked)


def test_a_dry_run_reads_and_counts_and_sends_nothing() -> None:
    sender, asked = Recorder(), []
    summary = run(Interval(NOW - timedelta(hours=6), NOW, dry_run=True), sender, asked)
    assert sum(summary.events.values()) == 4 and sender.sent == [] and summary.dry_run
