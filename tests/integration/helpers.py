"""What integration tests share: the per-test stack, worker processes, producing events and reading output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from worker.local.stack import Service, create_topics, free_port

TENANT = "tenant-1"
FAST_GROUP = {
    "WORKER_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "WORKER_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
    "WORKER_KAFKA_MAX_POLL_INTERVAL_MS": "10000",
    "WORKER_KAFKA_TRANSACTION_TIMEOUT_MS": "10000",
}


@dataclass
class WorkerProcess:
    """`python -m worker run` as a child process, with its own metrics port and log file."""

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.env, "WORKER_METRICS_PORT": str(self.port)}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=3) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError as error:
            return 0, str(error)

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(lambda: self.get("/readyz")[0] == 200, timeout, f"worker ready (log: {self.log_path})")

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        """Its exit code, once it has exited (a signal sent before: -N)."""
        assert self.process is not None
        return self.process.wait(timeout)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when absent)."""
        total = 0.0
        for line in self.get("/metrics")[1].splitlines():
            if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                metric = line.split("{", 1)[0].split(" ", 1)[0]
                if metric == name:
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Stack:
    bootstrap: str
    redis_url: str
    redis_service: Service | None
    kafka_service: Service | None
    input_topic: str
    output_topic: str
    dlq_topic: str
    group_id: str
    workdir: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    input_partitions: int = 0
    control_topic: str = ""  # the group's own commands; named after the input topic unless given

    def __post_init__(self) -> None:
        self.control_topic = self.control_topic or f"{self.input_topic}.control"

    def create_topics(self, input_partitions: int = 2, output_partitions: int = 2) -> None:
        """The worker's topics; the control topic (the group's own commands) like the input topic."""
        self.input_partitions = input_partitions
        create_topics(
            self.bootstrap,
            {
                self.input_topic: input_partitions,
                self.output_topic: output_partitions,
                self.dlq_topic: 1,
                self.control_topic: input_partitions,
            },
        )

    def worker_env(self, **extra: str) -> dict[str, str]:
        return {
            "WORKER_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "WORKER_REDIS_URL": self.redis_url,
            "WORKER_INPUT_TOPICS": self.input_topic,
            "WORKER_OUTPUT_TOPIC": self.output_topic,
            "WORKER_DLQ_TOPIC": self.dlq_topic,
            "WORKER_CONTROL_TOPIC": self.control_topic,
            "WORKER_GROUP_ID": self.group_id,
            "WORKER_LOG_LEVEL": "INFO",
            **FAST_GROUP,
            **extra,
        }

    def start_worker(self, slot: int = 0, **extra: str) -> WorkerProcess:
        """Start a worker; one slot keeps one transactional.id across restarts, as one pod would."""
        env = self.worker_env(WORKER_TRANSACTIONAL_ID=f"{self.group_id}-{slot}", **extra)
        worker = WorkerProcess(env, self.workdir / f"worker-{slot}.log").start()
        self.workers.append(worker)
        return worker

    def produce(self, messages: Iterable[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]]) -> int:
        """(partition, key, value, headers) -> count sent; raises unless every one was acknowledged."""
        producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "linger.ms": 20})
        errors: list[str] = []
        count = 0
        for partition, key, value, headers in messages:
            while True:
                try:
                    producer.produce(
                        self.input_topic,
                        value,
                        key,
                        partition=partition,
                        headers=headers,
                        on_delivery=lambda err, _m: errors.append(str(err)) if err else None,
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
            count += 1
        assert producer.flush(60) == 0 and not errors, errors[:3]
        return count

    def read(self, topic: str, until: Callable[[list[Message]], bool], timeout: float = 60) -> list[Message]:
        """Committed messages of `topic` from the start, until `until(messages)` holds or the timeout."""
        return read_topic(self.bootstrap, topic, until, timeout)

    def records(self, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        messages = self.read(self.output_topic, lambda m: len(m) >= count, timeout)
        return [orjson.loads(m.value() or b"") for m in messages]

    def committed(self, partitions: int) -> list[int]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group_id})
        try:
            tps = [TopicPartition(self.input_topic, p) for p in range(partitions)]
            return [tp.offset for tp in consumer.committed(tps, timeout=10)]
        finally:
            consumer.close()


def read_topic(bootstrap: str, topic: str, until: Callable[[list[Message]], bool], timeout: float) -> list[Message]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "test-reader",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while not until(out) and time.monotonic() < deadline:
            out += [m for m in consumer.consume(500, 0.2) if not m.error()]
        # Whatever else is already there: a test that expects N must also see an (N+1)th.
        while more := consumer.consume(500, 1.0):
            out += [m for m in more if not m.error()]
        return out
    finally:
        consumer.close()


def aborted_records_hidden(bootstrap: str) -> bool:
    topic = f"probe-aborts-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, {topic: 1})
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": topic})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"aborted")
    producer.flush(30)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, b"committed")
    producer.commit_transaction(30)
    values = [m.value() for m in read_topic(bootstrap, topic, lambda m: any(x.value() == b"committed" for x in m), 30)]
    return values == [b"committed"]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# ---- events ------------------------------------------------------------------------------------------------


def group_data(group_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": group_id,
        "name": f"Group {group_id}",
        "status": "active",
        "tenantId": TENANT,
        "createdAt": "2024-01-01T00:00:00Z",
        "lastUpdatedAt": "2024-01-02T00:00:00Z",
        "providerType": "custom",
        **extra,
    }


def structured(event_id: str, event_type: str, data: dict[str, Any]) -> tuple[bytes, list[tuple[str, bytes]]]:
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": "com.qlik/identities",
        "type": event_type,
        "tenantid": TENANT,
        "time": "2024-01-02T00:00:01Z",
        "data": data,
    }
    return orjson.dumps(event), [("content-type", b"application/cloudevents+json")]


def binary(event_id: str, event_type: str, data: dict[str, Any]) -> tuple[bytes, list[tuple[str, bytes]]]:
    attributes = {"specversion": "1.0", "id": event_id, "source": "com.qlik/identities", "type": event_type}
    headers = [(f"ce_{k}", v.encode()) for k, v in {**attributes, "tenantid": TENANT}.items()]
    return orjson.dumps(data), [*headers, ("content-type", b"application/json")]


def users_modified_part(
    event_id: str, group_id: str, users: Sequence[str], *, final: bool, mode: str = "binary"
) -> tuple[bytes, list[tuple[str, bytes]]]:
    data = group_data(group_id, deleted=False, affectedUsers=list(users), fullyProcessed=final)
    build = binary if mode == "binary" else structured
    return build(event_id, "com.qlik.v1.group.users.modified", data)
