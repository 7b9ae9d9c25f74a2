"""Real Kafka and Redis for integration tests, started once per session on free ports.

Order of preference: `WORKER_TEST_KAFKA` / `WORKER_TEST_REDIS` (external services; the Redis database in that
URL is flushed before every test), testcontainers when a Docker engine answers, else local processes as `make run`
uses: the broker `WORKER_LOCAL_BROKER` picks (Apache Kafka in KRaft mode where Java 17+ is present, else Tansu)
and a private redis-server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.integration.helpers import Stack, aborted_records_hidden
from worker.local.kafka import KAFKA_VERSION
from worker.local.stack import Service, start_kafka, start_redis


def _docker_engine() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def kafka_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service | str]:
    """A `Service` when the tests own the broker process (so a test may pause it), else the bootstrap."""
    if external := os.environ.get("WORKER_TEST_KAFKA"):
        yield external
    elif _docker_engine():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(f"apache/kafka:{KAFKA_VERSION}").with_kraft() as container:
            yield container.get_bootstrap_server()
    else:
        service = start_kafka(tmp_path_factory.mktemp("kafka"))
        yield service
        service.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_service: Service | str) -> str:
    return kafka_service.address if isinstance(kafka_service, Service) else kafka_service


@pytest.fixture(scope="session")
def redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service | str]:
    """A `Service` when the tests own the process (so a test may stop it), else the URL."""
    if external := os.environ.get("WORKER_TEST_REDIS"):
        yield external
    elif _docker_engine():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7") as container:
            yield f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
    else:
        service = start_redis(tmp_path_factory.mktemp("redis"))
        yield service
        service.stop()


@pytest.fixture(scope="session")
def broker_hides_aborted(kafka_service: Service | str, kafka_bootstrap: str) -> bool:
    """Whether read_committed readers of this broker skip aborted transactions. Apache Kafka does (local,
    container, or external: taken as given, the exactly-once assertions hold there); the embedded Tansu does not
    (its fetch responses list no aborted transactions), so there the probe decides."""
    if isinstance(kafka_service, Service) and kafka_service.kind == "tansu":
        return aborted_records_hidden(kafka_bootstrap)
    return True


@pytest.fixture
def stack(
    kafka_service: Service | str, kafka_bootstrap: str, redis_service: Service | str, tmp_path: Path
) -> Iterator[Stack]:
    """Fresh topics, consumer group and Redis data for one test, and the workers it starts."""
    redis_url = redis_service.address if isinstance(redis_service, Service) else redis_service
    redis.Redis.from_url(redis_url).flushdb()
    name = uuid.uuid4().hex[:10]
    s = Stack(
        bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        redis_service=redis_service if isinstance(redis_service, Service) else None,
        kafka_service=kafka_service if isinstance(kafka_service, Service) else None,
        input_topic=f"in-{name}",
        output_topic=f"out-{name}",
        dlq_topic=f"dlq-{name}",
        group_id=f"group-{name}",
        workdir=tmp_path,
    )
    yield s
    for worker in s.workers:
        worker.kill()
