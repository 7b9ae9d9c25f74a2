"""The chaos run (tests/chaos/chaos.py): a short one in `make test`, the full one in `make chaos`, in both
consumer group protocols."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from tests.chaos.chaos import Chaos, failed, run
from worker.local.stack import choose_broker

ON_KAFKA = choose_broker(os.environ)[0] == "kafka"


@pytest.mark.integration
def test_short_chaos_run_loses_nothing(tmp_path: Path) -> None:
    # Scaling only on Apache Kafka: the embedded Tansu sometimes leaves a group without any assignment for good
    # after members leave and join (see the README); the full run scales there too, on a longer timeline.
    # Every fault of the full run, with a large change of 20,000 users instead of 300,000.
    summary = run(Chaos(events=3_000, rate=100, kill_every=7.0, scale=ON_KAFKA, big_change=20_000), tmp_path)
    print(orjson.dumps(summary).decode())
    assert summary["kills"] >= 1 and summary["poison"] >= 1
    assert summary["oversized"] == 1 and summary["too_large"] == 1
    assert summary["twin_fencings"] >= 1
    assert summary["zombies"] == 1 and summary["redis_full"] == 1
    assert failed(summary) == []


@pytest.mark.chaos
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_full_chaos_run(tmp_path: Path, protocol: str) -> None:
    if protocol == "consumer" and not ON_KAFKA:
        pytest.skip("the next-generation group protocol needs Apache Kafka (Tansu does not serve it)")
    summary = run(Chaos(group_protocol=protocol, kill_every=5.0 if ON_KAFKA else 8.0), tmp_path)
    print(orjson.dumps(summary).decode())
    assert summary["events"] >= 200_000
    assert summary["oversized"] == 1 and summary["too_large"] == 1
    assert summary["twin_fencings"] >= 1
    assert summary["zombies"] == 1 and summary["redis_full"] == 1
    assert failed(summary) == []
