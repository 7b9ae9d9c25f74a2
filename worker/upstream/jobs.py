"""The upstream commands as the command line runs them: configured tenants, their clients, Redis and the
producer set up from the settings; progress on stderr, one JSON summary line per tenant on stdout.
Exit codes: 0 done, 1 a tenant failed (Qlik, Kafka, Redis: the message says which), 2 a configuration problem."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime

import orjson
import redis
import structlog

from worker.config import ConfigError, Settings
from worker.qlik import api
from worker.qlik.client import QlikClient, QlikError
from worker.qlik.tenants import Tenant, configured, pick
from worker.state.client import redis_client
from worker.state.upstream import Checkpoints
from worker.upstream.backfill import Interval, backfill
from worker.upstream.reconcile import reconcile
from worker.upstream.sending import NotStored, Sender
from worker.upstream.watch import Watch, serve_health

log = structlog.get_logger("worker.upstream.jobs")
FAILURES = (QlikError, NotStored, redis.RedisError)


def parse_time(text: str) -> datetime:
    """ISO 8601; without a zone it is UTC."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@contextmanager
def clients(settings: Settings, tenant: str | None) -> Iterator[list[QlikClient]]:
    tenants = pick(configured(settings), tenant)
    if not tenants:
        raise ConfigError(
            "no Qlik tenant configured: set WORKER_QLIK_URL and its credentials, or WORKER_QLIK_TENANTS_FILE"
        )
    with ExitStack() as stack:
        yield [stack.enter_context(_client(settings, t)) for t in tenants]


def _client(settings: Settings, tenant: Tenant) -> QlikClient:
    return QlikClient(tenant, settings.qlik_requests_per_minute)


def run_backfill(settings: Settings, interval: Interval, tenant: str | None) -> int:
    now = datetime.now(UTC)
    failed = False
    with clients(settings, tenant) as chosen:
        sender = None if interval.dry_run else Sender(settings)
        checkpoints = None if interval.dry_run else Checkpoints(redis_client(settings))
        for client in chosen:
            try:
                summary = backfill(
                    client, api.tenant_id(client), interval, sender=sender, checkpoints=checkpoints,
                    dedupe_ttl_seconds=settings.dedupe_ttl_seconds, now=now, progress=_stderr,
                )  # fmt: skip
            except FAILURES as error:
                failed = True
                print(f"backfill {client.tenant.name} failed: {error}", file=sys.stderr)
                continue
            if summary.left_out_before:
                _stderr(
                    f"backfill {client.tenant.name}: events before {summary.left_out_before} were left out: older "
                    "than the dedupe window (WORKER_DEDUPE_TTL_SECONDS), they could come out twice; "
                    "--beyond-dedupe-window sends them, `reconcile --emit` corrects which groups exist"
                )
            print(orjson.dumps(summary.as_dict()).decode(), flush=True)
    return 1 if failed else 0


def run_reconcile(settings: Settings, tenant: str | None, emit: bool) -> int:
    failed = False
    with clients(settings, tenant) as chosen:
        store = redis_client(settings)
        sender = Sender(settings) if emit else None
        for client in chosen:
            try:
                report = reconcile(client, store, api.tenant_id(client), sender=sender, now=datetime.now(UTC))
            except FAILURES as error:
                failed = True
                print(f"reconcile {client.tenant.name} failed: {error}", file=sys.stderr)
                continue
            print(orjson.dumps(report.as_dict()).decode(), flush=True)
    return 1 if failed else 0


def run_watch(settings: Settings, once: bool) -> int:
    with clients(settings, None) as chosen:
        watch = Watch(settings, chosen, redis_client(settings), Sender(settings))
        if once:
            return 1 if watch.cycle() else 0
        server = serve_health(watch, settings.metrics_port)
        stop = threading.Event()
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, lambda *_: stop.set())
        log.info("watch_started", tenants=[c.tenant.name for c in chosen], interval=settings.watch_interval_seconds)
        try:
            watch.run(stop)
        finally:
            server.shutdown()
    return 0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
