"""Fakes of the confluent-kafka clients for unit tests of the loop and the sinks (never for integration tests).

`FakeKafka` is the broker, the transaction coordinator and the group coordinator in one: it keeps what
committed transactions wrote (`records`) and the group's committed offsets (`group_offsets`), and checks what
the real coordinators check:
- the group coordinator refuses offsets sent with stale group metadata: a member it does not know
  (`UNKNOWN_MEMBER_ID`), or an old generation (classic: `ILLEGAL_GENERATION`) or member epoch (KIP-848:
  `STALE_MEMBER_EPOCH`), all abortable errors of `send_offsets_to_transaction`; it checks the member's
  generation, never which partitions it owns;
- the transaction coordinator fences a producer once another one with its `transactional.id` called
  `init_transactions` (a fatal `_FENCED` at its next transactional call), which aborts its open transaction.
`FakeProducer` follows librdkafka's transactional state machine closely enough that the worker's misuse
shows (produce outside a transaction, abort while a commit is in progress, begin while a transaction is
open), and raises the faults a test plans, as real `KafkaError` objects, at the call it names. `FakeConsumer`
serves a script of polls and rebalances (each one a new generation or member epoch) and records pauses,
seeks and closes. `tests/support/contract.py` runs the same scenarios on these fakes and on Apache Kafka, so
they cannot drift from librdkafka.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from worker.consumer.kafka import KafkaConsumer, KafkaMessage, KafkaProducer
from worker.processing.decode import Headers

TP = tuple[str, int]


def error(code: int, *, fatal: bool = False, retriable: bool = False, abort: bool = False) -> KafkaError:
    return KafkaError(
        code, f"test: {KafkaError(code).name()}", fatal=fatal, retriable=retriable, txn_requires_abort=abort
    )


TIMED_OUT = error(KafkaError._TIMED_OUT, retriable=True)
FENCED = error(KafkaError._FENCED, fatal=True)
PRODUCER_FENCED = error(KafkaError.PRODUCER_FENCED, fatal=True)
FATAL = error(KafkaError.UNKNOWN_PRODUCER_ID, fatal=True)
ABORTABLE = error(KafkaError.INVALID_TXN_STATE, abort=True)
ILLEGAL_GENERATION = error(KafkaError.ILLEGAL_GENERATION, abort=True)
REBALANCE_IN_PROGRESS = error(KafkaError.REBALANCE_IN_PROGRESS, abort=True)
UNKNOWN_MEMBER_ID = error(KafkaError.UNKNOWN_MEMBER_ID, abort=True)
STALE_MEMBER_EPOCH = error(KafkaError.STALE_MEMBER_EPOCH, abort=True)  # KIP-848
FENCED_MEMBER_EPOCH = error(KafkaError.FENCED_MEMBER_EPOCH, abort=True)  # KIP-848
ASSIGNMENT_LOST = error(KafkaError._ASSIGNMENT_LOST, abort=True)
STATE = error(KafkaError._STATE)


@dataclass(frozen=True)
class GroupMetadata:
    """What `consumer_group_metadata()` returns: the member and its generation (classic) or member epoch
    (KIP-848) at the time of the call. A copy: a later rebalance does not change it."""

    member_id: str
    generation: int


@dataclass
class Fault:
    """`error` raised by the planned call; `applied`: the call took effect all the same (a commit that
    succeeded on the broker and reported a fatal error)."""

    error: KafkaError
    applied: bool = False


class FakeMessage:
    def __init__(
        self,
        topic: str | None,
        partition: int,
        offset: int,
        value: bytes | None = b"{}",
        key: bytes | None = None,
        headers: Headers = None,
        error: KafkaError | None = None,
    ) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._value, self._key, self._headers, self._error = value, key, headers, error

    def topic(self) -> str | None:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> Headers:
        return self._headers

    def error(self) -> KafkaError | None:
        return self._error


@dataclass
class FakeKafka:
    records: list[tuple[str, bytes | None, bytes | None, list[Any]]] = field(default_factory=list)
    group_offsets: dict[TP, int] = field(default_factory=dict)
    faults: dict[str, deque[Fault]] = field(default_factory=lambda: defaultdict(deque))
    producers: list[FakeProducer] = field(default_factory=list)
    broker_max_bytes: int = 1 << 30  # the topic's max.message.bytes (checked on the broker)
    calls: list[str] = field(default_factory=list)
    protocol: str = "classic"  # the group protocol: which error a stale generation gets
    members: dict[str, int] = field(default_factory=dict)  # member id -> its generation (member epoch)
    producer_epochs: dict[str, int] = field(default_factory=dict)  # transactional.id -> the latest epoch

    def rebalance(self, member_id: str) -> None:
        """A new generation (classic) or member epoch (KIP-848) for the member."""
        self.members[member_id] = self.members.get(member_id, 0) + 1

    def remove_member(self, member_id: str) -> None:
        """The coordinator drops the member (its session timed out, or it left)."""
        self.members.pop(member_id, None)

    def check_group(self, metadata: object) -> KafkaError | None:
        """The group coordinator's check of the metadata sent with transactional offsets."""
        if not isinstance(metadata, GroupMetadata):
            return error(KafkaError._INVALID_ARG)
        current = self.members.get(metadata.member_id)
        if current is None:
            return UNKNOWN_MEMBER_ID
        if current != metadata.generation:
            return ILLEGAL_GENERATION if self.protocol == "classic" else STALE_MEMBER_EPOCH
        return None

    def plan(self, call: str, *faults: KafkaError | Fault) -> None:
        """The next calls of `call` (on whichever producer is current) raise these, one each."""
        self.faults[call].extend(f if isinstance(f, Fault) else Fault(f) for f in faults)

    def new_producer(self, config: dict[str, Any]) -> FakeProducer:
        producer = FakeProducer(self, config)
        self.producers.append(producer)
        return producer

    def values(self, topic: str | None = None) -> list[bytes | None]:
        return [value for t, _k, value, _h in self.records if topic is None or t == topic]

    def _fault(self, call: str) -> Fault | None:
        self.calls.append(call)
        return self.faults[call].popleft() if self.faults[call] else None


class FakeProducer:
    def __init__(self, kafka: FakeKafka, config: dict[str, Any]) -> None:
        self.kafka, self.config = kafka, config
        self.transactional = "transactional.id" in config
        self.state = "new" if self.transactional else "ready"
        self.fatal: KafkaError | None = None
        self.pending: list[tuple[str, bytes | None, bytes | None, list[Any]]] = []
        self.pending_offsets: list[TopicPartition] = []
        self.abort_blocks: threading.Event | None = None  # abort_transaction waits for this when set
        self.epoch = 0  # of its transactional.id, from init_transactions
        self.closed = False
        self.calls: list[str] = []  # purge, flush and close, in order

    def _check(self, call: str) -> Fault | None:
        if self.closed:
            raise RuntimeError("producer used after close()")
        if self.fatal is not None:
            raise KafkaException(self.fatal)
        if self.epoch and self.kafka.producer_epochs[self.config["transactional.id"]] != self.epoch:
            self.fatal = FENCED  # another producer with our transactional.id initialised after us
            self.pending, self.pending_offsets = [], []
            raise KafkaException(self.fatal)
        fault = self.kafka._fault(call)
        if fault is not None and fault.error.fatal():
            self.fatal = fault.error
        return fault

    def init_transactions(self, timeout: float = -1) -> None:
        if fault := self._check("init_transactions"):
            raise KafkaException(fault.error)
        transactional_id = self.config["transactional.id"]
        self.epoch = self.kafka.producer_epochs[transactional_id] = (
            self.kafka.producer_epochs.get(transactional_id, 0) + 1
        )
        self.state = "ready"

    def begin_transaction(self) -> None:
        if fault := self._check("begin_transaction"):
            raise KafkaException(fault.error)
        if self.state != "ready":
            raise KafkaException(error(KafkaError._CONFLICT if self.state == "committing" else KafkaError._STATE))
        self.state = "open"

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, **kw: Any) -> None:
        if fault := self._check("produce"):
            if fault.error.txn_requires_abort():
                self.state = "abortable"
            raise KafkaException(fault.error)
        if self.transactional and self.state != "open":
            raise KafkaException(error(KafkaError._STATE))
        if len(value or b"") > int(self.config.get("message.max.bytes", 1_000_000)):
            raise KafkaException(error(KafkaError.MSG_SIZE_TOO_LARGE))
        self.pending.append((topic, key, value, list(kw.get("headers") or [])))

    def poll(self, timeout: float = -1) -> int:
        self.calls.append("poll")
        if fault := self._check("poll"):  # an error event served here: confluent-kafka raises a fatal one
            raise KafkaException(fault.error)
        return 0

    def __len__(self) -> int:
        return 0 if self.transactional else len(self.pending)

    def _deliver(self) -> bool:
        """Delivery reports of the pending messages; False if any failed on the broker (message too large)."""
        ok = True
        for topic, key, value, _headers in self.pending:
            if len(value or b"") > self.kafka.broker_max_bytes:
                ok = False
                report = self.config.get("on_delivery")
                if report is not None:
                    report(error(KafkaError.MSG_SIZE_TOO_LARGE), FakeMessage(topic, 0, -1, value, key))
        return ok

    def flush(self, timeout: float = -1) -> int:
        self.calls.append("flush")
        if fault := self._check("flush"):  # flush polls: a fatal error event is raised there
            raise KafkaException(fault.error)
        if not self.transactional:
            delivered = self._deliver()
            if delivered:
                self.kafka.records += self.pending
            self.pending = []
        return 0

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        self.calls.append("purge")
        self.pending = []

    def close(self) -> bool:
        self.calls.append("close")
        self.closed = True
        return True

    def send_offsets_to_transaction(self, offsets: list[TopicPartition], metadata: Any, timeout: float = -1) -> None:
        if fault := self._check("send_offsets_to_transaction"):
            if fault.error.txn_requires_abort():
                self.state = "abortable"
            raise KafkaException(fault.error)
        if self.state != "open":
            raise KafkaException(error(KafkaError._STATE))
        if refused := self.kafka.check_group(metadata):
            self.state = "abortable"
            raise KafkaException(refused)
        self.pending_offsets = list(offsets)

    def commit_transaction(self, timeout: float = -1) -> None:
        if self.state == "abortable":
            raise KafkaException(ABORTABLE)
        fault = self._check("commit_transaction")
        if self.state not in ("open", "committing"):
            raise KafkaException(error(KafkaError._STATE))
        if fault is not None and not fault.applied:
            if fault.error.retriable() and not fault.error.fatal():
                self.state = "committing"  # continues in the background: the next call may finish it
            elif fault.error.txn_requires_abort():
                self.state = "abortable"
            raise KafkaException(fault.error)
        if not self._deliver():
            self.state = "abortable"
            raise KafkaException(error(KafkaError.MSG_SIZE_TOO_LARGE, abort=True))
        self.kafka.records += self.pending
        for tp in self.pending_offsets:
            self.kafka.group_offsets[tp.topic, tp.partition] = tp.offset
        self.pending, self.pending_offsets, self.state = [], [], "ready"
        if fault is not None:
            raise KafkaException(fault.error)

    def abort_transaction(self, timeout: float = -1) -> None:
        if self.abort_blocks is not None:
            self.abort_blocks.wait(timeout if timeout >= 0 else None)
        if fault := self._check("abort_transaction"):
            raise KafkaException(fault.error)
        if self.state == "committing":
            raise KafkaException(error(KafkaError._CONFLICT))
        if self.state in ("open", "abortable"):
            self.pending, self.pending_offsets, self.state = [], [], "ready"


class FakeConsumer:
    """Serves `script`: each step is a list of messages returned by one consume call, or a callable run
    first (a rebalance, a stop). Once the script is used up, `on_idle` runs at each consume."""

    def __init__(
        self,
        kafka: FakeKafka,
        script: Iterable[list[FakeMessage] | Callable[[], None]] = (),
        member_id: str = "member-1",
    ) -> None:
        self.kafka, self.member_id = kafka, member_id
        kafka.rebalance(member_id)  # a member of the group from the start (tests that never subscribe commit too)
        self.generation = kafka.members[member_id]  # what this member knows: it learns of a new one in a rebalance
        self.script: deque[list[FakeMessage] | Callable[[], None]] = deque(script)
        self.on_idle: Callable[[], None] = lambda: None
        self.assigned: list[TP] = []
        self.paused: set[TP] = set()
        self.seeks: list[tuple[str, int, int]] = []
        self.high: dict[TP, int] = {}
        self.positions: dict[TP, int] = {}
        self.closed = False
        self.polls = 0
        self.callbacks: dict[str, Callable[..., None]] = {}
        self.topics: list[str] = []

    # ---- test controls ----

    def assign(self, *tps: TP) -> None:
        self.rebalance()
        self.assigned += [tp for tp in tps if tp not in self.assigned]
        self.callbacks["on_assign"](self, [TopicPartition(t, p) for t, p in tps])

    def revoke(self, *tps: TP, lost: bool = False) -> None:
        self.rebalance()
        self.callbacks["on_lost" if lost else "on_revoke"](self, [TopicPartition(t, p) for t, p in tps])
        self.assigned = [tp for tp in self.assigned if tp not in tps]
        self.paused -= set(tps)

    def rebalance(self) -> None:
        """The member takes part in a rebalance: a new generation (member epoch), which it knows."""
        self.kafka.rebalance(self.member_id)
        self.generation = self.kafka.members[self.member_id]

    # ---- the consumer API the worker uses ----

    def subscribe(self, topics: list[str], **callbacks: Callable[..., None]) -> None:
        self.topics = topics
        self.callbacks = callbacks

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        self.polls += 1
        while self.script:
            step = self.script.popleft()
            if callable(step):
                step()
                continue
            return [m for m in step if (m.topic(), m.partition()) not in self.paused]
        self.on_idle()
        return []

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.assigned]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def seek(self, tp: TopicPartition) -> None:
        if fault := self.kafka._fault("seek"):
            raise KafkaException(fault.error)
        if (tp.topic, tp.partition) not in self.assigned:
            raise KafkaException(error(KafkaError._UNKNOWN_PARTITION))
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        if fault := self.kafka._fault("committed"):
            raise KafkaException(fault.error)
        return [
            TopicPartition(tp.topic, tp.partition, self.kafka.group_offsets.get((tp.topic, tp.partition), -1001))
            for tp in partitions
        ]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), -1001))
            for tp in partitions
        ]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = -1, cached: bool = False) -> tuple[int, int]:
        return 0, self.high.get((tp.topic, tp.partition), 0)

    def consumer_group_metadata(self) -> GroupMetadata:
        return GroupMetadata(self.member_id, self.generation)

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> list[TopicPartition]:
        if fault := self.kafka._fault("commit"):
            raise KafkaException(fault.error)
        for tp in offsets:
            self.kafka.group_offsets[tp.topic, tp.partition] = tp.offset
        return offsets

    def close(self) -> None:
        self.closed = True


def conforming(kafka: FakeKafka) -> tuple[KafkaConsumer, KafkaProducer, KafkaMessage]:
    """The fakes typed as the interfaces the loop and the sinks are written against (`worker/consumer/kafka.py`):
    `make lint` runs mypy --strict on this file, so a fake whose methods drift from them fails the lint."""
    return FakeConsumer(kafka), FakeProducer(kafka, {}), FakeMessage("topic", 0, 0)
