"""Fixtures of the Redis state tests: a three-master Redis Cluster and a primary with a replica (the session's
single Redis is in tests/integration/conftest.py)."""

from tests.integration.state.redis_cluster import durable_pair, redis_cluster  # noqa: F401  (fixtures)
