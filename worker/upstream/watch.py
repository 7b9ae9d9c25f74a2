"""`python -m worker watch`: one replica that keeps the webhook path honest, a cycle every
`WORKER_WATCH_INTERVAL_SECONDS`, per configured tenant:

1. observe: the tenant's webhooks of group events (enabled or not, and why), their deliveries since the watch's
   checked-through time, the ingest's last accepted time for the tenant (`worker/state/upstream.py`);
2. decide (`worker/upstream/gaps.py`, pure): re-enable, resend, backfill which intervals;
3. act: PATCH the webhooks (`WORKER_WATCH_REENABLE`), backfill the intervals (`worker/upstream/backfill.py`,
   straight to the ingest topic), resend the failed deliveries; then save the new state (only after every action
   succeeded: a failed cycle is planned again the next time);
4. every `WORKER_WATCH_RECONCILE_INTERVAL_SECONDS`, reconcile the tenant's groups with `emit`
   (`worker/upstream/reconcile.py`).
A tenant whose cycle fails (Qlik, Kafka or Redis) is logged and counted, and the other tenants go on.
`/metrics` and `/healthz` (200 while cycles keep finishing) on `WORKER_METRICS_PORT`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.config import Settings
from worker.qlik import api
from worker.qlik.client import QlikClient, QlikError
from worker.qlik.metrics import REGISTRY
from worker.qlik.tenants import configured
from worker.state.client import Client, redis_client
from worker.state.upstream import WatchStore, last_accepted
from worker.upstream import metrics
from worker.upstream.backfill import GROUP_EVENT_TYPES, Interval, backfill
from worker.upstream.gaps import DeliveryView, Policy, WatchState, WebhookView, history_start, plan
from worker.upstream.reconcile import reconcile
from worker.upstream.sending import NotStored, Sender

log = structlog.get_logger("worker.upstream.watch")


class Watch:
    def __init__(
        self,
        settings: Settings,
        clients: list[QlikClient],
        redis_client: Client,
        sender: Sender,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings, self.clients, self.sender, self.now = settings, clients, sender, now
        self._redis, self._store = redis_client, WatchStore(redis_client)
        self._tenant_ids: dict[str, str] = {}
        self.policy = Policy(
            reenable=settings.watch_reenable,
            threshold_ms=int(settings.watch_outage_threshold_seconds * 1000),
            margin_ms=int(settings.watch_gap_margin_seconds * 1000),
        )
        self.finished_at = time.monotonic()

    @classmethod
    def of(cls, settings: Settings) -> Watch:
        """A watch of every configured tenant, with clients, Redis and a producer of its own."""
        clients = [QlikClient(tenant, settings.qlik_requests_per_minute) for tenant in configured(settings)]
        return cls(settings, clients, redis_client(settings), Sender(settings))

    def cycle(self) -> int:
        """One cycle over every tenant; the number of tenants whose cycle failed."""
        failed = 0
        for client in self.clients:
            try:
                self._tenant(client)
            except (QlikError, NotStored, redis.RedisError) as error:
                failed += 1
                metrics.CYCLE_ERRORS.labels(client.tenant.name).inc()
                log.error("watch_cycle_failed", tenant=client.tenant.name, error=str(error)[:300])
        metrics.LAST_CYCLE.set(time.time())
        self.finished_at = time.monotonic()
        return failed

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.cycle()
            stop.wait(self.settings.watch_interval_seconds)

    def _tenant(self, client: QlikClient) -> None:
        name = client.tenant.name
        tenant_id = self._tenant_ids.get(name) or self._tenant_ids.setdefault(name, api.tenant_id(client))
        values, resent = self._store.load(tenant_id)
        state = WatchState.of(values)
        now = self.now()
        now_ms = _ms(now)
        accepted = last_accepted(self._redis, tenant_id)
        since = _at(history_start(state, accepted, now_ms, self.policy))
        views = []
        for webhook in api.webhooks(client):
            if not set(webhook.event_types) & set(GROUP_EVENT_TYPES):
                continue
            deliveries = api.deliveries(client, webhook.id, since)
            views.append(WebhookView(webhook.id, webhook.enabled, webhook.disabled_reason, tuple(
                DeliveryView(d.id, d.event_id, d.status == "success", _ms(d.triggered_at)) for d in deliveries
            )))  # fmt: skip
        decided = plan(now_ms, views, accepted, state, resent, self.policy)
        if decided.findings:
            log.warning("watch_findings", tenant=name, findings=list(decided.findings))
        for webhook_id in decided.reenable:
            api.enable(client, webhook_id)
            metrics.REENABLED.labels(name).inc()
            log.warning("webhook_reenabled", tenant=name, webhook=webhook_id)
        for start, end in decided.backfill:
            summary = backfill(
                client, tenant_id, Interval(_at(start), _at(end)), sender=self.sender, checkpoints=None,
                dedupe_ttl_seconds=self.settings.dedupe_ttl_seconds, now=now,
            )  # fmt: skip
            metrics.GAPS.labels(name).inc()
            metrics.BACKFILLED.labels(name).inc(sum(summary.events.values()))
            log.warning("gap_backfilled", **{k: v for k, v in summary.as_dict().items() if k != "tenant"}, tenant=name)
        for webhook_id, delivery_id in decided.resend:
            api.resend(client, webhook_id, delivery_id)
            metrics.RESENDS.labels(name).inc()
        if decided.resend:
            log.info("deliveries_resent", tenant=name, count=len(decided.resend))
        next_state = decided.state
        interval_ms = int(self.settings.watch_reconcile_interval_seconds * 1000)
        if interval_ms and (state.reconciled_at is None or now_ms - state.reconciled_at >= interval_ms):
            report = reconcile(client, self._redis, tenant_id, sender=self.sender, now=now)
            metrics.RECONCILE_DIFFERENCES.labels(name, "missing_created").set(len(report.missing_created))
            metrics.RECONCILE_DIFFERENCES.labels(name, "missing_deleted").set(len(report.missing_deleted))
            next_state = WatchState(**{**next_state.values(), "reconciled_at": now_ms})
        seen = {d.id for view in views for d in view.deliveries}
        self._store.save(tenant_id, next_state.values(), (set(resent) & seen) | {d for _w, d in decided.resend})
        handled = next_state.backfilled_through or next_state.checked_through or 0
        self._export(name, views, accepted, now_ms, handled)

    def _export(self, name: str, views: list[WebhookView], accepted: int | None, now_ms: int, handled: int) -> None:
        metrics.GROUP_WEBHOOKS.labels(name).set(len(views))
        for view in views:
            metrics.WEBHOOK_ENABLED.labels(name, view.id).set(1 if view.enabled else 0)
            delivered = {d.event_id for d in view.deliveries if d.ok and d.event_id is not None}
            failed = [d for d in view.deliveries if not d.ok and d.at_ms > handled and d.event_id not in delivered]
            metrics.FAILED_DELIVERIES.labels(name, view.id).set(len(failed))
        if accepted is not None:
            metrics.LAST_ACCEPTED_AGE.labels(name).set(max(0.0, (now_ms - accepted) / 1000))


def serve_health(watch: Watch, port: int) -> ThreadingHTTPServer:
    """`/metrics` and `/healthz` (200 while a cycle finished within three intervals and five minutes) on `port`,
    from a daemon thread."""
    allowed = timedelta(seconds=3 * watch.settings.watch_interval_seconds + 300).total_seconds()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, status, kind = generate_latest(REGISTRY), 200, CONTENT_TYPE_LATEST
            elif self.path in ("/healthz", "/readyz"):
                late = time.monotonic() - watch.finished_at > allowed
                body, status = (b"no cycle finished lately\n", 503) if late else (b"ok\n", 200)
                kind = "text/plain"
            else:
                body, status, kind = b"not found\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:  # the access log stays quiet
            return

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="watch-health", daemon=True).start()
    return server


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
