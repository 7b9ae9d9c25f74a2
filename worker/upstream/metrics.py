"""Prometheus metrics of the webhook watch, in the upstream jobs' registry (`worker.qlik.metrics.REGISTRY`, with
the Qlik client's request counts). Labels are the configured tenants' names and their webhooks' ids: bounded by
the configuration (Qlik allows 100 webhooks per tenant)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Info

from worker import __version__
from worker.qlik.metrics import REGISTRY

WEBHOOK_ENABLED = Gauge(
    "watch_webhook_enabled",
    "1 while a group webhook is enabled, 0 once Qlik disabled it",
    ["tenant", "webhook"],
    registry=REGISTRY,
)
GROUP_WEBHOOKS = Gauge(
    "watch_group_webhooks", "Webhooks of the tenant subscribed to group events", ["tenant"], registry=REGISTRY
)
FAILED_DELIVERIES = Gauge(
    "watch_failed_deliveries",
    "Failed deliveries not handled yet: after what the watch resent or backfilled, their event not delivered",
    ["tenant", "webhook"],
    registry=REGISTRY,
)
RESENDS = Counter("watch_resends", "Failed deliveries the watch asked Qlik to resend", ["tenant"], registry=REGISTRY)
REENABLED = Counter("watch_reenabled", "Webhooks the watch enabled again", ["tenant"], registry=REGISTRY)
BACKFILLED = Counter(
    "watch_backfilled_events",
    "Events the watch's backfills produced to the ingest topic",
    ["tenant"],
    registry=REGISTRY,
)
GAPS = Counter("watch_gaps", "Intervals the watch backfilled", ["tenant"], registry=REGISTRY)
LAST_ACCEPTED_AGE = Gauge(
    "watch_last_accepted_age_seconds",
    "Time since the ingest accepted the tenant's last event",
    ["tenant"],
    registry=REGISTRY,
)
RECONCILE_DIFFERENCES = Gauge(
    "watch_reconcile_differences",
    "Groups the last reconciliation corrected: missing_created (in Qlik only), missing_deleted (in the worker only)",
    ["tenant", "kind"],
    registry=REGISTRY,
)
CYCLE_ERRORS = Counter("watch_cycle_errors", "Watch cycles of a tenant that failed", ["tenant"], registry=REGISTRY)
LAST_CYCLE = Gauge(
    "watch_last_cycle_timestamp_seconds", "When the watch last finished a cycle over every tenant", registry=REGISTRY
)
BUILD = Info("watch_build", "Version of the watch", registry=REGISTRY)
BUILD.info({"version": __version__})
