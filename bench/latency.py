"""End-to-end latency at a fixed offered load: paced production with a send timestamp, a read_committed
reader on the output, records matched to their input by event id (flat events: at most one record each)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
from confluent_kafka import KafkaError, Message, Producer

from bench.kafka_io import CorpusMessage, assign_all, reader

SENT_HEADER = "bench.sent_ns"
WARM_UP_TOPIC = "bench-warm-up"


def event_id(value: bytes, headers: Sequence[tuple[str, str | bytes | None]]) -> str | None:
    """The CloudEvents id of a corpus message, either binding mode; None for poison."""
    for name, header in headers:
        if name == "ce_id":
            return header.decode() if isinstance(header, bytes) else header
    try:
        decoded = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return str(decoded["id"]) if isinstance(decoded, dict) and "id" in decoded else None


class OutputReader(threading.Thread):
    """Polls the output topic from the start, stamping each record with its receive time."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="latency-reader", daemon=True)
        self._consumer = reader(bootstrap, **{"fetch.wait.max.ms": 5, "fetch.error.backoff.ms": 5})
        assign_all(self._consumer, [topic])
        self.received: list[tuple[bytes, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                message = self._consumer.poll(0.05)
                if message is None or message.error() is not None:
                    continue
                self.received.append((message.value() or b"", time.time_ns()))
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def warm_up(producer: Producer, topic: str) -> None:
    """Get the idempotent producer's id and the topic's metadata before the clock starts: otherwise the first
    messages wait for them (about half a second on the embedded broker) and make the p99."""
    producer.produce(WARM_UP_TOPIC, b"warm-up")
    if producer.flush(30):
        raise RuntimeError("warm-up message not acknowledged")
    producer.list_topics(topic, timeout=10)


@dataclass
class Latency:
    offered_per_s: float  # achieved send rate
    sent: int
    expected: int  # records the sent messages should produce
    matched: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    delivery_p99_ms: float  # producer send -> broker acknowledgement, for reference
    batches: float | None = None  # the worker's batches during the run (worker_batch_seconds_count)
    batch_mean_ms: float | None = None  # their mean duration, processing to commit
    redis_round_trips: float | None = None  # the worker's, during the whole run (bench_redis_round_trips_total)

    @property
    def round_trips_per_event(self) -> float | None:
        return self.redis_round_trips / self.sent if self.redis_round_trips is not None and self.sent else None


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def measure(
    bootstrap: str,
    input_topic: str,
    output_topic: str,
    messages: Sequence[CorpusMessage],
    *,
    rate: float,
    seconds: float,
    keys: Keys,
) -> Latency:
    """Send `rate * seconds` messages at `rate`/s and match the output records to them (see `Keys`); a
    record's latency is its receive time minus the send time of the message it came from. The wait ends when
    every expected record arrived, or 15 s after the last send."""
    count = min(len(messages), int(rate * seconds))
    keyed = [(m, keys.send(m)) for m in messages[:count]]
    output = OutputReader(bootstrap, output_topic)
    output.start()
    sent_at: dict[str, list[int]] = {}
    delivery_ms: list[float] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        latency = message.latency()
        if error is None and latency is not None:
            delivery_ms.append(latency * 1000)

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 1})
    warm_up(producer, input_topic)
    elapsed = 0.0
    try:
        started = time.perf_counter()
        sent = 0
        while sent < count:
            due = min(count, int((time.perf_counter() - started) * rate) + 1)
            while sent < due:
                (partition, key, value, headers), ident = keyed[sent]
                now = time.time_ns()
                producer.produce(
                    input_topic,
                    value,
                    key,
                    partition=partition,
                    headers=[*headers, (SENT_HEADER, str(now).encode())],
                    on_delivery=delivered,
                )
                if ident is not None:
                    sent_at.setdefault(ident, []).append(now)
                sent += 1
            producer.poll(0)
            time.sleep(0.0005)
        elapsed = time.perf_counter() - started
        producer.flush(30)
        expected = sum(len(v) for v in sent_at.values()) if keys.copies else len(sent_at)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(_match(output.received, sent_at, keys)) < expected:
            time.sleep(0.1)
    finally:
        output.stop()
    latencies = sorted(_match(output.received, sent_at, keys))
    delivery_ms.sort()
    return Latency(
        offered_per_s=count / elapsed if elapsed else 0.0,
        sent=count,
        expected=expected,
        matched=len(latencies),
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        max_ms=latencies[-1] if latencies else float("nan"),
        delivery_p99_ms=percentile(delivery_ms, 0.99),
    )


def _match(received: list[tuple[bytes, int]], sent_at: dict[str, list[int]], keys: Keys) -> list[float]:
    """Latencies (ms) of the received records that match a sent message; the n-th copy of a key matches its
    n-th send when `keys.copies`, else only the first record of a key counts, against the first send."""
    seen: dict[str, int] = {}
    out: list[float] = []
    for value, received_ns in list(received):
        ident = keys.record(value)
        sends = sent_at.get(ident) if ident is not None else None
        if ident is None or sends is None:
            continue
        n = seen.get(ident, 0)
        seen[ident] = n + 1
        if n < (len(sends) if keys.copies else 1):
            out.append((received_ns - sends[n]) / 1e6)
    return out


@dataclass(frozen=True)
class Keys:
    """How records are matched to input messages: `send(message)` names what a message should produce (None:
    nothing, e.g. poison), `record(value)` the message an output record came from; `copies`: every copy of a
    message makes its own record (passthrough) rather than only the first (the worker drops duplicates)."""

    send: Callable[[CorpusMessage], str | None]
    record: Callable[[bytes], str | None]
    copies: bool


def worker_keys() -> Keys:
    """Worker output: a flat event makes at most one record, whose `event_id` is the input event's id."""

    def record(value: bytes) -> str | None:
        decoded = orjson.loads(value)
        return str(decoded["event_id"]) if isinstance(decoded, dict) and "event_id" in decoded else None

    return Keys(lambda m: event_id(m[2], m[3]), record, copies=False)


def passthrough_keys() -> Keys:
    """Passthrough output: the input value itself (unique per event; poison, not a JSON object, is left out)."""

    def send(message: CorpusMessage) -> str | None:
        return message[2].decode() if event_id(message[2], message[3]) is not None else None

    return Keys(send, bytes.decode, copies=True)
