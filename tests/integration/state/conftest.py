"""Fixtures of the Redis state tests: a client of the session's Redis, flushed per test; a three-master Redis
Cluster and a primary with a replica (the session's single Redis is in tests/integration/conftest.py)."""

import pytest
import redis

from tests.integration.state.redis_cluster import durable_pair, redis_cluster  # noqa: F401  (fixtures)
from worker.state.client import connect


@pytest.fixture
def client(redis_service: object) -> redis.Redis:
    url = getattr(redis_service, "address", redis_service)
    assert isinstance(url, str)
    client = connect(url)
    client.flushdb()
    assert isinstance(client, redis.Redis)
    return client
