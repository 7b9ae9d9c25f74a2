"""Redis Cluster for real (defect 9): with WORKER_REDIS_CLUSTER the worker's stores run on a three-master
cluster, pipelines split by slot, every script call on the keys of one hash tag, and give the same answers as
on one server."""

from __future__ import annotations

import itertools

import orjson
import pytest
from redis.cluster import RedisCluster

from tests.integration.helpers import users_modified_part
from worker.config import Settings
from worker.consumer.app import redis_processor
from worker.processing.offline import Offline, PlainMessage
from worker.processing.processor import BatchResult, Processor
from worker.state.client import primaries, redis_client

pytestmark = pytest.mark.integration
positions = itertools.count()
CONTROL = "control"


@pytest.fixture
def settings(redis_cluster: str) -> Settings:
    s = Settings(redis_url=redis_cluster, redis_cluster=True, control_topic=CONTROL, batch_timeout_seconds=1)
    client = redis_client(s)
    assert isinstance(client, RedisCluster)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    return s


def part(group: str, users: list[str], *, final: bool) -> PlainMessage:
    value, headers = users_modified_part(f"{group}-{next(positions)}", group, users, final=final)
    return PlainMessage(("in", 0, next(positions)), value, list(headers))


def drain(processor: Processor, result: BatchResult, now_ms: int) -> list[BatchResult]:
    results = [result]
    while commands := [
        PlainMessage((CONTROL, 0, next(positions)), o.value, o.headers, o.key)
        for o in results[-1].outputs
        if o.topic == CONTROL
    ]:
        results.append(processor.process(commands, now_ms))
    return results


def outputs(results: list[BatchResult]) -> list[bytes | None]:
    """The records, in order (the in-memory processor names its topics otherwise)."""
    return [o.value for r in results for o in r.outputs if o.topic != CONTROL]


def test_the_processor_on_a_cluster_emits_what_it_emits_in_memory(settings: Settings) -> None:
    client = redis_client(settings)
    assert len(primaries(client)) == 3
    processor = redis_processor(settings, client)
    offline = Offline()
    groups = [f"g-{i}" for i in range(12)]  # change ids hash to slots on every node
    batch = [part(g, [f"{g}-u{j}" for j in range(5)], final=False) for g in groups]
    batch += [part(g, ["late"], final=i % 2 == 0) for i, g in enumerate(groups)]
    batch.append(
        PlainMessage(("in", 1, 1), batch[0].data, batch[0].header_list)
    )  # a copy on another partition: a duplicate
    results = drain(processor, processor.process(batch, 0), 0)
    expected = offline.feed(batch, 0)
    assert outputs(results) == outputs(expected)
    assert results[0].events == expected[0].events
    nodes_with_changes = {
        client.get_node_from_key("gew:change:{" + info + "}:meta").name for info in _change_ids(results)
    }
    assert len(nodes_with_changes) > 1  # the state really is spread over the nodes

    for r in results:
        processor.settle(r)
    scan = processor.scan_timeouts(10_000)  # the open half times out by command, on the cluster too
    assert len(scan.outputs) == 6
    flushed = drain(
        processor,
        processor.process(
            [PlainMessage((CONTROL, 0, next(positions)), o.value, o.headers, o.key) for o in scan.outputs], 10_000
        ),
        10_000,
    )
    assert sum(r.changes_closed["timed_out"] for r in flushed) == 6
    for r in flushed:
        processor.settle(r)
    assert processor.open_changes() == 0


def _change_ids(results: list[BatchResult]) -> set[str]:
    return {
        orjson.loads(o.value)["change_id"] for r in results for o in r.outputs if o.topic == "group-membership-changes"
    }
