"""The ingest's side of Kafka: one idempotent producer (`acks=all`) whose delivery reports complete asyncio
futures, so a request is answered only after the broker acknowledged its record, and the event loop never
waits on librdkafka.

How a delivery report reaches a request:
1. `send` (event loop) creates a future and calls `produce` with a callback that only appends
   (future, error, message) to a list; librdkafka copies the value, so the request need not hold its body
   while it waits.
2. The poll thread calls `producer.poll`, which runs those callbacks; after each poll it hands the collected
   reports to the loop in one `call_soon_threadsafe`.
3. On the loop, each future gets its `Delivered`, `TooLarge` or `Unavailable`; a timer set by `send` fails it
   with `Unavailable` first when no report came within the delivery timeout (the record may still be stored
   later: see README "Receiving events from Qlik Cloud").

What the producer may hold is bounded: its queue (`queue.buffering.max.kbytes`, `QUEUE_KBYTES` by default
instead of librdkafka's 1 GiB) is part of the ingest's memory budget. A record the producer or the broker
finds too large (`message.max.bytes`, the topic's `max.message.bytes`) is `TooLarge` (413: sending it again
cannot help), not `Unavailable` (503: retry); and the ingest refuses to start when its body limit does not
fit those limits (`limits_problem`).

A producer that stays broken never delivers again: a fatal error (librdkafka: the idempotence state cannot be
recovered), or a delivery report saying its producer id or epoch is no longer valid (seen on Tansu after a
pause: records timed out in flight, the producer bumped its epoch, and the broker fenced it for good). The poll
thread replaces it with a new one and purges the old one, whose pending requests get 503.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource

from worker.config import Settings
from worker.ingest import metrics as ingest_metrics
from worker.logs import KAFKA_LOGGER

log = structlog.get_logger("worker.ingest.producer")

QUEUE_KBYTES: Final = 32 * 1024  # the producer's queue: 32 MiB, within the ingest's memory budget
# What a record takes beyond its body, at most, for the limits: key (tenant and group ids), the two headers and
# the record and batch framing (about 100 bytes). A longer key still gets 413 from the producer, never a 503.
RECORD_ALLOWANCE: Final = 4096
LIBRDKAFKA_MESSAGE_MAX_BYTES: Final = 1_000_000  # librdkafka's default message.max.bytes

Headers = Sequence[tuple[str, bytes]]
# Delivery errors after which this producer's id/epoch is unusable: every later record would fail the same way.
BROKEN_PRODUCER = frozenset(
    {
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError._FENCED,
        KafkaError._FATAL,
    }
)
Report = tuple["asyncio.Future[Delivered]", KafkaError | None, Message | None]


@dataclass(frozen=True, slots=True)
class Delivered:
    topic: str
    partition: int
    offset: int


class Unavailable(Exception):
    """Kafka did not take the record (down, queue full, no acknowledgement in time, fatal error): a 503."""


class TooLarge(Exception):
    """The producer or the broker refuses the record for its size (MSG_SIZE_TOO_LARGE): a 413."""


class KafkaProducer(Protocol):
    """The part of confluent_kafka.Producer the publisher uses (a fake in the unit tests)."""

    def produce(self, topic: str, value: bytes, key: bytes | None, **kwargs: Any) -> None: ...
    def poll(self, timeout: float) -> int: ...
    def flush(self, timeout: float) -> int: ...
    def purge(self) -> None: ...
    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any: ...


ProducerFactory = Callable[[dict[str, Any]], KafkaProducer]


def confluent_producer(config: dict[str, Any]) -> KafkaProducer:
    return cast(KafkaProducer, Producer(config))


def producer_config(settings: Settings) -> dict[str, Any]:
    """`WORKER_KAFKA_*` for a producer, between our defaults and the settings the endpoint's promise rests on."""
    defaults = {
        # librdkafka stops retrying when we stop waiting: a record is not stored minutes after its 503.
        "message.timeout.ms": settings.ingest_delivery_timeout_ms,
        # The Java clients' partitioner: keyed records land where a Java producer would put them.
        "partitioner": "murmur2_random",
        "queue.buffering.max.kbytes": QUEUE_KBYTES,
        # Every body the ingest accepts fits (librdkafka's default, 1,000,000, is below a body of 1 MiB).
        "message.max.bytes": settings.ingest_max_body_bytes + RECORD_ALLOWANCE,
    }
    return {**defaults, **settings.kafka_overrides("producer"), "enable.idempotence": True, "acks": "all"}


def limits_problem(max_body: int, config: dict[str, Any], topic_max: int | None = None) -> str | None:
    """Why a body of `max_body` bytes (plus `RECORD_ALLOWANCE`) may not fit the producer's `message.max.bytes`
    or the topic's `max.message.bytes` (None: unknown), or None when it fits both."""
    needed = max_body + RECORD_ALLOWANCE
    producer_max = int(config.get("message.max.bytes", LIBRDKAFKA_MESSAGE_MAX_BYTES))
    if producer_max < needed:
        return (
            f"WORKER_INGEST_MAX_BODY_BYTES={max_body} does not fit the producer's message.max.bytes={producer_max} "
            f"(needs {needed}: the body, key and headers): lower the body limit or raise WORKER_KAFKA_MESSAGE_MAX_BYTES"
        )
    if topic_max is not None and topic_max < needed:
        return (
            f"WORKER_INGEST_MAX_BODY_BYTES={max_body} does not fit the ingest topic's max.message.bytes={topic_max} "
            f"(needs {needed}): lower the body limit or raise the topic's max.message.bytes"
        )
    return None


def topic_limit(config: dict[str, Any], topic: str, timeout: float) -> int | None:
    """The topic's `max.message.bytes`, or None when the broker does not tell within `timeout` (down, or
    DescribeConfigs denied): then a record over it is a 413 from its delivery report."""
    settings: dict[str, Any] = {name: value for name, value in config.items() if not callable(value)}
    settings["logger"] = KAFKA_LOGGER
    admin = AdminClient(settings)
    try:
        (future,) = admin.describe_configs(
            [ConfigResource(ConfigResource.Type.TOPIC, topic)], request_timeout=timeout
        ).values()
        entries = future.result(timeout=timeout)
        return int(entries["max.message.bytes"].value)
    except Exception as error:  # any failure means "unknown": the broker decides per record
        log.warning("topic_limit_unknown", topic=topic, error=str(error))
        return None


class Publisher:
    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        timeout_s: float,
        factory: ProducerFactory = confluent_producer,
    ) -> None:
        self.topic, self.timeout_s = topic, timeout_s
        self._config = {**config, "error_cb": self._on_error}
        self._factory = factory
        self._producer = factory(self._config)
        self._broken: KafkaError | None = None
        self._reports: list[Report] = []  # filled by callbacks, which run in the poll thread only
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the poll thread, handing reports to `loop` (again after `close`, for an app started twice)."""
        self._loop = loop
        self._stopping.clear()
        self._thread = threading.Thread(target=self._poll_loop, name="ingest-poll", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def send(self, value: bytes, key: bytes | None, headers: Headers) -> asyncio.Future[Delivered]:
        """Produce `value` as it is; the future gives where the broker stored it, or raises `TooLarge` or
        `Unavailable` (so do the call itself, when the producer refuses at once)."""
        assert self._loop is not None, "start() first"
        future: asyncio.Future[Delivered] = self._loop.create_future()

        def report(error: KafkaError | None, message: Message | None) -> None:
            if error is not None and (error.fatal() or error.code() in BROKEN_PRODUCER):
                self._broken = error
            self._reports.append((future, error, message))

        try:
            self._producer.produce(self.topic, value, key, headers=list(headers), on_delivery=report)
        except BufferError:
            raise Unavailable("the producer's queue is full") from None
        except KafkaException as error:
            kafka_error: KafkaError = error.args[0]
            if kafka_error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                raise TooLarge(kafka_error.str()) from None
            if kafka_error.fatal():
                self._broken = kafka_error
            raise Unavailable(kafka_error.str()) from None
        timer = self._loop.call_later(self.timeout_s, _expire, future, self.timeout_s)
        future.add_done_callback(lambda _future: timer.cancel())
        return future

    def reachable(self, timeout: float) -> str | None:
        """None when the broker answers metadata for the topic, else why not (blocking: run in a thread)."""
        if self._broken is not None:
            return f"producer broken: {self._broken.str()}"
        try:
            topic = self._producer.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
        except KafkaException as error:
            return f"kafka: {error.args[0].str()}"
        if topic is None or topic.error is not None or not topic.partitions:
            return f"topic {self.topic}: {topic.error.str() if topic is not None and topic.error else 'unknown'}"
        return None

    def close(self, timeout: float) -> None:
        """Stop polling, give queued records `timeout` to be acknowledged, answer what is left (blocking)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        self._producer.flush(timeout)
        self._producer.purge()
        self._producer.poll(0)
        self._hand_over()

    # ---- poll thread -------------------------------------------------------------------------------------

    def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.05)
            if self._broken is not None:
                self._replace()
            self._hand_over()

    def _hand_over(self) -> None:
        if self._reports and self._loop is not None and not self._loop.is_closed():
            reports, self._reports = self._reports, []
            self._loop.call_soon_threadsafe(_resolve, reports)

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._broken = error
        log.warning("kafka_error", error=error.str(), fatal=error.fatal())

    def _replace(self) -> None:
        old, reason = self._producer, self._broken
        self._producer = self._factory(self._config)
        old.purge()  # its records fail with a purge error: their requests get 503
        old.poll(0)
        self._broken = None  # after the old producer's last callbacks, which may repeat its error
        ingest_metrics.PRODUCERS_REPLACED.inc()
        log.error("ingest_producer_replaced", reason=reason.str() if reason else None)


def _expire(future: asyncio.Future[Delivered], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(Unavailable(f"no acknowledgement within {timeout_s * 1000:.0f} ms"))


def _resolve(reports: list[Report]) -> None:
    for future, error, message in reports:
        if future.done():  # timed out (or the request went away) before the report came
            continue
        if error is not None and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            future.set_exception(TooLarge(error.str()))
            continue
        if error is not None or message is None:
            future.set_exception(Unavailable(error.str() if error else "delivery report without a message"))
            continue
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:
            future.set_exception(Unavailable("delivery report without a position"))
        else:
            future.set_result(Delivered(topic, partition, offset))
