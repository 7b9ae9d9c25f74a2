"""Prometheus metrics, defined once. Label children used on the hot path are cached by the callers.
`TenantMetrics` publishes a committed batch's tenant group counts.

Under `WORKER_PROCESSES` > 1 (worker/consumer/supervisor.py) every process writes its samples to files that the
supervisor's `/metrics` sums (prometheus-client's multiprocess mode): counters and histograms add up; each
gauge says how its processes' values combine (`multiprocess_mode`, ignored in a single process). Info
metrics are not kept in that mode."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram, Info

from worker import __version__
from worker.processing.tenants import TopTenants

EVENTS = Counter("worker_events", "Input messages by event type and outcome", ["type", "outcome"])
RECORDS = Counter("worker_records_emitted", "Records committed to the output topic", ["schema"])
DLQ = Counter("worker_dlq_messages", "Messages committed to the dead-letter topic", ["reason"])
OPEN_CHANGES = Gauge(
    "worker_open_changes",
    "users.modified changes waiting for their final part (all workers)",
    multiprocess_mode="livemostrecent",  # every process reads the same shared count
)
CHANGES_CLOSED = Counter("worker_changes_closed", "users.modified changes closed", ["outcome"])
ASSIGNED = Gauge(
    "worker_assigned_partitions",
    "Input and control topic partitions assigned to this worker",
    multiprocess_mode="livesum",
)
LAG = Gauge(
    "worker_consumer_lag",
    "High watermark minus committed offset, per assigned partition",
    ["topic", "partition"],
    multiprocess_mode="livemax",  # a partition belongs to one process; a stale copy goes with its process
)
BATCH_SECONDS = Histogram(
    "worker_batch_seconds",
    "Time to process and commit one batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REBALANCES = Counter("worker_rebalances", "Partition assignments and revocations", ["kind"])
RETRIES = Counter("worker_batch_retries", "Batches retried after a Redis or Kafka failure", ["cause"])
PRODUCER_FENCED = Counter(
    "worker_producer_fenced", "Transactional producers fenced by another producer with the same transactional.id"
)
# Redis memory (INFO memory of each primary), read by the loop between batches: alerts compare the two.
REDIS_USED_MEMORY = Gauge(
    "worker_redis_used_memory_bytes",
    "Memory used by a Redis primary",
    ["node"],
    multiprocess_mode="livemostrecent",  # every process reads the same servers
)
REDIS_MAXMEMORY = Gauge(
    "worker_redis_maxmemory_bytes",
    "maxmemory of a Redis primary (0: no limit)",
    ["node"],
    multiprocess_mode="livemostrecent",
)
READY = Gauge(
    "worker_ready", "1 when Kafka and Redis are reachable and partitions are assigned", multiprocess_mode="livemin"
)
# Tenant group limits (worker/processing/tenants.py). The tenant label exists only for the 20 largest tenants a
# worker saw, so the series stay bounded; the histogram covers every tenant.
TENANT_GROUPS = Gauge(
    "worker_tenant_groups",
    "Live groups of a tenant, for the 20 largest tenants seen",
    ["tenant"],
    multiprocess_mode="livemostrecent",  # a shared count, read by whichever process saw the tenant last
)
TENANT_GROUP_COUNT = Histogram(
    "worker_tenant_group_count",
    "Live groups of a tenant, observed at every change of its count",
    buckets=(10, 100, 1000, 5000, 9000, 10_000, 20_000),
)
TENANT_GROUP_LIMIT_EXCEEDED = Counter(
    "worker_tenant_group_limit_exceeded", "Group creations that left a tenant above 10,000 live groups"
)
BUILD = Info("worker_build", "Worker version")
BUILD.info({"version": __version__})


class TenantMetrics:
    """Publishes a committed batch's tenant counts to Prometheus (the gauge only for the top tenants: `TopTenants`)."""

    def __init__(self, top: TopTenants | None = None) -> None:
        self._top = top or TopTenants()

    def publish(self, counts: Mapping[str, int], limit_exceeded: int) -> None:
        for count in counts.values():
            TENANT_GROUP_COUNT.observe(count)
        change = self._top.update(counts)
        for tenant_id in change.hidden:
            with contextlib.suppress(KeyError):
                TENANT_GROUPS.remove(tenant_id)
        for tenant_id, count in change.shown.items():
            TENANT_GROUPS.labels(tenant_id).set(count)
        if limit_exceeded:
            TENANT_GROUP_LIMIT_EXCEEDED.inc(limit_exceeded)
