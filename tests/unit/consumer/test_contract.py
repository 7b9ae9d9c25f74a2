"""The contract suite of `tests/support/contract.py` on the fakes of `tests/support/kafka_fakes.py` (the same
scenarios run on Apache Kafka in `tests/integration/consumer/test_contract.py`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.contract import SCENARIOS, Scenario, frozen, name
from tests.support.kafka_fakes import TIMED_OUT, FakeConsumer, FakeKafka, FakeMessage, FakeProducer
from worker.consumer.kafka import KafkaConsumer
from worker.consumer.loop import Loop
from worker.consumer.sinks import TransactionalId, TransactionalSink


class FakeBackend:
    input_topic, output_topic, control_topic = "in", "out", "control"

    def __init__(self, protocol: str) -> None:
        self.kafka = FakeKafka(protocol=protocol)
        self.consumer = FakeConsumer(self.kafka)
        self.consumer.assigned = [(self.input_topic, 0)]

    def sink(self, transactional_id: str, consumer: KafkaConsumer | None = None) -> TransactionalSink:
        ids = TransactionalId(transactional_id, configured=True)
        return TransactionalSink({}, consumer or self.consumer, 1.0, "dlq", self.kafka.new_producer, ids)

    @contextlib.contextmanager
    def unreachable(self, call: str) -> Iterator[None]:
        self.kafka.plan(call, TIMED_OUT)
        yield

    def fence(self, transactional_id: str) -> None:
        FakeProducer(self.kafka, {"transactional.id": transactional_id}).init_transactions()

    def stale_member(self) -> contextlib.AbstractContextManager[KafkaConsumer]:
        return contextlib.contextmanager(frozen)(self.consumer, self.consumer.rebalance)

    def back_off(self) -> None:
        pass

    def loop_consumer(self, count: int) -> KafkaConsumer:
        member = FakeConsumer(self.kafka, member_id="member-2")
        messages = [FakeMessage(self.input_topic, 0, offset) for offset in range(count)]
        member.script.extend([lambda: member.assign((self.input_topic, 0)), messages])
        self.member = member
        return member

    def run(self, loop: Loop, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10  # the loop's back-off runs on the system clock
        self.member.on_idle = lambda: loop.stop() if done() or time.monotonic() > deadline else None
        loop.run()

    def outputs(self) -> list[bytes]:
        return [value or b"" for value in self.kafka.values(self.output_topic)]

    def group_offsets(self) -> dict[int, int]:
        return {p: o for (t, p), o in self.kafka.group_offsets.items() if t == self.input_topic}


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=name)
def test_the_fakes_keep_the_contract(scenario: Scenario, protocol: str) -> None:
    scenario(FakeBackend(protocol))
