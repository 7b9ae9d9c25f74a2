"""Prometheus metrics of `python -m worker ingest`, defined once, in a registry of their own: the ingest's
`/metrics` shows its own series (and the process's), not the worker's that would only ever read zero."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, ProcessCollector

from worker import __version__

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

REQUESTS = Counter(
    "ingest_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=REGISTRY
)
BODY_BYTES = Histogram(
    "ingest_body_bytes",
    "Size of webhook bodies read (accepted or not)",
    buckets=(256, 1024, 4096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304),
    registry=REGISTRY,
)
ACK_SECONDS = Histogram(
    "ingest_ack_seconds",
    "Time from producing a webhook body to the broker's acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
READS_EVICTED = Counter(
    "ingest_reads_evicted",
    "Body reads ended (408) because a newer read needed their slot (WORKER_INGEST_MAX_BODY_READS)",
    registry=REGISTRY,
)
CONNECTIONS_CLOSED = Counter(
    "ingest_connections_closed",
    "Connections closed before a request reached the app, by reason: header_timeout, headers_too_large, "
    "bad_request, evicted (WORKER_INGEST_MAX_IDLE_CONNECTIONS)",
    ["reason"],
    registry=REGISTRY,
)
PRODUCERS_REPLACED = Counter(
    "ingest_producers_replaced", "Kafka producers replaced after a fatal error", registry=REGISTRY
)
BUILD = Info("ingest_build", "Version of the ingest", registry=REGISTRY)
BUILD.info({"version": __version__})
