"""The processor on its Redis stores, built from the settings (called by the composition root)."""

from __future__ import annotations

from worker.changes import RedisChangeStore
from worker.config import Settings
from worker.dedupe import Deduper
from worker.pipeline import Processor
from worker.redis_scripts import Client, ReplicaWait, connect
from worker.tenants import TenantGroups

REPLICA_WAIT_MS = 1_000  # how long a batch waits for WORKER_REDIS_MIN_REPLICAS before it counts as a failure


def redis_client(settings: Settings, timeout: float = 5) -> Client:
    return connect(settings.redis_url, timeout, cluster=settings.redis_cluster)


def redis_processor(settings: Settings, client: Client) -> Processor:
    """`client` is used by the processor only, from one thread (see `ReplicaWait`)."""
    replicas = settings.redis_min_replicas
    return Processor(
        Deduper(client, settings.dedupe_ttl_seconds),
        RedisChangeStore(
            client,
            timeout_ms=int(settings.batch_timeout_seconds * 1000),
            ttl_seconds=int(settings.batch_timeout_seconds + settings.dedupe_ttl_seconds),
            resend_ms=int(settings.flush_lease_seconds * 1000),
        ),
        output_topic=settings.output_topic,
        dlq_topic=settings.dlq_topic,
        control_topic=settings.control_topic,
        tenants=TenantGroups(client),
        formats=settings.topic_formats,
        durable=ReplicaWait(client, replicas, REPLICA_WAIT_MS).wait if replicas else None,
    )
