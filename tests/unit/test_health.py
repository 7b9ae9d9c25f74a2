from __future__ import annotations

import time

import pytest

from worker.health import Health


def test_liveness_fails_once_the_loop_has_not_polled_within_max_poll_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    health = Health(max_poll_interval_s=10)
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 9)
    assert health.alive() is None
    monkeypatch.setattr(time, "monotonic", lambda: now + 11)
    assert health.alive() == "no poll for 11s"
    health.polled()
    assert health.alive() is None


def test_loop_readiness_needs_partitions_and_no_batch_waiting_for_a_retry() -> None:
    health = Health(max_poll_interval_s=10)
    assert health.loop_ready() == "no partitions assigned"
    health.assigned = 2
    assert health.loop_ready() is None
    health.retrying = "redis: connection refused"
    assert health.loop_ready() == "retrying a batch: redis: connection refused"
