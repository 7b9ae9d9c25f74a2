"""The contract suite of `tests/support/contract.py` on the embedded Apache Kafka, in both group protocols (the
same scenarios run on the fakes in `tests/unit/consumer/test_contract.py`)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.integration.helpers import Stack, read_topic
from tests.support.contract import SCENARIOS, Scenario, frozen, name
from worker.consumer.kafka import KafkaConsumer
from worker.consumer.loop import Loop
from worker.consumer.sinks import TransactionalId, TransactionalSink
from worker.local.stack import Service, create_topics

pytestmark = pytest.mark.integration

SINK_TIMEOUT_S = 1.0  # the sink's blocking calls
# librdkafka blocks a transactional call past its timeout while a request is in flight, until the request
# times out (socket.timeout.ms, 60 s by default): shorter here, so a paused broker times the call out at once.
SOCKET_TIMEOUT_MS = 2_000
UNREACHABLE_MAX_S = 20.0  # how long `unreachable` keeps the broker stopped at most
READ_S = 3.0  # how long a reader waits for more output


class KafkaBackend:
    def __init__(self, stack: Stack, protocol: str) -> None:
        self.stack, self.protocol = stack, protocol
        self.input_topic, self.output_topic, self.control_topic = (
            stack.input_topic,
            stack.output_topic,
            stack.control_topic,
        )
        topics = {self.input_topic: 2, self.output_topic: 1, stack.dlq_topic: 1, self.control_topic: 1}
        create_topics(stack.bootstrap, topics)
        self._closing: list[Any] = []  # clients to close at the end
        self.consumer = self._member()
        self._wait(lambda: len(self.consumer.assignment()) == 2, self.consumer)

    def _config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.stack.bootstrap,
            "group.id": self.stack.group_id,
            "group.protocol": self.protocol,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }

    def _member(self) -> Consumer:
        consumer = Consumer(self._config())
        consumer.subscribe([self.input_topic])
        self._closing.append(consumer)
        return consumer

    def _wait(self, done: Any, *polled: Consumer) -> None:
        deadline = time.monotonic() + 60
        while not done():
            assert time.monotonic() < deadline, "the group did not settle"
            for consumer in polled:
                consumer.poll(0.1)

    def sink(self, transactional_id: str, consumer: KafkaConsumer | None = None) -> TransactionalSink:
        config = {"bootstrap.servers": self.stack.bootstrap, "socket.timeout.ms": SOCKET_TIMEOUT_MS}
        ids = TransactionalId(transactional_id, configured=True)
        sink = TransactionalSink(config, consumer or self.consumer, SINK_TIMEOUT_S, self.stack.dlq_topic, Producer, ids)
        self._closing.append(sink)
        return sink

    @contextlib.contextmanager
    def unreachable(self, call: str) -> Iterator[None]:
        """The broker stopped (SIGSTOP) while `call` runs. librdkafka can block in `send_offsets_to_transaction`
        past its timeout while the coordinator does not answer (confluentinc/librdkafka#5456, open: the
        coordinator request's timeout is never checked): seen once in CI, blocked for 16 minutes. So the broker
        comes back after `UNREACHABLE_MAX_S` whatever happens; a call that returned only then did not time out,
        and the scenario is skipped, naming the bug, rather than hang or fail on it."""
        service = self.stack.kafka_service
        if service is None:
            pytest.skip("an external broker: not ours to stop")
        service.pause()
        back = threading.Timer(UNREACHABLE_MAX_S, service.resume)
        back.start()
        started = time.monotonic()
        try:
            yield
        finally:
            back.cancel()
            service.resume()
            if time.monotonic() - started >= UNREACHABLE_MAX_S:
                pytest.skip(f"librdkafka#5456: {call} ignored its {SINK_TIMEOUT_S:g} s timeout")

    def fence(self, transactional_id: str) -> None:
        twin = Producer({"bootstrap.servers": self.stack.bootstrap, "transactional.id": transactional_id})
        twin.init_transactions(30)
        self._closing.append(twin)

    def stale_member(self) -> contextlib.AbstractContextManager[KafkaConsumer]:
        return contextlib.contextmanager(frozen)(self.consumer, self._rebalance)

    def _rebalance(self) -> None:
        """A second member joins; the first takes part in the rebalance (a new generation or member epoch)."""
        other = self._member()
        self._wait(lambda: len(self.consumer.assignment()) == 1 == len(other.assignment()), self.consumer, other)

    def back_off(self) -> None:
        time.sleep(0.5)

    def loop_consumer(self, count: int) -> KafkaConsumer:
        self.stack.produce((0, None, f"m-{i}".encode(), []) for i in range(count))
        self.consumer.close()  # the backend's member leaves: the loop's takes its partitions
        self._closing.remove(self.consumer)
        return Consumer(self._config())

    def run(self, loop: Loop, done: Callable[[], bool]) -> None:
        def stop_when_done() -> None:
            deadline = time.monotonic() + 90
            while not done() and time.monotonic() < deadline:
                time.sleep(0.5)
            loop.stop()

        threading.Thread(target=stop_when_done, daemon=True).start()
        loop.run()  # closes its consumer

    def outputs(self) -> list[bytes]:
        return [m.value() or b"" for m in read_topic(self.stack.bootstrap, self.output_topic, lambda _: False, READ_S)]

    def group_offsets(self) -> dict[int, int]:
        reader = Consumer(
            {
                "bootstrap.servers": self.stack.bootstrap,
                "group.id": self.stack.group_id,
                "isolation.level": "read_committed",
            }
        )
        try:
            tps = [TopicPartition(self.input_topic, p) for p in range(2)]
            return {tp.partition: tp.offset for tp in reader.committed(tps, timeout=30) if tp.offset >= 0}
        finally:
            reader.close()

    def close(self) -> None:
        for client in self._closing:
            with contextlib.suppress(RuntimeError):  # closed already (a loop closes its sink and consumer)
                client.close(5) if isinstance(client, TransactionalSink) else client.close()


@pytest.fixture(params=["classic", "consumer"])
def backend(stack: Stack, kafka_service: Service | str, request: pytest.FixtureRequest) -> Iterator[KafkaBackend]:
    if request.param == "consumer" and isinstance(kafka_service, Service) and kafka_service.kind != "kafka":
        pytest.skip("the consumer group protocol (KIP-848) needs Apache Kafka 4")
    kafka = KafkaBackend(stack, request.param)
    yield kafka
    kafka.close()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=name)
def test_apache_kafka_keeps_the_contract(scenario: Scenario, backend: KafkaBackend) -> None:
    scenario(backend)
