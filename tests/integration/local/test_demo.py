"""The Tansu path of the local stack keeps working for machines without Java: `make demo` on it (the broker
choice itself is unit-tested in tests/unit/local/test_kafka.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.integration
def test_demo_runs_on_tansu() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env["WORKER_LOCAL_BROKER"] = "tansu"
    env["WORKER_METRICS_PORT"] = "0"
    done = subprocess.run(
        [sys.executable, "-m", "worker", "demo"], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "\n11 records on group-membership-changes:" in done.stdout
    assert "\n0 messages on qlik.group-events.dlq:" in done.stdout  # the poison sample is refused by the ingest
