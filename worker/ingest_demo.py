"""The ingest in `make run` and `make demo`: started beside the worker on the embedded stack with a generated
demo secret, the ready `curl` line that posts a signed seed example, the records printed as they come out,
and the demo's sample events sent as Qlik would send them (signed webhooks)."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import as_file, files

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from worker.config import Settings
from worker.ingest_client import Answer, IngestProcess, curl_command, post, webhook_form
from worker.localstack import free_port
from worker.samples import Sample, samples


@dataclass
class Beside:
    ingest: IngestProcess
    secret: str
    generated: bool  # the demo's own secret, not one from WORKER_INGEST_SECRETS


@contextmanager
def ingest_beside(log_level: str | None = None) -> Iterator[Beside]:
    """The ingest for the current (embedded) settings: WORKER_INGEST_SECRETS and WORKER_INGEST_PORT when set,
    else a generated secret (48 hex characters: within Qlik's 32 to 64) and a free port."""
    configured = os.environ.get("WORKER_INGEST_SECRETS", "").split(",")[0].strip()
    secret = configured or secrets.token_hex(24)
    port = int(os.environ.get("WORKER_INGEST_PORT") or free_port())
    env = {"WORKER_INGEST_SECRETS": os.environ.get("WORKER_INGEST_SECRETS") or secret}
    if log_level:
        env["WORKER_LOG_LEVEL"] = log_level
    ingest = IngestProcess(env, port, None).start()
    try:
        yield Beside(ingest, secret, generated=not configured)
    finally:
        ingest.stop()


def curl_hint(beside: Beside) -> str:
    """What `make run` prints once the ingest is ready."""
    with as_file(files("worker") / "examples" / "group-created.json") as example:
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
    """The demo's samples as signed webhooks (binary-mode parts folded into structured events), in order."""
    sent = []
    for sample in samples():
        body, content_type = webhook_form(sample)
        answer = post(beside.ingest.webhook_url, body, beside.secret, content_type)
        note = sample.note if body == sample.value else f"{sample.note}, posted as one structured event"
        sent.append((Sample(sample.partition, body, [("content-type", content_type)], note), answer))
    return sent
