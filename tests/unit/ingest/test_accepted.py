"""The ingest's per-tenant last accepted time (issue 21): recorded after a 202 only, written to Redis in one
`ZADD GT` per flush, kept across a Redis failure (and warned about once), and bounded in tenants."""

from __future__ import annotations

from typing import Any

import redis
import structlog.testing
from starlette.testclient import TestClient

from tests.unit.ingest.test_server import SECRET, TOPIC, FakeProducer, make_settings
from worker.ingest import accepted as accepted_module
from worker.ingest.accepted import AcceptedTimes
from worker.ingest.producer import Publisher, producer_config
from worker.ingest.secrets import sign
from worker.ingest.server import WEBHOOK_PATH, build_app
from worker.local.samples import seed_example
from worker.state.upstream import LAST_ACCEPTED


class FakeRedis:
    def __init__(self) -> None:
        self.down = False
        self.writes: list[tuple[str, dict[str, int], bool]] = []

    def zadd(self, key: str, mapping: dict[str, int], gt: bool = False) -> int:
        if self.down:
            raise redis.ConnectionError("down")
        self.writes.append((key, dict(mapping), gt))
        return len(mapping)


def test_a_stored_event_records_its_tenant_and_a_refused_one_does_not() -> None:
    fake = FakeRedis()
    times = AcceptedTimes(fake, flush_seconds=3600)  # type: ignore[arg-type]
    settings = make_settings()
    publisher = Publisher(producer_config(settings), TOPIC, 0.3, lambda config: FakeProducer(config))  # type: ignore[arg-type,return-value]
    body = seed_example("group-created")
    with TestClient(build_app(settings, publisher, accepted=times)) as client:
        headers = {"Content-Type": "application/json"}
        assert (
            client.post(WEBHOOK_PATH, content=body, headers={**headers, "Qlik-Signature": "0" * 64}).status_code == 401
        )
        times.flush()
        assert fake.writes == []
        signed = {**headers, "Qlik-Signature": sign(body, SECRET)}
        assert client.post(WEBHOOK_PATH, content=body, headers=signed).status_code == 202
    ((key, written, gt),) = fake.writes  # the lifespan's close flushed it
    assert key == LAST_ACCEPTED and gt and list(written) == ["VZhiEfgW2bLd7HgR-jjzAh6VnicipweT"]


def test_times_survive_a_redis_failure_and_the_warning_is_not_repeated() -> None:
    fake = FakeRedis()
    times = AcceptedTimes(fake)  # type: ignore[arg-type]
    fake.down = True
    with structlog.testing.capture_logs() as lines:
        times.accepted("t1")
        times.flush()
        times.accepted("t2")
        times.flush()
    assert [line["event"] for line in lines] == ["ingest_accepted_times_not_recorded"]
    fake.down = False
    times.flush()
    assert set(fake.writes[0][1]) == {"t1", "t2"}


def test_tenants_beyond_the_bound_are_not_tracked(monkeypatch: Any) -> None:
    monkeypatch.setattr(accepted_module, "MAX_TENANTS", 2)
    fake = FakeRedis()
    times = AcceptedTimes(fake)  # type: ignore[arg-type]
    for tenant in ("a", "b", "c", "a", None):
        times.accepted(tenant)
    times.flush()
    assert set(fake.writes[0][1]) == {"a", "b"}
