"""Defect 6 on real Redis processes: `check` fails unless every write is fsynced before Redis acknowledges it
(appendonly yes, appendfsync always) and unless the replicas WORKER_REDIS_MIN_REPLICAS asks for are there;
with that setting a batch's writes wait for the replicas (WAIT), and fewer acknowledgements fail the batch as a
Redis failure, so the loop retries it; and (issue 19) the failover that wait is for."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import redis

from tests.integration.helpers import group_data, structured, users_modified_part
from tests.integration.state.redis_cluster import redis_server, wait_until
from worker.config import Settings
from worker.consumer.app import redis_processor
from worker.local.stack import Service
from worker.ops.check import Report, check_redis
from worker.processing.decode import decode
from worker.processing.models import Event
from worker.processing.offline import PlainMessage
from worker.processing.processor import BatchResult
from worker.processing.records import change_info
from worker.state.client import ReplicasBehind, ReplicaWait, connect, redis_client

pytestmark = pytest.mark.integration


def check(url: str, min_replicas: int = 0) -> Report:
    report = Report()
    check_redis(Settings(redis_url=url, redis_min_replicas=min_replicas), 5, report)
    return report


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (("--appendonly", "no"), "has AOF persistence off (appendonly no)"),
        (("--appendonly", "yes", "--appendfsync", "everysec"), "has appendfsync everysec: it acknowledges writes"),
        (("--appendonly", "yes", "--appendfsync", "no"), "has appendfsync no: it acknowledges writes"),
    ],
    ids=["no-aof", "everysec", "no-fsync"],
)
def test_check_fails_unless_every_write_is_on_disk_before_the_reply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: tuple[str, ...], problem: str
) -> None:
    server = redis_server(tmp_path, *options)
    try:
        report = check(server.address)
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert report.problems == 1, out
    assert problem in out and "events already committed in Kafka can be emitted again" in out


def test_check_passes_with_aof_always_and_counts_the_replicas(
    durable_pair: tuple[Service, Service], capsys: pytest.CaptureFixture[str]
) -> None:
    primary, _ = durable_pair
    report = check(primary.address, min_replicas=1)
    assert (report.problems, report.warnings) == (0, 0), capsys.readouterr().out
    report = check(primary.address, min_replicas=2)
    out = capsys.readouterr().out
    assert report.problems == 1 and "1 connected replica(s), WORKER_REDIS_MIN_REPLICAS asks for 2" in out
    report = check(primary.address)
    assert report.warnings == 1 and "WORKER_REDIS_MIN_REPLICAS is 0" in capsys.readouterr().out


def test_a_batch_waits_for_its_replicas_and_fails_as_a_redis_error_without_them(
    durable_pair: tuple[Service, Service],
) -> None:
    primary, replica = durable_pair
    value, headers = users_modified_part("e-1", "g-1", ["ann"], final=True)
    message = PlainMessage(("in", 0, 1), value, list(headers))
    settings = Settings(redis_url=primary.address, redis_min_replicas=1)
    processor = redis_processor(settings, redis_client(settings))
    assert len(processor.process([message], 0).outputs) == 1
    assert connect(replica.address).exists("gew:change:{" + _change_id(message) + "}:meta")

    replica.pause()  # a replica that stops acknowledging (network partition, overload)
    try:
        with pytest.raises(redis.RedisError, match="0 of 1 replica"):
            processor.process([message], 0)
        with pytest.raises(ReplicasBehind):
            ReplicaWait(connect(primary.address), 1, 100).wait()
    finally:
        replica.resume()
    retried: list[BatchResult] = []

    def retry() -> bool:  # as the loop does: the same batch again after a back-off, until the replica caught up
        try:
            retried.append(processor.process([message], 0))
        except ReplicasBehind:
            return False
        return True

    wait_until(retry, "the resumed replica never acknowledged")
    assert len(retried[0].outputs) == 1


def _change_id(message: PlainMessage) -> str:
    event = decode(message.data, message.header_list)
    assert isinstance(event, Event)
    return change_info(event)["change_id"]


@pytest.mark.parametrize("min_replicas", [1, 0])
def test_with_min_replicas_the_writes_of_a_committed_batch_survive_a_failover(
    durable_pair: tuple[Service, Service], min_replicas: int
) -> None:
    """Rule 6's claim, on a failover: a batch's writes are on the replica before its Kafka commit, so when the
    primary dies and the replica takes over, a copy of a committed event at another position is still a
    duplicate and an open change keeps its users. Without the wait (0) a replica that missed the writes (here:
    cut off from its primary, as in a network partition) takes over without them: the copy comes out again."""
    primary, replica = durable_pair
    created, created_headers = structured("created-1", "com.qlik.v1.group.created", group_data("g-1"))
    part, part_headers = users_modified_part("part-1", "g-2", ["ann", "bob"], final=False)
    settings = Settings(redis_url=primary.address, redis_min_replicas=min_replicas)
    processor = redis_processor(settings, redis_client(settings))
    promoted = connect(replica.address)
    if not min_replicas:
        promoted.execute_command("REPLICAOF", "NO", "ONE")
    batch = [PlainMessage(("in", 0, 1), created, created_headers), PlainMessage(("in", 0, 2), part, part_headers)]
    assert len(processor.process(batch, 0).outputs) == 1  # committed to Kafka after this returns
    primary.process.kill()  # the primary dies; its replica is promoted
    primary.process.wait()
    promoted.execute_command("REPLICAOF", "NO", "ONE")
    settings = Settings(redis_url=replica.address)
    after = redis_processor(settings, redis_client(settings))
    final, final_headers = users_modified_part("part-2", "g-2", ["cat"], final=True)
    copy = PlainMessage(("in", 1, 9), created, created_headers)  # the same event on another partition
    result = after.process([copy, PlainMessage(("in", 0, 3), final, final_headers)], 0)
    users = [orjson.loads(o.value or b"")["user_id"] for o in result.outputs if b"user_id" in (o.value or b"")]
    duplicates = result.events["com.qlik.v1.group.created", "duplicate"]
    if min_replicas:
        assert (duplicates, users) == (1, ["ann", "bob", "cat"])
    else:
        assert (duplicates, users) == (0, ["cat"])
