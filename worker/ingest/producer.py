"""The ingest's side of Kafka: one idempotent producer (`acks=all`) whose delivery reports complete asyncio
futures, so a request is answered only after the broker acknowledged its record, and the event loop never
waits on librdkafka.

How a delivery report reaches a request:
1. `publish` (event loop) creates a future and calls `produce` with a callback that only appends
   (future, error, message) to a list.
2. The poll thread calls `producer.poll`, which runs those callbacks; after each poll it hands the collected
   reports to the loop in one `call_soon_threadsafe`.
3. On the loop, each future gets its `Delivered` or `Unavailable`; a timer set by `publish` fails it with
   `Unavailable` first when no report came within the delivery timeout (the record may still be stored later:
   see README "Receiving events from Qlik Cloud").

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
from typing import Any, Protocol, cast

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from worker.config import Settings
from worker.ingest import metrics as ingest_metrics

log = structlog.get_logger("worker.ingest.producer")

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
    }
    return {**defaults, **settings.kafka_overrides("producer"), "enable.idempotence": True, "acks": "all"}


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

    async def publish(self, value: bytes, key: bytes | None, headers: Headers) -> Delivered:
        """Produce `value` as it is; return where the broker stored it, or raise `Unavailable`."""
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
            if error.args[0].fatal():
                self._broken = error.args[0]
            raise Unavailable(error.args[0].str()) from None
        timer = self._loop.call_later(self.timeout_s, _expire, future, self.timeout_s)
        try:
            return await future
        finally:
            timer.cancel()

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
        if error is not None or message is None:
            future.set_exception(Unavailable(error.str() if error else "delivery report without a message"))
            continue
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:
            future.set_exception(Unavailable("delivery report without a position"))
        else:
            future.set_result(Delivered(topic, partition, offset))
