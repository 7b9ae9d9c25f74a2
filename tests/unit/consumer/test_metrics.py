"""Publishing a committed batch's tenant group counts to Prometheus (`worker.consumer.metrics.TenantMetrics`)."""

from __future__ import annotations

import itertools

from prometheus_client import REGISTRY

from worker.consumer.metrics import TenantMetrics
from worker.processing.tenants import TopTenants

serial = itertools.count()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_publish_sets_the_top_gauges_removes_the_dropped_and_counts_the_exceeded():
    run = next(serial)
    a, b, c = (f"pub-{run}-{x}" for x in "abc")
    metrics = TenantMetrics(TopTenants(size=2))
    observed = sample("worker_tenant_group_count_count")
    exceeded = sample("worker_tenant_group_limit_exceeded_total")

    metrics.publish({a: 3, b: 7}, 0)
    assert (sample("worker_tenant_groups", tenant=a), sample("worker_tenant_groups", tenant=b)) == (3, 7)
    metrics.publish({c: 10_001}, 2)

    assert REGISTRY.get_sample_value("worker_tenant_groups", {"tenant": a}) is None  # dropped out: removed
    assert (sample("worker_tenant_groups", tenant=b), sample("worker_tenant_groups", tenant=c)) == (7, 10_001)
    assert sample("worker_tenant_group_count_count") == observed + 3
    assert sample("worker_tenant_group_limit_exceeded_total") == exceeded + 2
