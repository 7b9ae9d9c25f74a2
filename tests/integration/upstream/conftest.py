"""What the upstream integration tests share: a local Qlik tenant whose webhook points at a real ingest on the
test's broker, the worker, the jobs' settings, and the records every change of the tenant must give."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.integration.helpers import Stack, wait_for
from worker.config import Settings
from worker.local.ingest_client import IngestProcess
from worker.local.stack import free_port
from worker.local.tenant import Behaviour, LocalTenant
from worker.qlik.client import QlikClient
from worker.qlik.tenants import configured

SECRET = "upstream-secret-upstream-secret-upstream"
FAST_DELIVERY = Behaviour(delivery_attempts=2, delivery_backoff=0.1, disable_after=2)


@dataclass
class Upstream:
    stack: Stack
    tenant: LocalTenant
    ingest_port: int
    ingest: IngestProcess | None = None
    started: list[IngestProcess] = field(default_factory=list)

    def ingest_env(self) -> dict[str, str]:
        return self.stack.worker_env(WORKER_INGEST_SECRETS=SECRET)

    def start_ingest(self) -> IngestProcess:
        log = self.stack.workdir / f"ingest-{len(self.started)}.log"
        self.ingest = IngestProcess(self.ingest_env(), self.ingest_port, log).start()
        self.started.append(self.ingest)
        return self.ingest

    def stop_ingest(self) -> None:
        assert self.ingest is not None
        self.ingest.stop()

    def env(self, **extra: str) -> dict[str, str]:
        """The jobs' environment: the stack's and this tenant's, by API key unless told otherwise."""
        qlik = {"WORKER_QLIK_URL": self.tenant.url, "WORKER_QLIK_API_KEY": self.tenant.api_key}
        return self.stack.worker_env(**{**qlik, **extra})

    def settings(self, **extra: str) -> Settings:
        values = {key.removeprefix("WORKER_").lower(): value for key, value in self.env(**extra).items()}
        values = {k: v for k, v in values.items() if not k.startswith("kafka_") or k == "kafka_bootstrap_servers"}
        return Settings(**values)  # type: ignore[arg-type]

    def client(self, settings: Settings, **options: Any) -> QlikClient:
        (tenant,) = configured(settings)
        return QlikClient(tenant, settings.qlik_requests_per_minute, **options)

    def expected(self) -> Counter[tuple[str, ...]]:
        """The records every change of the tenant gives, each once: (group, change, time) per group event and
        (group, user, time) per user of a users.modified event."""
        out: Counter[tuple[str, ...]] = Counter()
        for item in self.tenant.audits:
            data = item["data"]
            if item["eventType"].endswith("users.modified"):
                out.update((data["id"], user, data["lastUpdatedAt"]) for user in data["affectedUsers"])
            else:
                out[(data["id"], item["eventType"].rsplit(".", 1)[1], data["lastUpdatedAt"])] += 1
        return out


def identities(records: list[dict[str, Any]]) -> Counter[tuple[str, ...]]:
    out: Counter[tuple[str, ...]] = Counter()
    for r in records:
        if r["schema"] == "membership_change/v1":
            out[(r["group_id"], r["user_id"], r["occurred_at"])] += 1
        else:
            out[(r["group_id"], r["change"], r["occurred_at"])] += 1
    return out


def processed(stack: Stack, timeout: float = 90) -> None:
    """Until the worker committed everything on the input topic (so its records are out)."""
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": stack.group_id})
    try:
        partitions = [TopicPartition(stack.input_topic, p) for p in range(stack.input_partitions)]

        def done() -> bool:
            ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions]
            committed = [tp.offset for tp in consumer.committed(partitions, timeout=10)]
            return all(end == 0 or c == end for c, end in zip(committed, ends, strict=True))

        wait_for(done, timeout, "the worker to commit the whole input topic")
    finally:
        consumer.close()


def all_records(stack: Stack) -> list[dict[str, Any]]:
    processed(stack)
    return [orjson.loads(m.value() or b"") for m in stack.read(stack.output_topic, lambda _m: False, 0)]


@pytest.fixture
def upstream_factory(stack: Stack) -> Iterator[Any]:
    made: list[tuple[Upstream, Any]] = []

    def make(behaviour: Behaviour = FAST_DELIVERY, *, webhook: bool = True) -> Upstream:
        stack.create_topics(2)
        tenant = LocalTenant("tenant-up", behaviour=behaviour)
        serving = tenant.serve()
        serving.__enter__()
        up = Upstream(stack, tenant, free_port())
        made.append((up, serving))
        if webhook:
            up.start_ingest()
            tenant.add_webhook(f"http://127.0.0.1:{up.ingest_port}/webhooks/qlik", SECRET)
        stack.start_worker().wait_ready()
        return up

    yield make
    for up, serving in made:
        for ingest in up.started:
            ingest.stop()
        serving.__exit__(None, None, None)
