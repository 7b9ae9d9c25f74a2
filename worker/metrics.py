"""Prometheus metrics, defined once. Label children used on the hot path are cached by the callers."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

from worker import __version__

EVENTS = Counter("worker_events", "Input messages by event type and outcome", ["type", "outcome"])
RECORDS = Counter("worker_records_emitted", "Records committed to the output topic", ["schema"])
DLQ = Counter("worker_dlq_messages", "Messages committed to the dead-letter topic", ["reason"])
OPEN_CHANGES = Gauge("worker_open_changes", "users.modified changes waiting for their final part (all workers)")
CHANGES_CLOSED = Counter("worker_changes_closed", "users.modified changes closed", ["outcome"])
ASSIGNED = Gauge("worker_assigned_partitions", "Input and control topic partitions assigned to this worker")
LAG = Gauge(
    "worker_consumer_lag", "High watermark minus committed offset, per assigned partition", ["topic", "partition"]
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
READY = Gauge("worker_ready", "1 when Kafka and Redis are reachable and partitions are assigned")
# Tenant group limits (worker/tenants.py). The tenant label exists only for the 20 largest tenants a worker
# saw, so the series stay bounded; the histogram covers every tenant.
TENANT_GROUPS = Gauge("worker_tenant_groups", "Live groups of a tenant, for the 20 largest tenants seen", ["tenant"])
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
