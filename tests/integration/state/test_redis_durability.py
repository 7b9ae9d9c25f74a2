"""Defect 6 on real Redis processes: `check` fails unless every write is fsynced before Redis acknowledges it
(appendonly yes, appendfsync always) and unless the replicas WORKER_REDIS_MIN_REPLICAS asks for are there;
with that setting a batch's writes wait for the replicas (WAIT), and fewer acknowledgements fail the batch as a
Redis failure, so the loop retries it."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.integration.helpers import users_modified_part
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
