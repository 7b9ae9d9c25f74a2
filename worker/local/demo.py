"""The embedded stack of `make run` and `make demo`, and what runs beside the worker there: the stack's settings
and topics, the ingest with a generated demo secret, the ready `curl` line that posts a signed seed example,
the local Qlik tenant and the webhook watch when no real tenant is configured (worker/local/outage.py), the
records printed as they come out, and the demo itself (sample events sent as Qlik would send them: signed
webhooks; then an outage of the ingest that the watch repairs; the records and DLQ messages read back and
printed, and checked: every change once)."""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import as_file, files
from typing import Protocol

import orjson
import structlog
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from worker import logs
from worker.config import Settings, load_settings, secret_entry
from worker.ingest.rules import UMS_SIGNATURE_HEADER
from worker.local import outage
from worker.local.ingest_client import Answer, IngestProcess, curl_command, post, webhook_form
from worker.local.samples import Sample, expected_counts, samples
from worker.local.stack import create_topics, embedded, free_port
from worker.processing.deadletter import PREFIX, dead_letter_fields
from worker.processing.ums import looks_like_ums

# The embedded brokers' groups settle in a few seconds with these (Tansu takes ~23 s with librdkafka's defaults).
FAST_GROUP_TIMEOUTS = {
    "WORKER_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "WORKER_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
    "WORKER_KAFKA_MAX_POLL_INTERVAL_MS": "10000",
}
EMBEDDED_PARTITIONS = 4
QUIET_SECONDS = 3.0


@contextmanager
def stack(embed: bool) -> Iterator[Settings]:
    """Settings for the configured services, or for an embedded stack where they are not configured."""
    if not embed:
        yield load_settings()
        return
    started_kafka = not os.environ.get("WORKER_KAFKA_BOOTSTRAP_SERVERS")
    with embedded(os.environ) as services:
        if started_kafka:
            for key, value in FAST_GROUP_TIMEOUTS.items():
                os.environ.setdefault(key, value)
        settings = load_settings()
        topics = dict.fromkeys(settings.subscribed_topics, EMBEDDED_PARTITIONS)
        create_topics(
            settings.kafka_bootstrap_servers,
            {
                **topics,
                settings.output_topic: EMBEDDED_PARTITIONS,
                settings.control_topic: EMBEDDED_PARTITIONS,
                settings.dlq_topic: 1,
            },
        )
        log = structlog.get_logger("worker.local.demo")
        log.info(
            "embedded_stack",
            kafka=settings.kafka_bootstrap_servers,
            redis=settings.redis_url,
            dir=str(services.workdir),
        )
        yield settings


@contextmanager
def ingest_for_run(embed: bool, settings: Settings) -> Iterator[None]:
    """With --embedded: the webhook ingest too, its curl line, and the records printed as they come out."""
    if not embed:
        yield
        return
    stop = threading.Event()
    with ingest_beside() as beside, contextlib.ExitStack() as upstream:
        print(curl_hint(beside), flush=True)
        if not (settings.qlik_url or settings.qlik_tenants_file):  # no real tenant: the local one
            upstream.enter_context(outage.beside_run(settings, beside.ingest, beside.secret, print))
        follower = threading.Thread(target=follow_records, args=(settings, stop), name="records", daemon=True)
        follower.start()
        try:
            yield
        finally:
            stop.set()
            follower.join(5)


def send_samples(settings: Settings) -> None:
    producer = Producer({**settings.kafka_overrides("producer"), "enable.idempotence": True})
    partitions = len(
        producer.list_topics(settings.input_topics[0], timeout=10).topics[settings.input_topics[0]].partitions
    )
    for sample in samples():
        producer.produce(
            settings.input_topics[0], sample.value, partition=sample.partition % partitions, headers=sample.headers
        )
    if producer.flush(30):
        raise RuntimeError("sample events were not acknowledged within 30 s")


class Worker(Protocol):
    """The worker's loop as the demo runs it (`worker.consumer.loop.Loop`)."""

    def run(self) -> None: ...
    def stop(self) -> None: ...


def run(build: Callable[[Settings], Worker]) -> int:
    """Embedded stack + the worker `build` makes + ingest; the sample events posted as signed webhooks; print
    what comes out."""
    logs.configure("WARNING")
    with stack(embed=True) as settings, ingest_beside("WARNING") as beside:
        worker = build(settings)
        runner = threading.Thread(target=worker.run, name="worker")
        runner.start()
        try:
            sent = post_samples(beside)
            print(f"posted {len(sent)} signed webhooks to the ingest at {beside.ingest.url}:")
            for sample, answer in sent:
                print(f"  - {sample.note}: {answer.status} {orjson.dumps(answer.body).decode()}")
            want_records, want_dlq = expected_counts([sample for sample, answer in sent if answer.status == 202])
            print("\nan outage of the ingest, and the webhook watch:")
            tenant = outage.tell(settings, beside.ingest, beside.secret, print)
            from_tenant = outage.expected(tenant)
            want_records += from_tenant
            records, dead = read_outputs(settings, expected_records=want_records, expected_dlq=want_dlq, timeout=90)
        finally:
            worker.stop()
            runner.join()
    print(f"\n{len(records)} records on {settings.output_topic}:")
    for record in records:
        print("  " + orjson.dumps(record).decode())
    print(f"\n{len(dead)} messages on {settings.dlq_topic}:")
    for headers in dead:
        print("  " + orjson.dumps(headers).decode())
    once = len({_identity(r) for r in records if r.get("tenant_id") == tenant.tenant_id})
    print(f"\nthe local tenant's {from_tenant} changes came out as {once} distinct records")
    return 0 if (len(records), len(dead), once) == (want_records, want_dlq, from_tenant) else 1


def _identity(record: dict[str, object]) -> tuple[object, ...]:
    """What makes a record the same change whatever event carried it."""
    return (record["group_id"], record["change"], record.get("user_id"), record["occurred_at"])


def read_outputs(
    settings: Settings, *, expected_records: int, expected_dlq: int, timeout: float
) -> tuple[list[dict[str, object]], list[dict[str, str]]]:
    """Committed output records and DLQ headers, read from the start until the expected counts or timeout."""
    consumer = Consumer(
        {
            **settings.kafka_overrides("consumer"),
            "group.id": "demo-reader",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    topics = consumer.list_topics(timeout=10).topics
    consumer.assign(
        [TopicPartition(t, p, 0) for t in (settings.output_topic, settings.dlq_topic) for p in topics[t].partitions]
    )
    records: list[dict[str, object]] = []
    dead: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    quiet_until = None  # after the expected counts, a few more seconds: one record too many must show
    while time.monotonic() < deadline and (quiet_until is None or time.monotonic() < quiet_until):
        for message in consumer.consume(100, 0.5):
            if message.error():
                continue
            if message.topic() == settings.output_topic:
                records.append(orjson.loads(message.value() or b"null"))
            else:
                dead.append({PREFIX + k: v for k, v in dead_letter_fields(message.headers()).items()})
        if quiet_until is None and len(records) >= expected_records and len(dead) >= expected_dlq:
            quiet_until = time.monotonic() + QUIET_SECONDS
    consumer.close()
    return records, dead


@dataclass
class Beside:
    ingest: IngestProcess
    secret: str
    ums_secret: str
    generated: bool  # the demo's own secret, not one from WORKER_INGEST_SECRETS


def _first_secret(variable: str) -> str | None:
    """The secret of the first entry of a secrets variable (`<tenant id>:<secret>` or bare), if it is set."""
    first = os.environ.get(variable, "").split(",")[0].strip()
    return secret_entry(first, variable)[1] if first else None


@contextmanager
def ingest_beside(log_level: str | None = None) -> Iterator[Beside]:
    """The ingest for the current (embedded) settings: WORKER_INGEST_SECRETS, WORKER_INGEST_UMS_SECRETS and
    WORKER_INGEST_PORT when set, else generated secrets (48 hex characters: within Qlik's 32 to 64, for any
    tenant) and a free port. The secrets files of the environment are not used: the demo signs its posts."""
    configured = _first_secret("WORKER_INGEST_SECRETS")
    secret = configured or secrets.token_hex(24)
    ums_secret = _first_secret("WORKER_INGEST_UMS_SECRETS") or secrets.token_hex(24)
    port = int(os.environ.get("WORKER_INGEST_PORT") or free_port())
    env = {
        "WORKER_INGEST_SECRETS": os.environ.get("WORKER_INGEST_SECRETS") or secret,
        "WORKER_INGEST_UMS_SECRETS": os.environ.get("WORKER_INGEST_UMS_SECRETS") or ums_secret,
        "WORKER_INGEST_SECRETS_FILE": "",
        "WORKER_INGEST_UMS_SECRETS_FILE": "",
    }
    if log_level:
        env["WORKER_LOG_LEVEL"] = log_level
    ingest = IngestProcess(env, port, None).start()
    try:
        yield Beside(ingest, secret, ums_secret, generated=not configured)
    finally:
        ingest.stop()


def curl_hint(beside: Beside) -> str:
    """What `make run` prints once the ingest is ready."""
    with as_file(files("worker.local") / "examples" / "group-created.json") as example:
        command = curl_command(beside.ingest.webhook_url, example, beside.secret, "application/cloudevents+json")
    secret = f" (demo secret {beside.secret})" if beside.generated else " (first of WORKER_INGEST_SECRETS)"
    return (
        f"\ningest ready: {beside.ingest.webhook_url}{secret}\n"
        "post the signed seed example 'group created'; its record is printed below within seconds:\n\n"
        f"  {command}\n"
    )


def follow_records(settings: Settings, stop: threading.Event) -> None:
    """Print every record committed to the output topic from now on, until `stop` is set."""
    consumer = Consumer(
        {
            **settings.kafka_overrides("consumer"),
            "group.id": "run-follower",  # assigned, never joined: librdkafka wants a group id all the same
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    partitions = consumer.list_topics(settings.output_topic, timeout=10).topics[settings.output_topic].partitions
    consumer.assign([TopicPartition(settings.output_topic, p, OFFSET_END) for p in partitions])
    try:
        while not stop.is_set():
            for message in consumer.consume(100, 0.5):
                if not message.error():
                    print(f"record on {settings.output_topic}: {(message.value() or b'').decode()}", flush=True)
    finally:
        consumer.close()


def post_samples(beside: Beside) -> list[tuple[Sample, Answer]]:
    """The demo's samples as signed webhooks (binary-mode parts folded into structured events; UMS webhooks to
    their own endpoint), in order."""
    sent = []
    for sample in samples():
        body, content_type = webhook_form(sample)
        if _ums(body):
            answer = post(beside.ingest.ums_url, body, beside.ums_secret, content_type, header=UMS_SIGNATURE_HEADER)
        else:
            answer = post(beside.ingest.webhook_url, body, beside.secret, content_type)
        note = sample.note if body == sample.value else f"{sample.note}, posted as one structured event"
        sent.append((Sample(sample.partition, body, [("content-type", content_type)], note), answer))
    return sent


def _ums(body: bytes) -> bool:
    try:
        return looks_like_ums(orjson.loads(body))
    except orjson.JSONDecodeError:
        return False
