"""One suite of sink and loop scenarios, run on the fakes (`tests/unit/consumer/test_contract.py`) and on the
embedded Apache Kafka (`tests/integration/consumer/test_contract.py`), the way arroyo runs one suite on its
local and its Kafka backend: if the fakes drift from librdkafka and the coordinators (an error that is
abortable on one and retriable on the other, metadata one refuses and the other takes), one of the two runs
fails.

A scenario is a function of a `Backend`: it drives the worker's `TransactionalSink` (and the `Loop`) through
begin, send, commit and abort, with the faults the backend can cause (the broker unreachable during a call,
another producer with the sink's transactional id, group metadata from before a rebalance), and checks what
a `read_committed` reader sees and what the group committed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import pytest
import redis
from confluent_kafka import TopicPartition

from worker.config import Settings
from worker.consumer.health import Health
from worker.consumer.kafka import KafkaConsumer, KafkaMessage
from worker.consumer.loop import Loop, SystemClock
from worker.consumer.sinks import CommitUncertain, PartitionsLost, RetryBatch, TransactionalSink
from worker.processing.processor import BatchResult, Output

Scenario = Callable[["Backend"], None]
ATTEMPTS = 10
_ids = itertools.count()


class Backend(Protocol):
    input_topic: str
    output_topic: str
    control_topic: str  # subscribed by the loop; never written in these scenarios

    def sink(self, transactional_id: str, consumer: KafkaConsumer | None = None) -> TransactionalSink:
        """A transactional sink on the backend's group member (or `consumer`), its timeout short."""
        ...

    def unreachable(self, call: str) -> AbstractContextManager[None]:
        """While inside, the broker does not answer `call` (the fakes time out that call; Apache Kafka is
        stopped with SIGSTOP, so the sink's first blocking call times out)."""
        ...

    def fence(self, transactional_id: str) -> None:
        """Another producer with this transactional.id initialises (a twin, a restarted process)."""
        ...

    def stale_member(self) -> AbstractContextManager[KafkaConsumer]:
        """The backend's member as a frozen process sees it: group metadata from before a rebalance that has
        moved the group on since (a new generation or member epoch)."""
        ...

    def back_off(self) -> None:
        """What the loop does between two attempts of a batch: wait a little."""
        ...

    def loop_consumer(self, count: int) -> KafkaConsumer:
        """A new member of the group for a `Loop` (not subscribed: the loop does it), with `count` input
        messages on partition 0; the backend's own member has left."""
        ...

    def run(self, loop: Loop, done: Callable[[], bool]) -> None:
        """Run `loop` until `done()` holds (then it is stopped), bounded in time."""
        ...

    def outputs(self) -> list[bytes]:
        """Values a read_committed reader sees on the output topic, in order."""
        ...

    def group_offsets(self) -> dict[int, int]:
        """The group's committed offsets of the input topic, by partition (absent: none)."""
        ...


class StaleMetadata:
    """A consumer whose group metadata is frozen at what it was when this was made."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer
        self._metadata = consumer.consumer_group_metadata()

    def consumer_group_metadata(self) -> Any:
        return self._metadata

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def outputs(batch: str, n: int = 3) -> list[Output]:
    return [Output("", f"{batch}-{i}".encode(), f"{batch}-{i}".encode(), []) for i in range(n)]


def send(backend: Backend, sink: TransactionalSink, batch: str) -> None:
    sink.begin()
    sink.send([o._replace(topic=backend.output_topic) for o in outputs(batch)])


def offsets(backend: Backend, end: int) -> list[TopicPartition]:
    return [TopicPartition(backend.input_topic, 0, end)]


def redo(backend: Backend, sink: TransactionalSink, batch: str, commit_offsets: list[TopicPartition]) -> None:
    """Run the batch again as the loop does: begin, send, commit, once more after each `RetryBatch` (the sink's
    promise: certainly not committed). Apache Kafka may need more than one attempt after a fault (an abort
    that times out, then a fatal INVALID_TXN_STATE and a new producer); the fakes need one."""
    for _ in range(ATTEMPTS):
        try:
            send(backend, sink, batch)
            sink.commit(commit_offsets)
            return
        except RetryBatch:
            backend.back_off()
    raise AssertionError(f"batch {batch!r} not committed after {ATTEMPTS} attempts")


def values(batch: str) -> list[bytes]:
    return [o.value or b"" for o in outputs(batch)]


def transactional_id() -> str:
    return f"contract-{next(_ids)}"


# ---- the scenarios -------------------------------------------------------------------------------------------


def a_commit_makes_the_outputs_and_offsets_visible_together(backend: Backend) -> None:
    sink = backend.sink(transactional_id())
    sink.start()
    send(backend, sink, "a")
    sink.commit(offsets(backend, 3))
    assert backend.outputs() == values("a")
    assert backend.group_offsets() == {0: 3}


def an_aborted_batch_is_never_seen(backend: Backend) -> None:
    sink = backend.sink(transactional_id())
    send(backend, sink, "aborted")
    sink.abort()
    send(backend, sink, "b")
    sink.commit(offsets(backend, 5))
    assert backend.outputs() == values("b")
    assert backend.group_offsets() == {0: 5}


def a_fenced_producer_commits_nothing_and_the_redo_commits_once(backend: Backend) -> None:
    tid = transactional_id()
    sink = backend.sink(tid)
    send(backend, sink, "fenced")
    backend.fence(tid)
    with pytest.raises(RetryBatch):
        sink.commit(offsets(backend, 3))
    assert backend.group_offsets() == {}
    redo(backend, sink, "redo", offsets(backend, 3))  # on a new producer
    assert backend.outputs() == values("redo")
    assert backend.group_offsets() == {0: 3}


def a_timed_out_send_offsets_aborts_and_the_redo_commits_once(backend: Backend) -> None:
    """Issue 19, defect 1: before commit_transaction, a timeout is not "outcome unknown": abort and redo."""
    sink = backend.sink(transactional_id())
    sink.start()
    send(backend, sink, "timed-out")
    with backend.unreachable("send_offsets_to_transaction"), pytest.raises(RetryBatch):
        sink.commit(offsets(backend, 3))
    redo(backend, sink, "redo", offsets(backend, 3))
    assert backend.outputs() == values("redo")
    assert backend.group_offsets() == {0: 3}


def a_timed_out_commit_is_called_again_and_commits_once(backend: Backend) -> None:
    """commit_transaction that timed out goes on in the background: called again, it finishes (never aborted)."""
    sink = backend.sink(transactional_id())
    sink.start()
    send(backend, sink, "slow")
    with backend.unreachable("commit_transaction"), pytest.raises(CommitUncertain):
        sink.commit([])  # a batch without input offsets (a timeout scan's): the commit is the first call
    sink.commit([])
    assert backend.outputs() == values("slow")


def offsets_with_stale_group_metadata_are_refused(backend: Backend) -> None:
    """A zombie (frozen past a rebalance) is fenced by the group coordinator: PartitionsLost, nothing seen."""
    with backend.stale_member() as zombie:
        sink = backend.sink(transactional_id(), zombie)
        send(backend, sink, "zombie")
        with pytest.raises(PartitionsLost):
            sink.commit(offsets(backend, 3))
    assert backend.outputs() == []
    assert backend.group_offsets() == {}


class EchoProcessor:
    """One output per message (`partition:offset`); the first `process` fails like a Redis outage."""

    def __init__(self, output_topic: str) -> None:
        self.output_topic, self.calls = output_topic, 0

    def process(self, messages: Sequence[KafkaMessage], now_ms: int) -> BatchResult:
        self.calls += 1
        if self.calls == 1:
            raise redis.ConnectionError("contract: Redis down for the first batch")
        result = BatchResult()
        result.outputs = [
            Output(self.output_topic, None, f"{m.partition()}:{m.offset()}".encode(), []) for m in messages
        ]
        return result

    def scan_timeouts(self, now_ms: int) -> BatchResult:
        return BatchResult()

    def settle(self, result: BatchResult) -> None:
        pass

    def open_changes(self) -> int:
        return 0


def the_loop_commits_every_record_once_through_a_retried_batch(backend: Backend) -> None:
    """The loop on the backend's consumer and a transactional sink: a batch that fails first (Redis) is run
    again after a back-off with its partition paused, then every record is committed once, offsets at the end."""
    consumer = backend.loop_consumer(5)
    settings = Settings(
        input_topics=[backend.input_topic], output_topic=backend.output_topic, control_topic=backend.control_topic
    )
    processor = EchoProcessor(backend.output_topic)
    loop = Loop(settings, consumer, backend.sink(transactional_id(), consumer), processor, Health(300), SystemClock())
    expected = [f"0:{offset}".encode() for offset in range(5)]
    backend.run(loop, lambda: backend.group_offsets().get(0) == 5)
    assert processor.calls >= 2
    assert backend.outputs() == expected
    assert backend.group_offsets() == {0: 5}


SCENARIOS: list[Scenario] = [
    a_commit_makes_the_outputs_and_offsets_visible_together,
    an_aborted_batch_is_never_seen,
    a_fenced_producer_commits_nothing_and_the_redo_commits_once,
    a_timed_out_send_offsets_aborts_and_the_redo_commits_once,
    a_timed_out_commit_is_called_again_and_commits_once,
    offsets_with_stale_group_metadata_are_refused,
    the_loop_commits_every_record_once_through_a_retried_batch,
]


def name(scenario: Scenario) -> str:
    return scenario.__name__


def frozen(consumer: KafkaConsumer, rebalance: Callable[[], None]) -> Iterator[KafkaConsumer]:
    """`stale_member` for both backends: the metadata taken now, then the group moves on."""
    zombie: Any = StaleMetadata(consumer)  # delegates every call but consumer_group_metadata
    rebalance()
    yield zombie
