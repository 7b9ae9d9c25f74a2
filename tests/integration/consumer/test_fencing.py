"""Fencing on Apache Kafka: a fenced producer is closed deliberately, never left to the garbage collector
(issue 19, defect 6: a worker sharing its transactional id died of heap corruption, `tcache_thread_shutdown():
unaligned tcache chunk detected`, right after a fencing; fence_loop.py reproduced it in 3 of 5 runs of 300
batches per sink before the fix)."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

pytestmark = pytest.mark.integration

ROUNDS = 150


def test_producers_fenced_many_times_in_one_process_are_replaced_without_a_crash(kafka_bootstrap: str) -> None:
    child = subprocess.run(
        [sys.executable, "-m", "tests.integration.consumer.fence_loop", kafka_bootstrap, str(ROUNDS)],
        capture_output=True,
        timeout=600,
    )
    assert child.returncode == 0, child.stderr.decode(errors="replace")[-2000:]
    summary = orjson.loads(child.stdout.splitlines()[-1])
    assert summary["committed"] == [ROUNDS, ROUNDS]
    assert sum(summary["fencings"]) >= 10  # they did fence each other, many times
