"""`python -m worker ingest` on a real broker: the status table over HTTP (what is stored, and that nothing
refused is), the broker paused with SIGSTOP (503, then 202 again, nothing accepted lost), and end to end:
the seed examples and the UMS example posted signed, the worker's records read back."""

from __future__ import annotations

import http.client
import shutil
import ssl
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.integration.helpers import Stack, wait_for
from worker.ingest.secrets import sign
from worker.local.ingest_client import IngestProcess, post
from worker.local.samples import SEED_EXAMPLES, UMS_EXAMPLE, Sample, expected_counts, seed_example
from worker.local.stack import free_port

pytestmark = pytest.mark.integration

SECRET = "integration-secret-integration-secret"
UMS_SECRET = "integration-ums-secret-integration-ums"
StartIngest = Callable[..., IngestProcess]


@pytest.fixture
def start_ingest(stack: Stack, tmp_path: Path) -> Iterator[StartIngest]:
    started: list[IngestProcess] = []

    def start(tls: bool = False, **extra: str) -> IngestProcess:
        env = stack.worker_env(
            WORKER_INGEST_SECRETS=f"old-secret-old-secret-old-secret,{SECRET}", WORKER_INGEST_UMS_SECRETS=UMS_SECRET
        )
        env.update(extra)
        ingest = IngestProcess(env, free_port(), tmp_path / f"ingest-{len(started)}.log", tls).start()
        started.append(ingest)
        return ingest

    yield start
    for ingest in started:
        ingest.stop()


def event(event_id: str, tenant: str = "tenant-1", group: str = "g-1") -> bytes:
    return orjson.dumps({"specversion": "1.0", "id": event_id, "tenantid": tenant, "data": {"id": group}})


def stored(stack: Stack, count: int, timeout: float = 30) -> list[tuple[bytes, bytes | None, dict[str, bytes]]]:
    messages = stack.read(stack.input_topic, lambda m: len(m) >= count, timeout)
    return [(m.value() or b"", m.key(), {k: v or b"" for k, v in m.headers() or []}) for m in messages]


def post_chunked(ingest: IngestProcess, chunks: list[bytes]) -> int:
    """A body sent with `Transfer-Encoding: chunked`: no Content-Length, the limit can only act while reading."""
    connection = http.client.HTTPConnection("127.0.0.1", ingest.port, timeout=30)
    body = b"".join(chunks)
    headers = {"Content-Type": "application/json", "Qlik-Signature": sign(body, SECRET)}
    connection.request("POST", "/webhooks/qlik", body=iter(chunks), headers=headers, encode_chunked=True)
    status = connection.getresponse().status
    connection.close()
    return status


def test_every_answer_of_the_table_and_only_accepted_bodies_reach_kafka(stack: Stack, start_ingest: StartIngest):
    stack.create_topics(2)
    ingest = start_ingest(WORKER_INGEST_MAX_BODY_BYTES="4096")
    url = ingest.webhook_url
    body = seed_example("group-created")

    answer = post(url, body, SECRET, "application/cloudevents+json")
    assert answer.status == 202
    assert answer.body["topic"] == stack.input_topic and answer.body["offset"] == 0
    assert post(url, event("ums-like"), SECRET, "application/json; charset=utf-8").status == 202

    tampered = body.replace(b"Development", b"Administrators")
    assert post(url, body, None).status == 401
    assert post(url, body, "wrong-secret-wrong-secret-wrong-secret").status == 401
    forged = {"Content-Type": "application/json", "Qlik-Signature": sign(body, SECRET)}
    connection = http.client.HTTPConnection("127.0.0.1", ingest.port, timeout=30)
    connection.request("POST", "/webhooks/qlik", body=tampered, headers=forged)
    assert connection.getresponse().status == 401
    connection.close()
    assert post(url, b"{not json", SECRET).status == 400
    assert post(url, b"[1, 2, 3]", SECRET).status == 400
    assert post(url, b'{"pad": "' + b"x" * 5000 + b'"}', SECRET).status == 413
    assert post_chunked(ingest, [b'{"pad": "', b"x" * 3000, b"x" * 3000, b'"}']) == 413
    assert post(url, body, SECRET, "text/plain").status == 415
    assert ingest.status("/webhooks/qlik") == 405
    answer = post(url, event("after-the-refusals"), SECRET)
    assert answer.status == 202

    messages = stored(stack, 3)
    assert [value for value, _key, _headers in messages].count(body) == 1
    assert len(messages) == 3, "a refused request reached Kafka"
    _value, key, headers = next(m for m in messages if m[0] == body)
    assert key == b"VZhiEfgW2bLd7HgR-jjzAh6VnicipweT:507f191e810c19729de860ea"
    assert headers["content-type"] == b"application/cloudevents+json"
    assert headers["ingest.received_at"].endswith(b"Z")
    assert {h["content-type"] for _v, _k, h in messages} == {b"application/cloudevents+json", b"application/json"}
    log = ingest.log_path.read_text()
    assert "Development" not in log and "Administrators" not in log, "a body was logged"


def test_paused_kafka_answers_503_then_202_again_and_loses_nothing_accepted(
    stack: Stack, start_ingest: StartIngest
) -> None:
    if stack.kafka_service is None:
        pytest.skip("the broker is external: the tests cannot pause it")
    stack.create_topics(2)
    ingest = start_ingest(WORKER_INGEST_DELIVERY_TIMEOUT_MS="2000")
    accepted: list[str] = []

    def attempt() -> int:
        event_id = f"e-{uuid.uuid4().hex[:8]}"
        answer = post(ingest.webhook_url, event(event_id, group=event_id), SECRET)
        if answer.status == 202:
            accepted.append(event_id)
        elif answer.status == 503:
            assert int(answer.headers["retry-after"]) > 0
        return answer.status

    assert [attempt() for _ in range(5)] == [202] * 5
    stack.kafka_service.pause()
    try:
        assert [attempt() for _ in range(3)] == [503] * 3
        assert ingest.status("/readyz") == 503
    finally:
        stack.kafka_service.resume()
    resumed = time.monotonic()
    wait_for(lambda: attempt() == 202, 30, "202 again after the broker resumed")
    back_after = time.monotonic() - resumed
    assert [attempt() for _ in range(5)] == [202] * 5
    wait_for(lambda: ingest.status("/readyz") == 200, 5, "ready again (a 'not ready' is cached for a second)")

    ids = Counter(orjson.loads(value)["id"] for value, _k, _h in stored(stack, len(accepted)))
    assert {i: ids[i] for i in accepted} == dict.fromkeys(accepted, 1), "an accepted event was lost or repeated"
    assert back_after < 30


def test_seed_examples_posted_signed_come_out_as_the_workers_records(stack: Stack, start_ingest: StartIngest):
    stack.create_topics(2)
    worker = stack.start_worker()
    ingest = start_ingest()
    worker.wait_ready()
    sent = [
        *(Sample(0, seed_example(n), [("content-type", b"application/cloudevents+json")], n) for n in SEED_EXAMPLES),
        Sample(0, seed_example(UMS_EXAMPLE), [("content-type", b"application/json")], UMS_EXAMPLE),
    ]
    for sample in sent[:-1]:
        content_type = dict(sample.headers)["content-type"]
        assert isinstance(content_type, bytes)
        assert post(ingest.webhook_url, sample.value, SECRET, content_type.decode()).status == 202
    ums = sent[-1].value
    assert post(ingest.webhook_url, ums, SECRET).status == 403, "a UMS webhook has its own endpoint"
    assert post(ingest.ums_url, ums, UMS_SECRET, header="ums-signature").status == 202

    want, want_dlq = expected_counts(sent)
    assert (want, want_dlq) == (3 + 1 + 1, 0)  # created, updated, deleted; one affected user; the UMS change
    records = stack.records(want)
    assert len(records) == want
    by_source = Counter((r["schema"], r.get("source_system")) for r in records)
    assert by_source == {
        ("group_change/v1", "qlik-cloud"): 3,
        ("membership_change/v1", None): 1,
        ("group_change/v1", "ums"): 1,
    }
    assert {r["group_id"] for r in records} == {"507f191e810c19729de860ea", "f68c05b7-b6a0-46bf-9b6d-d8fecd31db21"}
    assert stack.read(stack.dlq_topic, lambda m: False, 0) == []


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed (makes the test certificate)")
def test_serves_https_with_a_certificate_and_key(stack: Stack, start_ingest: StartIngest, tmp_path: Path):
    stack.create_topics(1)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    ingest = start_ingest(tls=True, WORKER_INGEST_TLS_CERTFILE=str(cert), WORKER_INGEST_TLS_KEYFILE=str(key))
    context = ssl.create_default_context(cafile=str(cert))
    connection = http.client.HTTPSConnection("127.0.0.1", ingest.port, timeout=30, context=context)
    body = event("over-tls")
    headers = {"Content-Type": "application/json", "Qlik-Signature": sign(body, SECRET)}
    connection.request("POST", "/webhooks/qlik", body, headers)
    assert connection.getresponse().status == 202  # the certificate verified against the one we gave it
    connection.close()
