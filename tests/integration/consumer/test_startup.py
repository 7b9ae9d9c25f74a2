"""What `python -m worker run` and `python -m worker ingest` check at start, on a real broker and Redis
(issue 19): the topics they write to (defect 8) and a Redis that would evict the worker's state (defect 3).
Each refusal exits non-zero with a message naming what to fix, instead of running degraded."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from tests.integration.helpers import Stack
from tests.integration.state.redis_cluster import redis_server
from worker.local.stack import Service, create_topics

pytestmark = pytest.mark.integration

EXIT_WAIT_S = 120  # the worker waits up to 60 s for Kafka's metadata; here Kafka answers at once


@pytest.fixture
def evicting_redis(tmp_path: Path) -> Iterator[Service]:
    server = redis_server(tmp_path, "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
    yield server
    server.stop()


def test_a_worker_without_its_output_topic_refuses_to_start_naming_it(stack: Stack) -> None:
    create_topics(stack.bootstrap, {stack.input_topic: 1, stack.dlq_topic: 1, stack.control_topic: 1})
    worker = stack.start_worker()
    assert worker.process is not None and worker.process.wait(EXIT_WAIT_S) == 1
    assert (
        f"refusing to start: the output topic '{stack.output_topic}' does not exist — create it, or fix "
        "WORKER_OUTPUT_TOPIC" in worker.log()
    )


def test_a_worker_creates_its_missing_control_topic_like_the_input_topic(stack: Stack) -> None:
    """A deployment upgraded from a version without WORKER_CONTROL_TOPIC: the worker creates the group's own
    topic (as Kafka Streams creates its internal topics) with the input topic's partitions, and runs."""
    create_topics(stack.bootstrap, {stack.input_topic: 3, stack.output_topic: 1, stack.dlq_topic: 1})
    stack.start_worker().wait_ready(90)
    topics = AdminClient({"bootstrap.servers": stack.bootstrap}).list_topics(timeout=10).topics
    assert len(topics[stack.control_topic].partitions) == 3


def test_the_ingest_without_its_topic_refuses_to_start_naming_it(stack: Stack) -> None:
    env = {
        **os.environ,
        **stack.worker_env(),
        "WORKER_INGEST_TOPIC": f"{stack.input_topic}.missing",
        "WORKER_INGEST_ALLOW_UNSIGNED": "true",
    }
    ingest = subprocess.run(
        [sys.executable, "-m", "worker", "ingest"], env=env, capture_output=True, timeout=EXIT_WAIT_S
    )
    assert ingest.returncode == 1
    assert (
        f"refusing to start: the ingest topic '{stack.input_topic}.missing' does not exist — create it, or fix "
        "WORKER_INGEST_TOPIC" in ingest.stderr.decode()
    )


def test_a_worker_refuses_a_redis_that_evicts_unless_told_otherwise(stack: Stack, evicting_redis: Service) -> None:
    stack.create_topics()
    stack.redis_url = evicting_redis.address
    refused = stack.start_worker()
    assert refused.process is not None and refused.process.wait(EXIT_WAIT_S) == 2
    assert "maxmemory-policy allkeys-lru" in refused.log() and "WORKER_REDIS_ALLOW_EVICTION=true" in refused.log()
    stack.start_worker(1, WORKER_REDIS_ALLOW_EVICTION="true").wait_ready(90)
