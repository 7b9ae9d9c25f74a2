"""Prometheus metrics of the upstream jobs (`python -m worker watch`, and a backfill or reconcile it runs), in a
registry of their own: the watch's `/metrics` shows these and its process, not the worker's series. The Qlik API
client counts its requests here; `worker/upstream/metrics.py` adds the watch's own series to the same registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, ProcessCollector

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

REQUESTS = Counter(
    "qlik_requests",
    "Requests sent to a Qlik Cloud tenant, by answer (HTTP status, or error)",
    ["tenant", "status"],
    registry=REGISTRY,
)
RATE_LIMITED = Counter("qlik_rate_limited", "429 answers waited out (Retry-After)", ["tenant"], registry=REGISTRY)
RETRIES = Counter(
    "qlik_retries", "Requests sent again after a 5xx, a timeout or a connection error", ["tenant"], registry=REGISTRY
)
