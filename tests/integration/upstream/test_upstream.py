"""Issue 21's "done when", on the local Qlik tenant, a real ingest, Apache Kafka, Redis and the worker:

- an ingest outage longer than the tenant's retries (deliveries fail, Qlik disables the webhook) loses nothing
  once the watch has run: it re-enables the webhook and backfills the gap, and every change comes out once; a
  short one is repaired by resending each failed delivery once;
- a backfill run twice, and a backfill over events the webhook delivered, emit nothing new;
- both whether the Audits API carries the delivered event's id or an id of its own (`same_event_ids`): the
  worker then recognises the change by its content;
- no request beyond the budget, and every 429 waited out (the tenant counts requests that come too early);
- a reconcile finds a deletion the stream missed and emits it once; a second one emits nothing; the tenant group
  set is Qlik's list afterwards;
- credentials in no log line, at DEBUG, of the jobs, the ingest or the worker."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.helpers import wait_for
from tests.integration.upstream.conftest import FAST_DELIVERY, Upstream, all_records, identities
from worker.local.tenant import Behaviour
from worker.qlik.metrics import REGISTRY
from worker.state.client import connect
from worker.state.tenants import live_groups
from worker.state.upstream import last_accepted
from worker.upstream.backfill import Interval, backfill
from worker.upstream.sending import Sender
from worker.upstream.watch import Watch

pytestmark = pytest.mark.integration
IDS = [pytest.param(True, id="audit-carries-the-event-id"), pytest.param(False, id="audit-has-its-own-id")]


def changes(up: Upstream, names: list[str]) -> list[str]:
    """Some groups created, one renamed, one's users modified; their ids."""
    groups = [up.tenant.create_group(name)["id"] for name in names]
    up.tenant.update_group(groups[0], names[0] + " (renamed)")
    up.tenant.modify_users(groups[-1], ["ann", "bob"])
    return groups


def summary_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The job's summary: the last line on stdout (log lines, JSON too, come before it)."""
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return result


def run(up: Upstream, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], env={**up.env(**env), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


@pytest.mark.parametrize("same_ids", IDS)
def test_an_ingest_outage_longer_than_the_retries_loses_nothing_once_the_watch_has_run(upstream_factory, same_ids):
    up: Upstream = upstream_factory(Behaviour(**{**FAST_DELIVERY.__dict__, "same_event_ids": same_ids}))
    settings = up.settings(WORKER_WATCH_REENABLE="true", WORKER_WATCH_RECONCILE_INTERVAL_SECONDS="0")
    with up.client(settings) as client:
        watch = Watch(settings, [client], connect(settings.redis_url), Sender(settings))
        watch.cycle()  # the baseline: all is well
        before = changes(up, ["Sales", "Ops"])
        up.tenant.wait_delivered()
        wait_for(lambda: last_accepted(connect(settings.redis_url), "tenant-up") is not None, 10, "accepted time")

        up.stop_ingest()
        during = changes(up, ["Finance", "Legal", "HR"])
        up.tenant.delete_group(before[1])
        up.tenant.wait_delivered()
        (webhook,) = up.tenant.webhooks.values()
        assert not webhook.enabled and any(d["status"] == "fail" for d in up.tenant.deliveries)
        up.tenant.create_group("Created while disabled")  # not even tried: the webhook is off
        up.start_ingest()

        watch.cycle()  # notices, re-enables, backfills the gap
        assert webhook.enabled
        up.tenant.create_group("After the outage")
        up.tenant.wait_delivered()
        watch.cycle()  # the trouble is over: the rest backfilled, nothing resent twice
        labels = {"tenant": client.tenant.name, "webhook": webhook.id}
        assert REGISTRY.get_sample_value("watch_webhook_enabled", labels) == 1
        assert REGISTRY.get_sample_value("watch_failed_deliveries", labels) == 0  # all handled

    records = all_records(up.stack)
    assert identities(records) == up.expected(), "a change was lost or came out twice"
    assert {r["group_id"] for r in records} >= {*before, *during}
    assert live_groups(connect(settings.redis_url), "tenant-up") == set(up.tenant.groups)


def test_a_short_outage_is_repaired_by_resending_each_failed_delivery_once(upstream_factory) -> None:
    up: Upstream = upstream_factory(Behaviour(delivery_attempts=1, disable_after=5))
    settings = up.settings(WORKER_WATCH_RECONCILE_INTERVAL_SECONDS="0")
    with up.client(settings) as client:
        watch = Watch(settings, [client], connect(settings.redis_url), Sender(settings))
        watch.cycle()
        up.stop_ingest()
        lost = up.tenant.create_group("Created while the ingest is down")["id"]
        up.tenant.wait_delivered()
        up.start_ingest()
        up.tenant.create_group("Created after")  # delivered: the endpoint works again
        up.tenant.wait_delivered()
        watch.cycle()  # shorter than the threshold: resent, not backfilled
        watch.cycle()  # and only once
    tries = [d["status"] for d in up.tenant.deliveries if d["request"]["body"]["data"]["id"] == lost]
    assert tries == ["fail", "success"]
    assert identities(all_records(up.stack)) == up.expected()


@pytest.mark.parametrize("same_ids", IDS)
def test_a_backfill_run_twice_or_over_delivered_events_emits_nothing_new(upstream_factory, same_ids) -> None:
    up: Upstream = upstream_factory(Behaviour(**{**FAST_DELIVERY.__dict__, "same_event_ids": same_ids}))
    start = datetime.now(UTC) - timedelta(minutes=1)
    changes(up, ["Sales", "Ops", "Finance"])
    up.tenant.delete_group(next(iter(up.tenant.groups)))
    up.tenant.wait_delivered()
    delivered = all_records(up.stack)
    assert identities(delivered) == up.expected()

    since, until = start.isoformat(), (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    first = run(up, "backfill", "--since", since, "--until", until)
    summary = summary_of(first)
    assert summary["total"] == len(up.tenant.audits) and summary["invalid"] == 0
    assert "pages" in first.stderr  # progress on stderr
    again = run(up, "backfill", "--since", since, "--until", until)  # resumes: already through
    assert summary_of(again)["total"] == 0
    restarted = run(up, "backfill", "--since", since, "--until", until, "--restart")
    assert summary_of(restarted)["total"] == len(up.tenant.audits)

    assert identities(all_records(up.stack)) == up.expected(), "a backfill emitted a record a second time"


class Recording(httpx.HTTPTransport):
    """httpx's transport, noting when each request leaves."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[float] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(time.monotonic())
        return super().handle_request(request)


def busiest(times: list[float], window: float) -> int:
    return max(len([t for t in times if start <= t < start + window]) for start in times)


def test_no_request_beyond_the_budget_and_every_429_waited_out(upstream_factory) -> None:
    up: Upstream = upstream_factory(Behaviour(requests_per_window=4, window=2.0, error_rate=0.3), webhook=False)
    for i in range(1200):  # 12 pages of creations, one page of each other type
        up.tenant.create_group(f"g{i}")
    settings = up.settings()
    # the tenant gives every change its own millisecond: 1,200 of them run ahead of the clock
    since, until = datetime.now(UTC) - timedelta(minutes=5), datetime.now(UTC) + timedelta(minutes=1)

    def backfill_with(budget: int) -> tuple[int, int, list[float]]:
        up.tenant.requests.clear()
        transport = Recording()
        with up.client(settings, window=2.0, transport=transport) as client:
            client._budget.limit = budget
            summary = backfill(client, "tenant-up", Interval(since, until, restart=True), sender=Sender(settings),
                               checkpoints=None, dedupe_ttl_seconds=86_400, now=datetime.now(UTC))  # fmt: skip
        assert sum(summary.events.values()) == 1200
        return summary.rate_limited, summary.retries, transport.sent

    # a budget below the tenant's limit (as the default, 600 of Qlik's 1,000 a minute): never more requests in any
    # window than the budget, so no 429; the 500s were retried
    rate_limited, retries, sent = backfill_with(budget=3)
    assert len(sent) > 10 and busiest(sent, 2.0) <= 3 and retries > 0
    assert rate_limited == 0 and not [s for _t, _p, s in up.tenant.requests if s == 429]

    rate_limited, _retries, _sent = backfill_with(budget=50)  # above it: the tenant answers 429s
    assert rate_limited > 0 and up.tenant.early == 0, "a request came before its Retry-After"
    records = all_records(up.stack)
    assert len(records) == 1200 and len({r["group_id"] for r in records}) == 1200


def test_a_reconcile_finds_a_deletion_the_stream_missed_and_emits_it_once(upstream_factory) -> None:
    up: Upstream = upstream_factory()
    groups = changes(up, ["Sales", "Ops", "Finance"])
    up.tenant.wait_delivered()
    assert len(all_records(up.stack)) == len(up.tenant.audits) + 1  # the users.modified gave two
    up.tenant.delete_group(groups[1], record=False)  # no event at all: only a reconciliation can tell
    unseen = up.tenant.create_group("Before the worker", deliver=False)["id"]
    unseen_at = datetime.now(UTC) - timedelta(hours=1)
    up.tenant.groups[unseen].update(createdAt=unseen_at.isoformat().replace("+00:00", "Z"))

    report = summary_of(run(up, "reconcile"))
    assert report["missing_deleted"] == [groups[1]]
    assert report["missing_created"] == [unseen] and report["emitted"] == 0
    assert summary_of(run(up, "reconcile", "--emit"))["emitted"] == 2
    records = all_records(up.stack)
    corrections = [r for r in records if r.get("source_system") == "reconciliation"]
    assert sorted((r["group_id"], r["change"]) for r in corrections) == sorted(
        [(groups[1], "deleted"), (unseen, "created")]
    )
    redis = connect(up.stack.redis_url)
    assert live_groups(redis, "tenant-up") == set(up.tenant.groups), "the group count is not exact"

    assert summary_of(run(up, "reconcile", "--emit"))["emitted"] == 0
    assert Counter(r["record_id"] for r in all_records(up.stack)) == Counter(r["record_id"] for r in records)


def test_credentials_appear_in_no_log_line(upstream_factory) -> None:
    up: Upstream = upstream_factory(Behaviour(**{**FAST_DELIVERY.__dict__, "token_lifetime": 2}))
    changes(up, ["Sales"])
    up.tenant.wait_delivered()
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    oauth = {"WORKER_QLIK_API_KEY": "", "WORKER_QLIK_CLIENT_ID": up.tenant.client_id,
             "WORKER_QLIK_CLIENT_SECRET": up.tenant.client_secret, "WORKER_LOG_LEVEL": "DEBUG"}  # fmt: skip
    outputs = [
        run(up, "backfill", "--since", since, "--dry-run", **oauth),
        run(up, "reconcile", **oauth),
        run(up, "watch", "--once", **oauth),
        run(up, "backfill", "--since", since, WORKER_LOG_LEVEL="DEBUG"),
        run(up, "reconcile", WORKER_QLIK_API_KEY="wrong-key-wrong-key", WORKER_LOG_LEVEL="DEBUG"),
    ]
    assert [o.returncode for o in outputs] == [0, 0, 0, 0, 1]
    assert "WORKER_QLIK_API_KEY" in outputs[-1].stderr  # the refusal names the setting
    text = "".join(o.stdout + o.stderr for o in outputs)
    text += "".join(p.read_text() for p in up.stack.workdir.glob("*.log"))
    assert "qlik_token_fetched" in text
    tokens = list(up.tenant._tokens)
    assert tokens and len(tokens) >= 1
    leaked = [s for s in (up.tenant.api_key, up.tenant.client_secret, "wrong-key-wrong-key", *tokens) if s in text]
    assert leaked == []
