from __future__ import annotations

from tests.support.clock import ManualClock
from worker.consumer.health import Health


def test_liveness_fails_once_the_loop_has_not_polled_within_max_poll_interval() -> None:
    clock = ManualClock()
    health = Health(max_poll_interval_s=10, clock=clock)
    clock.now += 9
    assert health.alive() is None
    clock.now += 2
    assert health.alive() == "no poll for 11s"
    health.polled()
    assert health.alive() is None


def test_liveness_fails_while_one_batch_is_retried_for_longer_than_max_poll_interval() -> None:
    """Defect 3: a commit whose outcome never becomes definite kept /healthz green forever."""
    clock = ManualClock()
    health = Health(max_poll_interval_s=10, clock=clock)
    health.retry("kafka: commit timed out")
    for _ in range(11):  # the loop keeps polling while it retries
        clock.now += 1
        health.polled()
        health.retry("kafka: commit timed out")
    assert health.alive() == "retrying one batch for 11s: kafka: commit timed out"
    health.retried()
    assert health.alive() is None


def test_loop_readiness_needs_partitions_and_no_batch_waiting_for_a_retry() -> None:
    health = Health(max_poll_interval_s=10)
    assert health.loop_ready() == "no partitions assigned"
    health.assigned = 2
    assert health.loop_ready() is None
    health.retrying = "redis: connection refused"
    assert health.loop_ready() == "retrying a batch: redis: connection refused"
