"""Redis and the broker going away for a while: the worker pauses, reports not ready, retries with back-off,
and resumes by itself, with nothing lost, nothing dead-lettered and (exactly-once) nothing repeated."""

from __future__ import annotations

import time
from collections import Counter

import orjson
import pytest

from tests.integration.helpers import Stack, group_data, structured, wait_for
from worker.local.stack import Service

pytestmark = pytest.mark.integration

CREATED = "com.qlik.v1.group.created"
OUTAGE_S = 10


def send(stack: Stack, start: int, count: int) -> None:
    stack.produce(
        (i % 2, None, *structured(f"o{i}", CREATED, group_data(f"g{i}"))) for i in range(start, start + count)
    )


def outage(stack: Stack, service: Service | None, cause: str) -> None:
    if service is None:
        pytest.skip("the service is external: the tests cannot pause it")
    worker = stack.start_worker()
    worker.wait_ready()
    send(stack, 0, 100)
    stack.records(100)

    service.pause()
    try:
        if cause == "redis":
            send(stack, 100, 100)  # the broker is up: input arrives while Redis is away
        wait_for(lambda: worker.get("/readyz")[0] == 503, 30, "not ready during the outage")
        time.sleep(OUTAGE_S)
        assert worker.process is not None and worker.process.poll() is None, "the worker must not exit"
        assert worker.get("/healthz")[0] == 200, "the loop keeps polling while it waits"
    finally:
        service.resume()
    if cause == "kafka":
        send(stack, 100, 100)

    records = stack.records(200, timeout=90)
    ids = Counter(orjson.loads(m)["event_id"] for m in (orjson.dumps(r) for r in records))
    assert set(ids) == {f"o{i}" for i in range(200)}
    assert max(ids.values()) == 1
    assert stack.read(stack.dlq_topic, lambda m: False, 0) == []
    wait_for(lambda: worker.get("/readyz")[0] == 200, 60, "ready again")
    if cause == "redis":
        assert worker.metric("worker_batch_retries_total", cause="redis") >= 1
        assert '"event": "batch_retry"' in worker.log()


def test_redis_outage_pauses_the_worker_until_redis_is_back(stack: Stack) -> None:
    stack.create_topics(2)
    outage(stack, stack.redis_service, "redis")


def test_broker_outage_is_survived_without_a_crash_or_duplicates(stack: Stack) -> None:
    stack.create_topics(2)
    outage(stack, stack.kafka_service, "kafka")
