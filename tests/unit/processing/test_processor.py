"""The Processor on the in-memory stores: timeout commands instead of flushes under a lease (defects 4, 7),
chunked closes with continue commands (defect 8), control messages that are not commands, the time passed in,
and the replica wait (defect 6)."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
import redis

from worker.processing import control
from worker.processing.offline import CONTROL_TOPIC, DLQ_TOPIC, OUTPUT_TOPIC, TIMEOUT_MS, Offline, PlainMessage
from worker.processing.processor import BatchResult, Processor
from worker.processing.stores import MemoryChangeStore, MemoryDedupe

positions = itertools.count()


def part_message(seed_event: Any, index: int, users: list[str], *, final: bool, group: str = "g-1") -> PlainMessage:
    event = seed_event(
        envelope={"id": f"part-{group}-{index}"},
        data={"id": group, "deleted": False, "affectedUsers": users, "fullyProcessed": final},
    )
    return PlainMessage(("in", 0, next(positions)), orjson.dumps(event))


def command_messages(result: BatchResult) -> list[PlainMessage]:
    return [
        PlainMessage((CONTROL_TOPIC, 0, next(positions)), o.value, o.headers, o.key)
        for o in result.outputs
        if o.topic == CONTROL_TOPIC
    ]


def users(results: list[BatchResult]) -> list[str]:
    return [orjson.loads(o.value)["user_id"] for r in results for o in r.outputs if o.topic == OUTPUT_TOPIC]


def test_a_timeout_is_a_command_and_only_its_partition_owner_emits_once_however_many_scans_sent_it(seed_event):
    """Defect 4: after a flush committed, a lost settle, an expired lease, a zombie or a skewed clock let a second
    worker emit the same users again. Now scans only send commands; the records come from processing a command
    (in a fenced transaction), and a second command for the same change finds it closed."""
    group = Offline()
    group.feed([part_message(seed_event, 1, ["ann", "bob"], final=False)], now_ms=0)
    assert group.processor.scan_timeouts(TIMEOUT_MS - 1).outputs == []  # not due yet by the time passed in
    scan_a = group.processor.scan_timeouts(TIMEOUT_MS)
    scan_b = group.processor.scan_timeouts(TIMEOUT_MS + 10**9)  # a clock far ahead, and A's settle never came
    assert [o.topic for o in scan_a.outputs + scan_b.outputs] == [CONTROL_TOPIC, CONTROL_TOPIC]
    assert all(o.topic == CONTROL_TOPIC for o in scan_a.outputs)  # a scan emits no record itself
    first = group.feed(command_messages(scan_a))
    second = group.feed(command_messages(scan_b))
    assert users(first) == ["ann", "bob"] and users(second) == []
    assert first[0].changes_closed["timed_out"] == 1 and second[0].changes_closed["timed_out"] == 0
    assert [orjson.loads(o.value)["complete"] for o in first[0].outputs] == [False, False]
    assert group.processor.open_changes() == 0


def test_a_retried_timeout_command_emits_the_same_records_again(seed_event):
    """Defect 7: the retry of a flush (its transaction aborted) used a new lease token, saw its own lease as
    another worker's and emitted nothing. The retry is the same command at the same position now."""
    group = Offline()
    group.feed([part_message(seed_event, 1, ["ann", "bob"], final=False)], now_ms=0)
    (command,) = command_messages(group.processor.scan_timeouts(TIMEOUT_MS))
    aborted = group.processor.process([command], TIMEOUT_MS)  # not settled: Kafka aborted it
    retried = group.processor.process([command], TIMEOUT_MS)
    assert retried.outputs == aborted.outputs and len(retried.outputs) == 2


def test_busy_changes_do_not_block_the_scan(seed_event):
    """Defect 7: the scan returned the same oldest 200 ids every time."""
    group = Offline()
    group.feed([part_message(seed_event, i, [f"u{i}"], final=False, group=f"g-{i:03}") for i in range(250)], now_ms=0)
    first = group.processor.scan_timeouts(TIMEOUT_MS)
    second = group.processor.scan_timeouts(TIMEOUT_MS)
    keys = [o.key for o in first.outputs] + [o.key for o in second.outputs]
    assert len(first.outputs) == 200 and len(set(keys)) == 250


def test_a_large_change_comes_out_in_bounded_transactions_each_user_once(seed_event):
    """Defect 8: the final part emitted every collected user in one batch."""
    group = Offline(chunk=1_000)
    everyone = [f"user-{i:05}" for i in range(10_500)]
    for i in range(0, len(everyone), 2_000):
        assert group.feed([part_message(seed_event, i, everyone[i : i + 2_000], final=False)])[0].outputs == []
    results = group.feed([part_message(seed_event, 99, [], final=True)])
    assert len(results) == 11 and all(len(r.outputs) <= 1_001 for r in results)
    assert users(results) == everyone
    assert [r.changes_closed["complete"] for r in results] == [1] + [0] * 10
    commands = [control.decode(o.value) for r in results for o in r.outputs if o.topic == CONTROL_TOPIC]
    assert [c.cursor for c in commands if c is not None] == list(range(1_000, 10_500, 1_000))


def test_a_control_message_that_is_not_a_command_is_counted_and_skipped_never_dead_lettered():
    group = Offline()
    (result,) = group.feed(
        [
            PlainMessage((CONTROL_TOPIC, 0, 1), b"{not json"),
            PlainMessage((CONTROL_TOPIC, 0, 2), b'{"command":"continue","change_id":"c","cursor":-1}'),
        ]
    )
    assert result.outputs == [] and result.dlq == {}
    assert result.events == {("control", "invalid"): 2}


@pytest.mark.parametrize(
    "command", [control.Command("c-1"), control.Command("c-1", 0), control.Command("c-1", 4_000)], ids=str
)
def test_commands_round_trip(command):
    assert control.decode(control.encode(command)) == command


def test_the_replica_wait_runs_after_the_writes_and_its_failure_fails_the_batch(seed_event):
    calls: list[str] = []

    def durable() -> None:
        calls.append("wait")
        raise redis.RedisError("0 of 1 replica(s) acknowledged")

    processor = Processor(
        MemoryDedupe(),
        MemoryChangeStore(1, 1),
        output_topic=OUTPUT_TOPIC,
        dlq_topic=DLQ_TOPIC,
        control_topic=CONTROL_TOPIC,
        durable=durable,
    )
    assert processor.process([PlainMessage(("in", 0, 1), b"{not json")], 0).dlq == {"not_json": 1}  # no writes
    with pytest.raises(redis.RedisError):
        processor.process([part_message(seed_event, 1, ["ann"], final=True)], 0)
    assert calls == ["wait"]
