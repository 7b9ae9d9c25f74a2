"""worker.ingest.server with a fake Kafka producer: every row of the endpoint's status table, what is produced (the
body byte for byte, key, headers), the failure paths of the delivery (queue full, no report in time, error
report, fatal error and replacement), the start refusal, and the app against its OpenAPI document
(schemathesis). The same endpoint on a real broker: tests/integration/ingest/test_server.py."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import requests
import schemathesis
import structlog
import structlog.testing
from confluent_kafka import KafkaError, KafkaException
from hypothesis import HealthCheck, settings
from starlette.testclient import TestClient

from tests.support.kafka_fakes import FakeMessage
from worker.config import Settings
from worker.ingest import metrics as ingest_metrics
from worker.ingest.producer import Publisher, producer_config
from worker.ingest.secrets import sign
from worker.ingest.server import UMS_PATH, WEBHOOK_PATH, build_app, endpoints, refusal
from worker.local.samples import UMS_EXAMPLE, seed_example
from worker.processing.ums import looks_like_ums

SECRET = "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t"
OLD_SECRET = "old-old-old-old-old-old-old-old-old"
TOPIC = "qlik.group-events"


@dataclass
class FakeProducer:
    """Acknowledges every record at the next poll, unless told otherwise (`mode`)."""

    config: dict[str, Any]
    # ack | silent (never reports) | error (reports a timeout) | full (BufferError) | fatal (produce raises a
    # fatal error) | fenced (reports PRODUCER_FENCED, for good) | too_large (produce raises MSG_SIZE_TOO_LARGE)
    # | refused (reports MSG_SIZE_TOO_LARGE: the broker's RecordTooLarge)
    mode: str = "ack"
    produced: list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]] = field(default_factory=list)
    pending: list[tuple[Callable[..., None], str]] = field(default_factory=list)
    purged: bool = False
    metadata_requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def produce(self, topic: str, value: bytes, key: bytes | None, *, headers: Any, on_delivery: Any) -> None:
        if self.mode == "full":
            raise BufferError("queue full")
        if self.mode == "fatal":
            raise KafkaException(KafkaError(KafkaError._FATAL, "fenced", fatal=True))
        if self.mode == "too_large":
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large"))
        with self.lock:
            self.produced.append((topic, value, key, headers))
            self.pending.append((on_delivery, topic))

    def poll(self, timeout: float) -> int:
        with self.lock:
            pending = [] if self.mode == "silent" else self.pending
            if self.mode != "silent":
                self.pending = []
        for index, (callback, topic) in enumerate(pending):
            if self.mode == "error":
                callback(KafkaError(KafkaError._MSG_TIMED_OUT, "timed out"), None)
            elif self.mode == "fenced":
                callback(KafkaError(KafkaError.PRODUCER_FENCED, "fenced"), None)
            elif self.mode == "refused":
                callback(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large"), None)
            else:
                callback(None, FakeMessage(topic, 0, len(self.produced) - len(pending) + index))
        if not pending:
            threading.Event().wait(min(timeout, 0.01))
        return len(pending)

    def flush(self, timeout: float) -> int:
        return self.poll(0)

    def purge(self) -> None:
        self.purged = True
        with self.lock:
            pending, self.pending = self.pending, []
        for callback, _topic in pending:
            callback(KafkaError(KafkaError._PURGE_QUEUE, "purged"), None)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        self.metadata_requests += 1
        if self.mode == "silent":
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "down"))
        return _metadata()


def _metadata() -> Any:
    """What list_topics answers for a healthy topic with one partition."""
    topic = SimpleNamespace(error=None, partitions={0: object()})
    return SimpleNamespace(topics={TOPIC: topic})


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("WORKER_"):
            monkeypatch.delenv(key)


def make_settings(**values: Any) -> Settings:
    return Settings(ingest_secrets=f"{SECRET},{OLD_SECRET}", ingest_delivery_timeout_ms=300, **values)


@dataclass
class Endpoint:
    client: TestClient
    producers: list[FakeProducer]

    @property
    def producer(self) -> FakeProducer:
        return self.producers[-1]

    def post(
        self,
        body: bytes,
        *,
        secret: str | None = SECRET,
        content_type: str = "application/json",
        path: str = WEBHOOK_PATH,
        header: str = "Qlik-Signature",
        **kw: Any,
    ):
        headers = {"Content-Type": content_type, **kw.pop("headers", {})}
        if secret is not None:
            headers[header] = sign(body, secret)
        return self.client.post(path, content=body, headers=headers, **kw)

    def post_ums(self, body: bytes, secret: str | None = None, header: str = "UMS-Signature"):
        return self.post(body, secret=secret, path=UMS_PATH, header=header)


@pytest.fixture
def endpoint_factory() -> Iterator[Callable[..., Endpoint]]:
    clients: list[TestClient] = []

    def start(settings: Settings | None = None, mode: str = "ack") -> Endpoint:
        settings = settings or make_settings()
        producers: list[FakeProducer] = []

        def factory(config: dict[str, Any]) -> FakeProducer:
            producers.append(FakeProducer(config, mode if not producers else "ack"))
            return producers[-1]

        publisher = Publisher(producer_config(settings), TOPIC, settings.ingest_delivery_timeout_ms / 1000, factory)
        client = TestClient(build_app(settings, publisher)).__enter__()
        clients.append(client)
        return Endpoint(client, producers)

    yield start
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def endpoint(endpoint_factory) -> Endpoint:
    return endpoint_factory()


# ---- the status table --------------------------------------------------------------------------------------


def test_stored_answers_202_with_the_position_and_produces_the_body_byte_for_byte(endpoint):
    body = seed_example("group-created")
    response = endpoint.post(body, content_type="application/cloudevents+json; charset=utf-8")
    assert response.status_code == 202
    assert response.json() == {"topic": TOPIC, "partition": 0, "offset": 0}
    ((topic, value, key, headers),) = endpoint.producer.produced
    assert (topic, value) == (TOPIC, body)
    assert key == b"VZhiEfgW2bLd7HgR-jjzAh6VnicipweT:507f191e810c19729de860ea"
    names = dict(headers)
    assert names["content-type"] == b"application/cloudevents+json"  # the canonical media type, not the header
    assert names["ingest.received_at"].endswith(b"Z")


def test_body_with_odd_whitespace_and_unicode_is_produced_unchanged(endpoint):
    body = '{ "tenantid" : "t",\n\t"data": {"id": "g", "name": "Équipe \\u00e9 ✓"} }  '.encode()
    assert endpoint.post(body).status_code == 202
    assert endpoint.producer.produced[0][1:3] == (body, b"t:g")


def test_the_previous_secret_still_works_during_a_rotation(endpoint):
    assert endpoint.post(b'{"id": "x"}', secret=OLD_SECRET).status_code == 202


def test_upper_case_hex_signature_is_accepted(endpoint):
    body = b'{"id": "x"}'
    headers = {"Content-Type": "application/json", "Qlik-Signature": sign(body, SECRET).upper()}
    assert endpoint.client.post(WEBHOOK_PATH, content=body, headers=headers).status_code == 202


@pytest.mark.parametrize("secret", [None, "another-secret-another-secret-another"], ids=["missing", "wrong"])
def test_missing_or_wrong_signature_is_401(endpoint, secret):
    response = endpoint.post(b'{"id": "x"}', secret=secret)
    assert response.status_code == 401 and response.json() == {"error": "Qlik-Signature missing or wrong"}
    assert endpoint.producer.produced == []


def test_tampered_body_with_a_valid_looking_signature_is_401(endpoint):
    body = seed_example("group-created")
    tampered = body.replace(b"Development", b"Administrators")
    headers = {"Content-Type": "application/json", "Qlik-Signature": sign(body, SECRET)}
    assert endpoint.client.post(WEBHOOK_PATH, content=tampered, headers=headers).status_code == 401
    assert endpoint.producer.produced == []


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"', b"42", b"", b"\xff\xfe{}"])
def test_not_a_json_object_is_400(endpoint, body):
    response = endpoint.post(body)
    assert response.status_code == 400 and "error" in response.json()
    assert endpoint.producer.produced == []


def test_signature_is_checked_before_the_body_is_parsed(endpoint):
    assert endpoint.post(b"{not json", secret=None).status_code == 401


def test_body_over_the_limit_by_content_length_is_413(endpoint_factory):
    endpoint = endpoint_factory(make_settings(ingest_max_body_bytes=100))
    body = b'{"pad": "' + b"x" * 100 + b'"}'
    response = endpoint.post(body)
    assert response.status_code == 413 and response.json()["error"] == "body over 100 bytes"
    assert endpoint.post(b'{"pad": "' + b"x" * 80 + b'"}').status_code == 202  # 91 bytes: under
    assert len(endpoint.producer.produced) == 1


def test_body_over_the_limit_while_reading_is_413(endpoint_factory):
    endpoint = endpoint_factory(make_settings(ingest_max_body_bytes=100))
    chunks = [b'{"pad": "', b"x" * 60, b"x" * 60, b'"}']
    body = b"".join(chunks)
    headers = {"Content-Type": "application/json", "Qlik-Signature": sign(body, SECRET)}
    # An iterator is sent chunked: no Content-Length, so only the reading can notice.
    response = endpoint.client.post(WEBHOOK_PATH, content=iter(chunks), headers=headers)
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413
    assert endpoint.producer.produced == []


def test_malformed_content_length_is_400(endpoint):
    headers = {"Content-Type": "application/json", "Content-Length": "-5"}
    assert endpoint.client.post(WEBHOOK_PATH, content=b"{}", headers=headers).status_code == 400


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "application/x-www-form-urlencoded", ""])
def test_other_content_type_is_415(endpoint, content_type):
    response = endpoint.post(b'{"id": "x"}', content_type=content_type)
    assert response.status_code == 415 and "Content-Type" in response.json()["error"]
    assert endpoint.producer.produced == []


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_another_method_is_405_with_allow(endpoint, method):
    response = endpoint.client.request(method, WEBHOOK_PATH)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json() == {"error": "use POST"}


@pytest.mark.parametrize("mode", ["full", "silent", "error"], ids=["queue-full", "no-report", "error-report"])
def test_kafka_unavailable_is_503_with_retry_after(endpoint_factory, mode):
    endpoint = endpoint_factory(mode=mode)
    response = endpoint.post(b'{"id": "x"}')
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert response.json() == {"error": "Kafka unavailable, retry later"}


def test_no_acknowledgement_within_the_delivery_timeout_is_503_with_the_cause_logged_not_answered(endpoint_factory):
    """The answer lands in the sender's delivery history: librdkafka's text stays in our log."""
    endpoint = endpoint_factory(mode="silent")
    with structlog.testing.capture_logs() as logged:
        response = endpoint.post(b'{"id": "x"}')
    assert response.status_code == 503 and "300 ms" not in response.text
    (line,) = [entry for entry in logged if entry["event"] == "webhook"]
    assert line["cause"] == "no acknowledgement within 300 ms"


@pytest.mark.parametrize("mode", ["fatal", "fenced"])
def test_a_producer_that_stays_broken_is_replaced(endpoint_factory, mode):
    endpoint = endpoint_factory(mode=mode)
    before = ingest_metrics.PRODUCERS_REPLACED._value.get()
    assert endpoint.post(b'{"id": "x"}').status_code == 503
    response = None
    for _ in range(100):  # the poll thread replaces it within one poll interval
        if len(endpoint.producers) == 2:
            response = endpoint.post(b'{"id": "x"}')
            break
        threading.Event().wait(0.02)
    assert response is not None and response.status_code == 202
    assert endpoint.producers[0].purged
    assert ingest_metrics.PRODUCERS_REPLACED._value.get() == before + 1


# ---- secrets bound to tenants (issue 20, item 1), rotation from a file (item 5) -------------------------------

TENANT_A, TENANT_B = "tenant-a", "tenant-b"
A_SECRET, B_SECRET = "secret-of-tenant-a-secret-of-tenant-a", "secret-of-tenant-b-secret-of-tenant-b"
UMS_TENANT = "b4d8bb18-dc97-4e18-8049-50a04edf453f"  # the UMS seed example's tenantId
UMS_SECRET = "ums-secret-of-the-seed-tenant-ums-secret"


def cloudevent(tenant: object, data_tenant: object = None) -> bytes:
    data = {"id": "g-1", "tenantId": tenant if data_tenant is None else data_tenant}
    return orjson.dumps({"specversion": "1.0", "id": "e-1", "tenantid": tenant, "data": data})


def test_a_secret_bound_to_a_tenant_signs_for_that_tenant_only(endpoint_factory):
    """The admin of tenant A knows A's secret: with it, events of A are stored, forged events of B are 403."""
    bound = f"{TENANT_A}:{A_SECRET},{TENANT_B}:{B_SECRET}"
    endpoint = endpoint_factory(Settings(ingest_secrets=bound, ingest_delivery_timeout_ms=300))
    assert endpoint.post(cloudevent(TENANT_A), secret=A_SECRET).status_code == 202
    assert endpoint.post(cloudevent(TENANT_B), secret=B_SECRET).status_code == 202
    forged = [
        cloudevent(TENANT_B),
        cloudevent(TENANT_A, data_tenant=TENANT_B),
        cloudevent(TENANT_B, data_tenant=TENANT_A),
        orjson.dumps({"specversion": "1.0", "id": "e-2", "data": {"id": "g-1"}}),  # names no tenant
        cloudevent(42),
    ]
    for body in forged:
        response = endpoint.post(body, secret=A_SECRET)
        assert response.status_code == 403, body
        assert response.json() == {"error": "the signature's secret is not bound to the tenant the body names"}
    assert len(endpoint.producer.produced) == 2


def test_a_bare_secret_signs_for_any_tenant(endpoint):
    assert endpoint.post(cloudevent(TENANT_B), secret=SECRET).status_code == 202
    assert endpoint.post(orjson.dumps({"id": "no tenant at all"}), secret=OLD_SECRET).status_code == 202


def test_a_rotated_secrets_file_is_used_without_a_restart(endpoint_factory, tmp_path):
    path = tmp_path / "secrets"
    path.write_text(f"{OLD_SECRET}\n")
    endpoint = endpoint_factory(Settings(ingest_secrets_file=str(path), ingest_delivery_timeout_ms=300))
    assert endpoint.post(cloudevent(TENANT_A), secret=OLD_SECRET).status_code == 202
    assert endpoint.post(cloudevent(TENANT_A), secret=A_SECRET).status_code == 401
    replaced = tmp_path / "secrets.new"  # as Kubernetes updates a mounted Secret: a new file under the path
    replaced.write_text(f"{TENANT_A}:{A_SECRET}\n")
    os.replace(replaced, path)
    wait_until(lambda: endpoint.post(cloudevent(TENANT_A), secret=A_SECRET).status_code == 202)
    assert endpoint.post(cloudevent(TENANT_A), secret=OLD_SECRET).status_code == 401
    assert endpoint.post(cloudevent(TENANT_B), secret=A_SECRET).status_code == 403
    with structlog.testing.capture_logs() as logged:
        path.write_text("too-short-to-be-a-secret\n")
        wait_until(lambda: any(entry["event"] == "secrets_file_invalid" for entry in logged))
    assert endpoint.post(cloudevent(TENANT_A), secret=A_SECRET).status_code == 202, "the loaded secrets are kept"
    assert "too-short-to-be-a-secret" not in repr(logged) and A_SECRET not in repr(logged)


def wait_until(condition: Callable[[], bool], timeout: float = 5) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        threading.Event().wait(0.05)
    raise AssertionError("not within the timeout")


# ---- the UMS endpoint: its own path, header and secrets ------------------------------------------------------


@pytest.fixture
def two_senders(endpoint_factory) -> Endpoint:
    return endpoint_factory(
        Settings(ingest_secrets=SECRET, ingest_ums_secrets=f"{UMS_TENANT}:{UMS_SECRET}", ingest_delivery_timeout_ms=300)
    )


def test_a_ums_webhook_enters_through_its_own_endpoint_with_its_own_secret(two_senders):
    ums = seed_example(UMS_EXAMPLE)
    response = two_senders.post(ums, secret=SECRET)
    assert response.status_code == 403, "a Qlik secret does not let a UMS webhook in"
    assert response.json() == {"error": "a UMS webhook is not accepted on the Qlik endpoint"}
    assert two_senders.post_ums(ums, secret=SECRET).status_code == 401
    assert two_senders.post_ums(ums, secret=UMS_SECRET, header="Qlik-Signature").status_code == 401
    assert two_senders.post_ums(cloudevent(UMS_TENANT), secret=UMS_SECRET).status_code == 403
    answer = two_senders.post_ums(ums, secret=UMS_SECRET)
    assert answer.status_code == 202
    ((_topic, value, key, _headers),) = two_senders.producer.produced
    assert value == ums and key == f"{UMS_TENANT}:f68c05b7-b6a0-46bf-9b6d-d8fecd31db21".encode()


def test_a_ums_secret_is_bound_to_its_tenant(two_senders):
    other = seed_example(UMS_EXAMPLE).replace(UMS_TENANT.encode(), b"another-tenant")
    assert two_senders.post_ums(other, secret=UMS_SECRET).status_code == 403
    assert two_senders.producer.produced == []


def test_the_ums_endpoint_answers_seismics_url_verification_when_signed(two_senders):
    old = orjson.dumps({"type": "verification", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
    answer = two_senders.post_ums(old, secret=UMS_SECRET)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    assert answer.text == "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    new = orjson.dumps(
        {
            "id": "8f7d9d8b-1d5a-4f2d-9b3e-2b7f0f7a0c11",
            "version": "WebhookChallengeV1",
            "occurredAt": "2026-04-07T12:34:56.000Z",
            "tenantId": UMS_TENANT,
            "data": {"challenge": "91031261-0508-41aa-bd17-53c390a96a99"},
            "application": "AppRegistry",
            "productArea": "Integrations",
        }
    )
    answer = two_senders.post_ums(new, secret=UMS_SECRET)
    assert answer.status_code == 200 and answer.json() == {"challenge": "91031261-0508-41aa-bd17-53c390a96a99"}
    assert two_senders.post_ums(old).status_code == 401
    assert two_senders.producer.produced == [], "a challenge is not an event"


def test_without_ums_secrets_the_ums_endpoint_refuses_everything(endpoint):
    assert endpoint.post_ums(seed_example(UMS_EXAMPLE), secret=SECRET).status_code == 401


# ---- what is produced, and the other endpoints -------------------------------------------------------------


def test_producer_is_idempotent_with_acks_all_whatever_the_environment(monkeypatch):
    monkeypatch.setenv("WORKER_KAFKA_ENABLE_IDEMPOTENCE", "false")
    monkeypatch.setenv("WORKER_KAFKA_ACKS", "1")
    monkeypatch.setenv("WORKER_KAFKA_LINGER_MS", "2")
    monkeypatch.setenv("WORKER_KAFKA_GROUP_ID", "consumer-only")
    config = producer_config(make_settings())
    assert (config["enable.idempotence"], config["acks"], config["linger.ms"]) == (True, "all", "2")
    assert config["message.timeout.ms"] == 300 and "group.id" not in config


def test_health_ready_metrics_and_openapi(endpoint):
    assert endpoint.client.get("/healthz").status_code == 200
    assert endpoint.client.get("/readyz").text == "ready\n"
    endpoint.post(b'{"id": "x"}')
    endpoint.post(b'{"id": "x"}', secret=None)
    text = endpoint.client.get("/metrics").text
    assert 'ingest_requests_total{route="/webhooks/qlik",status="202"}' in text
    assert 'ingest_requests_total{route="/webhooks/qlik",status="401"}' in text
    assert "ingest_body_bytes_bucket" in text and "ingest_ack_seconds_bucket" in text
    assert "worker_events_total" not in text  # the worker's metrics are not the ingest's
    assert endpoint.client.get("/openapi.json").json()["paths"][WEBHOOK_PATH]["post"]["responses"]["202"]


def test_not_ready_when_kafka_does_not_answer(endpoint_factory):
    endpoint = endpoint_factory(mode="silent")
    response = endpoint.client.get("/readyz")
    assert response.status_code == 503 and "down" in response.text


@pytest.mark.parametrize("mode", ["too_large", "refused"], ids=["by-the-producer", "by-the-broker"])
def test_a_body_too_large_for_kafka_is_413_not_503(endpoint_factory, mode):
    """Sending it again cannot help: 503 would make the sender retry it until it disables the webhook."""
    endpoint = endpoint_factory(mode=mode)
    response = endpoint.post(b'{"id": "x"}')
    assert response.status_code == 413 and "retry-after" not in response.headers
    assert response.json() == {"error": "body too large for the Kafka topic"}


def test_refuses_to_start_when_the_body_limit_does_not_fit_the_producers(monkeypatch):
    assert refusal(make_settings()) is None
    monkeypatch.setenv("WORKER_KAFKA_MESSAGE_MAX_BYTES", "1000000")  # librdkafka's default
    assert "WORKER_INGEST_MAX_BODY_BYTES=1000000 does not fit" in (refusal(make_settings()) or "")
    assert refusal(make_settings(ingest_max_body_bytes=990_000)) is None


def test_the_producer_queue_is_bounded_below_the_pods_memory():
    config = producer_config(make_settings())
    assert config["queue.buffering.max.kbytes"] == 32 * 1024  # librdkafka's default is 1 GiB
    assert config["message.max.bytes"] == 1_000_000 + 4096


def test_readyz_asks_kafka_at_most_every_few_seconds(endpoint):
    before = endpoint.producer.metadata_requests
    assert [endpoint.client.get("/readyz").status_code for _ in range(20)] == [200] * 20
    assert endpoint.producer.metadata_requests - before <= 1


def test_no_repr_shows_a_secret():
    settings = Settings(ingest_secrets=f"{TENANT_A}:{A_SECRET},{SECRET}", ingest_ums_secrets=UMS_SECRET)
    shown = repr(endpoints(settings)) + repr([door.secrets.keyring for door in endpoints(settings) if door.secrets])
    assert A_SECRET not in shown and SECRET not in shown and UMS_SECRET not in shown
    assert "tenant-a" in shown


def test_unsigned_mode_warns_at_start(endpoint_factory):
    with structlog.testing.capture_logs() as logged:
        endpoint_factory(Settings(ingest_allow_unsigned=True, ingest_delivery_timeout_ms=300))
    warnings = [entry for entry in logged if entry["event"] == "ingest_unsigned"]
    assert [entry["path"] for entry in warnings] == [WEBHOOK_PATH, UMS_PATH]
    assert all(entry["log_level"] == "warning" for entry in warnings)


def test_refuses_to_start_without_a_secret_unless_unsigned_is_allowed():
    assert "WORKER_INGEST_SECRETS" in (refusal(Settings()) or "")
    assert refusal(Settings(ingest_allow_unsigned=True)) is None
    assert refusal(make_settings()) is None


def test_unsigned_mode_accepts_without_a_signature(endpoint_factory):
    endpoint = endpoint_factory(Settings(ingest_allow_unsigned=True, ingest_delivery_timeout_ms=300))
    assert endpoint.post(b'{"id": "x"}', secret=None).status_code == 202


def test_a_body_is_never_logged(endpoint):
    marker = "do-not-log-this-value"
    with structlog.testing.capture_logs() as logged:
        endpoint.post(orjson.dumps({"id": "e-1", "tenantid": "t", "data": {"id": "g", "name": marker}}))
        endpoint.post(orjson.dumps({"id": "e-2", "tenantid": "t", "name": marker}), secret=None)
        endpoint.post(orjson.dumps([marker]))
    lines = [entry for entry in logged if entry["event"] == "webhook"]
    assert [entry["status"] for entry in lines] == [202, 401, 400]
    assert lines[0]["tenant"] == "t" and lines[0]["event_id"] == "e-1" and lines[0]["offset"] == 0
    assert "tenant" not in lines[1], "an unsigned body is not trusted, not even for its tenant"
    assert marker not in repr(logged)


# ---- the OpenAPI document ----------------------------------------------------------------------------------


def _schema() -> schemathesis.BaseSchema:
    """The app's own /openapi.json, loaded through the app (schemathesis runs its lifespan), with a fake
    producer that acknowledges everything."""
    settings = make_settings()
    publisher = Publisher(producer_config(settings), TOPIC, 0.3, lambda config: FakeProducer(config))
    app = build_app(settings, publisher)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = _schema()


@schema.include(path=WEBHOOK_PATH).parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_webhook_conforms_to_its_openapi_document(case):
    """Every answer, to generated valid and invalid requests (and to other methods), is documented and matches
    its schema. Valid ones are signed as Qlik signs them, over the bytes that are sent, and are stored (202),
    unless they look like a UMS webhook (`application` without `specversion`: 403, that sender has its own
    endpoint); invalid ones (a bad signature, no body, a body that is not an object, another content type) are
    refused."""
    negative = case.meta is not None and case.meta.generation.mode.is_negative
    if not negative:
        sent = requests.Request("POST", "http://testserver", json=case.body).prepare().body
        assert isinstance(sent, bytes)
        case.headers = {**(case.headers or {}), "Qlik-Signature": sign(sent, SECRET)}
    response = case.call_and_validate()
    if not negative:
        assert response.status_code == (403 if looks_like_ums(case.body) else 202), response.text


def test_the_command_refuses_to_start_without_a_secret_and_says_why(capsys):
    from worker.cli import main

    assert main(["ingest"]) == 2
    err = capsys.readouterr().err
    assert "refusing to start" in err and "WORKER_INGEST_SECRETS" in err and "WORKER_INGEST_ALLOW_UNSIGNED" in err
