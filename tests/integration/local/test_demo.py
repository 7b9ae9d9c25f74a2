"""The Tansu path of the local stack keeps working for machines without Java: `make demo` on it, the outage of
the ingest that the webhook watch repairs included (the broker choice itself is unit-tested in
tests/unit/local/test_kafka.py)."""

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
    # 11 from the samples, 10 from the local tenant's changes (its outage repaired by the watch)
    assert "\n21 records on group-membership-changes:" in done.stdout
    assert "\n0 messages on qlik.group-events.dlq:" in done.stdout  # the poison sample is refused by the ingest
    assert "the tenant disabled the webhook: enabled=False" in done.stdout
    assert "webhook enabled again: True" in done.stdout
    assert "the local tenant's 10 changes came out as 10 distinct records" in done.stdout
