"""The loop with fake Kafka clients and a fake processor: each librdkafka error at the point where the real
clients raise it, and what is then emitted, committed, rewound (seeks) and retried."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis
from confluent_kafka import KafkaError
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from tests.support.kafka_fakes import (
    ABORTABLE,
    ASSIGNMENT_LOST,
    FATAL,
    FENCED,
    FENCED_MEMBER_EPOCH,
    ILLEGAL_GENERATION,
    PRODUCER_FENCED,
    REBALANCE_IN_PROGRESS,
    STALE_MEMBER_EPOCH,
    STATE,
    TIMED_OUT,
    UNKNOWN_MEMBER_ID,
    FakeConsumer,
    FakeKafka,
    FakeMessage,
    Fault,
    error,
)
from worker.config import Settings
from worker.consumer.health import Health
from worker.consumer.loop import Loop, RewindFailed
from worker.consumer.sinks import AtLeastOnceSink, Sink, TransactionalId, TransactionalSink
from worker.processing.deadletter import dead_letter_fields
from worker.processing.processor import BatchResult, Output
from worker.state.client import StateMissing

IN, OUT, DLQ = "in", "out", "dlq"
P0, P1 = (IN, 0), (IN, 1)


def msg(partition: int, offset: int, value: bytes = b"{}") -> FakeMessage:
    return FakeMessage(IN, partition, offset, value, headers=[("trace", b"t-1")])


class FakeClock:
    """Time moves 50 ms at every look, so back-offs end without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        self.now += 0.05
        return self.now

    def wall_ms(self) -> int:
        return int(self.now * 1000)


class FakeProcessor:
    """One record per message (its position), or a DLQ copy of the whole value for values starting with
    b"bad"; `failures` are raised by the next process calls."""

    def __init__(self) -> None:
        self.failures: deque[Exception] = deque()
        self.processed: list[list[tuple[int, int]]] = []
        self.settled: list[BatchResult] = []
        self.times: list[int] = []

    def process(self, messages: Sequence[Any], now_ms: int) -> BatchResult:
        self.times.append(now_ms)
        if self.failures:
            raise self.failures.popleft()
        self.processed.append([(m.partition(), m.offset()) for m in messages])
        result = BatchResult()
        for m in messages:
            if m.value().startswith(b"bad"):
                headers = [*m.headers(), ("dlq.reason", b"not_json"), ("dlq.source.offset", str(m.offset()).encode())]
                result.outputs.append(Output(DLQ, m.key(), m.value(), headers))
                result.dlq["not_json"] += 1
            else:
                result.outputs.append(Output(OUT, None, f"{m.partition()}:{m.offset()}".encode(), []))
                result.records["test/v1"] += 1
        return result

    def scan_timeouts(self, now_ms: int) -> BatchResult:
        return BatchResult()

    def settle(self, result: BatchResult) -> None:
        if result.outputs:  # the empty results of the timeout scans are settled too
            self.settled.append(result)

    def open_changes(self) -> int:
        return 0


class Harness:
    def __init__(self, script: list[Any], guarantee: str = "exactly_once", **settings: Any) -> None:
        self.kafka = FakeKafka()
        self.consumer = FakeConsumer(self.kafka, script)
        self.processor = FakeProcessor()
        self.clock = FakeClock()
        self.settings = Settings(
            input_topics=[IN],
            output_topic=OUT,
            dlq_topic=DLQ,
            processing_guarantee=guarantee,
            shutdown_timeout_seconds=settings.pop("shutdown_timeout_seconds", 5),
            **settings,
        )
        self.health = Health(300, self.clock.monotonic)
        self.ids = TransactionalId("group-host-1", configured=False)
        self.sink: Sink
        if guarantee == "exactly_once":
            self.sink = TransactionalSink(
                {"transactional.id": "t"}, self.consumer, 1.0, DLQ, self.kafka.new_producer, self.ids
            )
        else:
            self.sink = AtLeastOnceSink({}, self.consumer, 1.0, DLQ, self.kafka.new_producer)
        self.loop = Loop(self.settings, self.consumer, self.sink, self.processor, self.health, self.clock)
        self.idle = 0
        self.consumer.on_idle = self._idle

    def _idle(self) -> None:
        """Stop once the script is used up and retries had time to finish (about 5 s of fake time)."""
        self.idle += 1
        if self.idle == 100:
            self.loop.stop()

    def run(self) -> Harness:
        self.loop.run()
        return self

    def assign(self, *tps: tuple[str, int]) -> Callable[[], None]:
        return lambda: self.consumer.assign(*tps)

    def revoke(self, *tps: tuple[str, int], lost: bool = False) -> Callable[[], None]:
        return lambda: self.consumer.revoke(*tps, lost=lost)

    def outputs(self) -> list[bytes | None]:
        return self.kafka.values(OUT)


def test_a_clean_batch_commits_its_records_with_its_offsets_and_is_settled_once() -> None:
    h = Harness([])
    h.consumer.script.extend([h.assign(P0, P1), [msg(0, 10), msg(1, 5), msg(0, 11)]])
    h.run()
    assert h.outputs() == [b"0:10", b"1:5", b"0:11"]
    assert h.kafka.group_offsets == {P0: 12, P1: 6}
    assert len(h.processor.settled) == 1
    assert h.consumer.topics == [IN, "group-events-worker.control"]
    assert h.processor.times == [h.processor.times[0]] and h.processor.times[0] > 0


@pytest.mark.parametrize(
    "fault",
    [
        ILLEGAL_GENERATION,
        REBALANCE_IN_PROGRESS,
        UNKNOWN_MEMBER_ID,
        STALE_MEMBER_EPOCH,  # KIP-848 from here on
        FENCED_MEMBER_EPOCH,
        ASSIGNMENT_LOST,
    ],
    ids=lambda e: e.name(),
)
def test_a_batch_dropped_because_the_group_moved_rewinds_its_partitions_still_assigned(fault: Any) -> None:
    """Defect 1: without the seek, the next batch commits past the dropped messages. Issue 19: the KIP-848
    member epoch errors and a member the coordinator no longer knows drop and rewind too."""
    h = Harness([])
    h.kafka.plan("send_offsets_to_transaction", fault)
    batch = [msg(0, 10), msg(1, 5), msg(0, 11)]
    h.consumer.script.extend([h.assign(P0, P1), batch, list(batch)])  # after the seek: the same messages again
    h.run()
    assert sorted(h.consumer.seeks) == [(IN, 0, 10), (IN, 1, 5)]
    assert h.outputs() == [b"0:10", b"1:5", b"0:11"]
    assert h.kafka.group_offsets == {P0: 12, P1: 6}


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_a_zombie_is_fenced_by_the_group_coordinator(protocol: str) -> None:
    """The claim "zombies are fenced by the group generation", on fakes that check it: while this member was
    frozen the group moved on (a new generation, or member epoch, it has not seen yet): its offsets are refused
    (ILLEGAL_GENERATION, STALE_MEMBER_EPOCH), the batch aborted and rewound; once the member caught up in the
    next rebalance the batch commits once."""
    h = Harness([], group_protocol=protocol)
    h.kafka.protocol = protocol
    batch = [msg(0, 10), msg(0, 11)]

    def frozen() -> None:  # the coordinator moves on; the consumer learns of it only in its next rebalance
        h.kafka.rebalance(h.consumer.member_id)

    h.consumer.script.extend([h.assign(P0), frozen, batch, h.revoke(P0), h.assign(P0), list(batch)])
    h.run()
    assert h.consumer.seeks == [(IN, 0, 10)]
    assert h.outputs() == [b"0:10", b"0:11"]
    assert h.kafka.group_offsets == {P0: 12}


def test_a_failed_rewind_stops_the_loop_before_anything_commits_past_the_dropped_batch() -> None:
    """Issue 19, defect 9: `_drop` logged rewind_failed and went on, so the next batch (fetched from past the
    dropped one) committed offsets past messages that were never committed. Now the loop stops (the process
    exits non-zero, the member leaves, the partition is replayed from its committed offset)."""
    h = Harness([])
    h.kafka.plan("send_offsets_to_transaction", ILLEGAL_GENERATION)
    h.kafka.plan("seek", error(KafkaError._STATE))
    h.consumer.script.extend([h.assign(P0), [msg(0, 10), msg(0, 11)], [msg(0, 12)]])
    with pytest.raises(RewindFailed):
        h.run()
    assert h.outputs() == [] and h.kafka.group_offsets == {}
    assert h.consumer.closed


def test_a_partition_revoked_and_assigned_again_while_a_batch_waits_is_not_rewound() -> None:
    """Issue 19, found by the zombie of the chaos run: a worker frozen for a minute thawed in its back-off, and its
    next poll served the lost partitions and their new assignment at once; the drop then rewound the partitions
    "still assigned" to the batch's first offset, a minute old, past which other members had committed: the
    worker read and committed all of it again (608 duplicates). A partition revoked since the batch started
    starts from the group's committed offset on its new assignment: only the others are rewound."""
    h = Harness([])
    h.processor.failures.append(redis.ConnectionError("down"))

    def others_committed_meanwhile() -> None:
        h.kafka.group_offsets[P0] = 50

    h.consumer.script.extend(
        [h.assign(P0, P1), [msg(0, 10), msg(1, 5)], others_committed_meanwhile, h.revoke(P0, lost=True), h.assign(P0)]
    )
    h.run()
    assert h.consumer.seeks == [(IN, 1, 5)]  # P1 was ours all along: rewound; P0 was not
    assert h.outputs() == [] and h.kafka.group_offsets == {P0: 50}


def test_partitions_lost_while_a_batch_waits_rewind_only_what_is_still_assigned() -> None:
    """Defect 1 and KIP-848: the lost partition's new owner replays it; ours is read again from the start."""
    h = Harness([])
    h.processor.failures.append(redis.ConnectionError("down"))
    batch = [msg(0, 10), msg(1, 5)]
    h.consumer.script.extend([h.assign(P0, P1), batch, h.revoke(P0, lost=True), [], [msg(1, 5)]])
    h.run()
    assert h.consumer.seeks == [(IN, 1, 5)]
    assert h.outputs() == [b"1:5"]
    assert h.kafka.group_offsets == {P1: 6}


@pytest.mark.parametrize("fault", [FENCED, PRODUCER_FENCED], ids=lambda e: e.name())
def test_a_fenced_producer_is_replaced_and_the_batch_retried_not_dropped(fault: Any) -> None:
    """Defect 1: fencing is about the transactional id, not the partitions, which the consumer still owns."""
    h = Harness([])
    h.kafka.plan("commit_transaction", fault)
    h.consumer.script.extend([h.assign(P0), [msg(0, 10), msg(0, 11)]])
    h.run()
    assert len(h.kafka.producers) == 2
    assert h.outputs() == [b"0:10", b"0:11"]
    assert h.kafka.group_offsets == {P0: 12}
    assert h.consumer.seeks == []


@pytest.mark.parametrize(
    ("guarantee", "call", "fault"),
    [("exactly_once", "poll", FENCED), ("at_least_once", "poll", FATAL), ("at_least_once", "flush", FATAL)],
)
def test_a_fatal_error_that_surfaces_at_a_poll_is_a_retry_with_a_new_producer(
    guarantee: str, call: str, fault: Any
) -> None:
    """Issue 19 (seen in the fencing reproduction): confluent-kafka raises a fatal error at the poll that serves
    it (the poll of `send` after the produce calls, or the polls of the at-least-once flush); it escaped the
    loop, which ended the process."""
    h = Harness([], guarantee)
    h.kafka.plan(call, fault)
    h.consumer.script.extend([h.assign(P0), [msg(0, 10), msg(0, 11)]])
    h.run()
    assert len(h.kafka.producers) == 2
    assert h.outputs() == [b"0:10", b"0:11"]
    assert h.kafka.group_offsets == {P0: 12}


def test_a_process_fenced_with_the_default_id_takes_a_unique_id_for_its_next_producer() -> None:
    h = Harness([])
    h.kafka.plan("commit_transaction", PRODUCER_FENCED)
    h.consumer.script.extend([h.assign(P0), [msg(0, 10)]])
    h.run()
    first, second = (p.config["transactional.id"] for p in h.kafka.producers)
    assert first == "group-host-1" and second.startswith("group-host-1-") and second != first


def test_a_fatal_commit_error_after_the_broker_committed_is_settled_not_redone() -> None:
    """Defect 2: the batch's offsets are at its end, so it committed; redoing it would emit it twice."""
    h = Harness([])
    h.kafka.plan("commit_transaction", Fault(FATAL, applied=True))
    h.consumer.script.extend([h.assign(P0), [msg(0, 10), msg(0, 11)]])
    h.run()
    assert h.outputs() == [b"0:10", b"0:11"]
    assert len(h.processor.processed) == 1
    assert len(h.processor.settled) == 1
    assert len(h.kafka.producers) == 2


def test_a_fatal_commit_error_that_did_not_commit_is_redone_with_a_new_producer() -> None:
    h = Harness([])
    h.kafka.plan("commit_transaction", FATAL)
    h.kafka.plan("committed", TIMED_OUT)  # the first look at the group's offsets fails: look again
    h.consumer.script.extend([h.assign(P0), [msg(0, 10), msg(0, 11)]])
    h.run()
    assert h.outputs() == [b"0:10", b"0:11"]
    assert h.kafka.group_offsets == {P0: 12}
    assert len(h.processor.settled) == 1


def test_a_timed_out_commit_is_called_again_until_definite_even_across_a_revoke() -> None:
    """Defect 3: aborting a commit in progress fails (_CONFLICT) and left every later batch failing."""
    h = Harness([])
    h.kafka.plan("commit_transaction", TIMED_OUT, TIMED_OUT)
    h.consumer.script.extend(
        [h.assign(P0), [msg(0, 10)], h.revoke(P0), h.assign(P0), [], [msg(0, 11)]]  # eager: all out, all back
    )
    h.run()
    assert h.outputs() == [b"0:10", b"0:11"]
    assert h.kafka.group_offsets == {P0: 12}
    assert len(h.processor.processed) == 2  # the first batch was not redone
    assert "abort_transaction" not in h.kafka.calls


def test_a_timed_out_send_offsets_then_a_revoke_commits_nothing() -> None:
    """Issue 19, defect 1: a retriable error from send_offsets_to_transaction was taken as "commit outcome
    uncertain": the batch was kept through the revoke and its offsets sent again with the consumer's new group
    metadata, which the coordinator accepts (it checks the generation, not who owns the partition), so the batch
    committed next to the new owner's replay of it. Before commit_transaction nothing is pending: abort, and
    drop the batch when its partition moved."""
    h = Harness([])
    h.kafka.plan("send_offsets_to_transaction", TIMED_OUT)
    h.consumer.script.extend([h.assign(P0), [msg(0, 10)], h.revoke(P0)])
    h.run()
    assert h.outputs() == []
    assert h.kafka.group_offsets == {}
    assert h.processor.settled == []


def test_a_timed_out_send_offsets_redoes_the_batch_once() -> None:
    h = Harness([])
    h.kafka.plan("send_offsets_to_transaction", TIMED_OUT)
    h.consumer.script.extend([h.assign(P0), [msg(0, 10), msg(0, 11)]])
    h.run()
    assert h.outputs() == [b"0:10", b"0:11"]
    assert h.kafka.group_offsets == {P0: 12}
    assert len(h.processor.processed) == 2  # run again: nothing of the first attempt was kept


def test_a_timed_out_commit_that_then_fails_drops_the_batch_and_rewinds_it() -> None:
    h = Harness([])
    h.kafka.plan("commit_transaction", TIMED_OUT, ABORTABLE)
    h.consumer.script.extend([h.assign(P0), [msg(0, 10)], [msg(0, 10)]])
    h.run()
    assert h.outputs() == [b"0:10"]
    assert h.kafka.group_offsets == {P0: 11}


@pytest.mark.parametrize("fault", [ABORTABLE, STATE], ids=lambda e: e.name())
def test_an_error_from_produce_is_a_retry_not_the_end_of_the_loop(fault: Any) -> None:
    """Defect 5: only BufferError was caught around produce."""
    h = Harness([])
    h.kafka.plan("produce", fault)
    h.consumer.script.extend([h.assign(P0), [msg(0, 10), msg(0, 11)]])
    h.run()
    assert h.outputs() == [b"0:10", b"0:11"]
    assert h.kafka.group_offsets == {P0: 12}


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
@pytest.mark.parametrize("where", ["producer", "broker"])
def test_an_output_too_large_goes_to_the_dlq_as_a_stub(guarantee: str, where: str) -> None:
    """Defect 5: an invalid input accepted compressed is copied whole to the DLQ and exceeds the limit."""
    h = Harness([], guarantee)
    if where == "broker":
        h.kafka.broker_max_bytes = 1000
    huge = b"bad" + b"x" * (2_000_000 if where == "producer" else 5000)
    h.consumer.script.extend([h.assign(P0), [msg(0, 10), msg(0, 11, huge), msg(0, 12)]])
    h.run()
    assert h.outputs() == [b"0:10", b"0:12"]
    [(_topic, _key, value, headers)] = [r for r in h.kafka.records if r[0] == DLQ]
    assert value is None
    fields = dead_letter_fields(headers)
    assert fields["reason"] == "too_large"
    assert str(len(huge)) in fields["detail"]
    assert fields["source.offset"] == "11"
    assert ("trace", b"t-1") in headers
    assert h.kafka.group_offsets == {P0: 13}


def test_an_incremental_revoke_of_other_partitions_leaves_the_waiting_batch_alone() -> None:
    """KIP-848: only the revoked partitions' work is dropped; a batch of the others goes on."""
    h = Harness([])
    h.processor.failures.append(redis.ConnectionError("down"))
    h.consumer.script.extend([h.assign(P0, P1), [msg(0, 10)], h.revoke(P1)])
    h.run()
    assert h.outputs() == [b"0:10"]
    assert h.consumer.seeks == []
    assert h.health.assigned == 1


@pytest.mark.parametrize(
    "event",
    [
        FakeMessage(IN, -1, -1001, error=error(KafkaError._TRANSPORT)),  # a client-level error: no partition
        FakeMessage(None, 0, -1001, error=error(KafkaError.UNKNOWN_TOPIC_OR_PART)),  # no topic
    ],
    ids=["partition -1", "no topic"],
)
def test_error_events_polled_during_a_back_off_are_skipped_not_sought(event: FakeMessage) -> None:
    """Issue 19, defect 5: the back-off sought to the first offset of everything consume() returned, error events
    included: seek raised and the exception ended the loop."""
    h = Harness([])
    h.processor.failures.append(redis.ConnectionError("down"))
    h.consumer.script.extend([h.assign(P0), [msg(0, 10)], [event]])
    h.run()
    assert h.outputs() == [b"0:10"]
    assert h.kafka.group_offsets == {P0: 11}
    assert h.consumer.seeks == []


def test_a_stop_while_a_batch_waits_drops_it_and_rewinds_it() -> None:
    h = Harness([])
    h.processor.failures.extend([redis.ConnectionError("down")] * 3)
    h.consumer.script.extend([h.assign(P0), [msg(0, 10)], h.loop.stop])
    h.run()
    assert h.outputs() == []
    assert h.consumer.seeks == [(IN, 0, 10)]
    assert h.consumer.closed


def test_a_stop_while_a_commit_is_uncertain_exits_as_a_crash_would_after_half_the_shutdown_timeout() -> None:
    """The crash-point table's SIGTERM row: a commit whose outcome is unknown is asked again for at most half of
    the shutdown timeout, then the loop ends without settling (the coordinator finishes or aborts the
    transaction; the next owner replays whatever did not commit)."""
    h = Harness([], shutdown_timeout_seconds=2)
    h.kafka.plan("commit_transaction", *[TIMED_OUT] * 1000)
    h.consumer.script.extend([h.assign(P0), [msg(0, 10)], h.loop.stop])
    with capture_logs() as logs:
        h.run()
    assert [e for e in logs if e["event"] == "batch_outcome_unknown_at_stop"] != []
    assert h.processor.settled == []
    assert h.outputs() == [] and h.kafka.group_offsets == {}
    assert "abort_transaction" not in h.kafka.calls  # a commit in progress is never aborted
    assert not h.kafka.producers[-1].closed  # nor by close(): the process exits with it, as a crash would
    assert h.consumer.closed


def test_shutdown_is_bounded_and_the_member_leaves_the_group_when_the_abort_hangs() -> None:
    """Defect 9: the abort had its own 30 s timeout and the consumer was closed only after it."""
    h = Harness([], shutdown_timeout_seconds=0.5)
    h.kafka.plan("produce", ABORTABLE)
    h.kafka.plan("abort_transaction", TIMED_OUT, TIMED_OUT)  # still open after the retry's and the drop's abort

    def hang_aborts() -> None:
        h.kafka.producers[-1].abort_blocks = threading.Event()  # never set: each abort takes its timeout
        h.loop.stop()

    h.consumer.script.extend([h.assign(P0), [msg(0, 10)], hang_aborts])
    started = time.monotonic()
    h.run()
    assert h.consumer.closed
    assert time.monotonic() - started < 5


def test_lag_is_measured_from_the_committed_offsets_not_the_position() -> None:
    """Defect 9: the position runs ahead while a batch retries."""
    h = Harness([])
    h.consumer.script.extend([h.assign(P0)])
    h.kafka.group_offsets[P0] = 40
    h.consumer.positions[P0] = 100
    h.consumer.high[P0] = 120
    h.run()
    assert REGISTRY.get_sample_value("worker_consumer_lag", {"topic": IN, "partition": "0"}) == 80


def test_missing_redis_state_is_retried_like_an_outage_and_logged_as_an_error_naming_the_key() -> None:
    """Issue 19, defect 3: an evicted `…:users` hash made the close path raise TypeError out of
    Processor.process, which ended the loop of every owner of the partition in turn. Missing state is a named
    Redis error now: the batch waits and is retried, /readyz fails meanwhile, the log names the key."""
    h = Harness([])
    missing = StateMissing("STATE_MISSING gew:change:{c1}:users: user u1 of a chunk has no carrier")
    h.processor.failures.extend([missing, missing])
    not_ready: list[str | None] = []  # what /readyz reports during the back-off's polls

    def idle() -> None:
        not_ready.append(h.health.retrying)
        h._idle()

    h.consumer.script.extend([h.assign(P0), [msg(0, 10)]])
    h.consumer.on_idle = idle
    with capture_logs() as logs:
        h.run()
    errors = [e for e in logs if e["event"] == "batch_retry" and e["log_level"] == "error"]
    assert len(errors) == 2 and "gew:change:{c1}:users" in errors[0]["error"]
    assert "redis: STATE_MISSING gew:change:{c1}:users" in str(not_ready[0])
    assert h.outputs() == [b"0:10"] and h.kafka.group_offsets == {P0: 11}


def test_retries_are_counted_by_cause() -> None:
    h = Harness([])
    before = Counter(
        {c: REGISTRY.get_sample_value("worker_batch_retries_total", {"cause": c}) or 0 for c in ("redis", "kafka")}
    )
    h.processor.failures.append(redis.ConnectionError("down"))
    h.kafka.plan("commit_transaction", ABORTABLE)
    h.consumer.script.extend([h.assign(P0), [msg(0, 10)]])
    h.run()
    after = {c: REGISTRY.get_sample_value("worker_batch_retries_total", {"cause": c}) or 0 for c in before}
    assert (after["redis"] - before["redis"], after["kafka"] - before["kafka"]) == (1, 1)
    assert h.outputs() == [b"0:10"]


def test_the_producer_fences_its_predecessor_before_the_first_poll() -> None:
    """A restarted worker's consumer fetches its committed offsets with RequireStable (read_committed, KIP-447),
    which waits while its predecessor's transaction is pending: if init_transactions (which aborts that
    transaction) only came with the first batch, the restart would wait out transaction.timeout.ms (60 s by
    default) before it consumed anything."""
    h = Harness([])
    first_poll: list[list[str]] = []
    h.consumer.script.append(lambda: first_poll.append(list(h.kafka.calls)))
    h.run()
    assert first_poll == [["init_transactions"]]
