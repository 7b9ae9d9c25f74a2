"""The whole path on a real broker and Redis: input topic -> worker process -> output and DLQ topics."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest
from cloudevents.core.bindings.kafka import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from tests.integration.helpers import TENANT, Stack, binary, group_data, structured, users_modified_part, wait_for

pytestmark = pytest.mark.integration

CREATED, UPDATED, DELETED = (f"com.qlik.v1.group.{t}" for t in ("created", "updated", "deleted"))
USERS_MODIFIED = "com.qlik.v1.group.users.modified"


def sdk_message(
    event_id: str, event_type: str, data: dict[str, object], mode: str
) -> tuple[bytes, list[tuple[str, bytes]]]:
    attributes = {
        "type": event_type,
        "source": "com.qlik/identities",
        "id": event_id,
        "tenantid": TENANT,
        "userid": "user-admin",
        "datacontenttype": "application/json",
    }
    event = CloudEvent(attributes=attributes, data=data)
    message = (to_binary if mode == "binary" else to_structured)(event, JSONFormat())
    return message.value, [(k, v) for k, v in message.headers.items()]


def test_cloudevents_sdk_events_in_both_modes_become_records(stack: Stack) -> None:
    stack.create_topics(2)
    messages = []
    for mode in ("binary", "structured"):
        for event_type in (CREATED, UPDATED, DELETED):
            extra = {"updates": [{"path": "/name", "newValue": "B", "oldValue": "A"}]} if event_type == UPDATED else {}
            messages.append(sdk_message(f"{mode}-{event_type}", event_type, group_data(f"g-{mode}", **extra), mode))
        data = group_data(f"g-{mode}", deleted=True, affectedUsers=["u1", "u2"], fullyProcessed=True)
        messages.append(sdk_message(f"{mode}-um", USERS_MODIFIED, data, mode))
    stack.produce((0, None, value, headers) for value, headers in messages)
    stack.start_worker()

    records = stack.records(10)

    assert len(records) == 10  # 6 group changes + 2 changes x 2 users
    groups = [r for r in records if r["schema"] == "group_change/v1"]
    members = [r for r in records if r["schema"] == "membership_change/v1"]
    assert sorted((r["group_id"], r["change"]) for r in groups) == sorted(
        (f"g-{m}", c) for m in ("binary", "structured") for c in ("created", "updated", "deleted")
    )
    assert {r["updates"][0]["newValue"] for r in groups if r["change"] == "updated"} == {"B"}
    assert sorted((r["group_id"], r["user_id"]) for r in members) == [
        ("g-binary", "u1"),
        ("g-binary", "u2"),
        ("g-structured", "u1"),
        ("g-structured", "u2"),
    ]
    assert all(r["change"] == "group_deleted" and r["complete"] and not r["late"] for r in members)
    assert len({r["record_id"] for r in records}) == 10


def test_poison_goes_to_the_dlq_with_its_position_and_does_not_block(stack: Stack) -> None:
    stack.create_topics(1)
    good = structured("ok-1", CREATED, group_data("g1"))
    bad_data = structured("bad-data", CREATED, group_data("g2", status="archived"))
    not_cloudevent = orjson.dumps({"hello": "world"})
    stack.produce(
        [
            (0, b"k-junk", b"\x00\xffnot json", [("x-trace", b"abc")]),
            (0, None, not_cloudevent, []),
            (0, b"k-data", bad_data[0], bad_data[1]),
            (0, None, good[0], good[1]),
        ]
    )
    stack.start_worker()

    records = stack.records(1)
    dead = stack.read(stack.dlq_topic, lambda m: len(m) >= 3)

    assert [r["event_id"] for r in records] == ["ok-1"]
    assert len(dead) == 3
    by_reason = {dict(m.headers())["dlq.reason"]: m for m in dead}
    assert set(by_reason) == {b"not_json", b"invalid_cloudevent", b"invalid_data"}
    junk = by_reason[b"not_json"]
    assert junk.key() == b"k-junk" and junk.value() == b"\x00\xffnot json"
    headers = dict(junk.headers())
    assert headers["x-trace"] == b"abc"
    assert headers["dlq.source.topic"] == stack.input_topic.encode()
    assert (headers["dlq.source.partition"], headers["dlq.source.offset"]) == (b"0", b"0")
    assert b"status" in dict(by_reason[b"invalid_data"].headers())["dlq.detail"]
    assert dict(by_reason[b"invalid_data"].headers())["dlq.source.offset"] == b"2"


def test_duplicates_on_another_partition_are_dropped_and_counted(stack: Stack) -> None:
    stack.create_topics(2)
    events = [structured(f"dup-{i}", CREATED, group_data(f"g{i}")) for i in range(5)]
    stack.produce([(0, None, v, h) for v, h in events] + [(1, None, v, h) for v, h in events[:3]])
    worker = stack.start_worker()

    records = stack.records(5)

    assert sorted(r["event_id"] for r in records) == [f"dup-{i}" for i in range(5)]
    wait_for(lambda: worker.metric("worker_events_total", outcome="duplicate") == 3, 20, "duplicates counted")
    assert worker.metric("worker_events_total", outcome="processed") == 5


def test_change_split_over_two_partitions_and_two_workers_is_emitted_once_per_user(stack: Stack) -> None:
    stack.create_topics(2)
    first, second = stack.start_worker(0), stack.start_worker(1)
    wait_for(
        lambda: first.get("/readyz")[0] == 200 and second.get("/readyz")[0] == 200, 60, "both workers own a partition"
    )
    parts = [
        (0, users_modified_part("p1", "g-split", ["a", "b", "c"], final=False)),
        (1, users_modified_part("p2", "g-split", ["c", "d"], final=False)),
        (0, users_modified_part("p3", "g-split", ["e"], final=True)),
        (1, users_modified_part("p4", "g-split", ["a", "f"], final=False)),  # late
    ]
    stack.produce((partition, b"g-split", value, headers) for partition, (value, headers) in parts)

    records = stack.records(6)

    assert Counter(r["user_id"] for r in records) == dict.fromkeys("abcdef", 1)
    late = {r["user_id"] for r in records if r["late"]}
    # Partitions run in parallel: d (only in p2) and f (only in p4) are late exactly when p3 was applied first.
    assert late <= {"d", "f"}
    carriers = {"a": {"p1", "p4"}, "b": {"p1"}, "c": {"p1", "p2"}, "d": {"p2"}, "e": {"p3"}, "f": {"p4"}}
    assert all(r["event_id"] in carriers[r["user_id"]] for r in records)
    assert len({r["change_id"] for r in records}) == 1


def test_change_left_open_is_flushed_incomplete_after_the_batch_timeout(stack: Stack) -> None:
    stack.create_topics(1)
    value, headers = users_modified_part("open-1", "g-open", ["x", "y"], final=False)
    stack.produce([(0, None, value, headers)])
    worker = stack.start_worker(WORKER_BATCH_TIMEOUT_SECONDS="2", WORKER_TIMEOUT_SCAN_INTERVAL_SECONDS="0.5")

    records = stack.records(2)
    late_value, late_headers = users_modified_part("open-2", "g-open", ["y", "z"], final=True)
    stack.produce([(0, None, late_value, late_headers)])
    records = stack.records(3)

    assert sorted((r["user_id"], r["complete"], r["late"]) for r in records) == [
        ("x", False, False),
        ("y", False, False),
        ("z", False, True),
    ]
    wait_for(lambda: worker.metric("worker_changes_closed_total", outcome="timed_out") == 1, 20, "timeout counted")


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_sigkill_mid_stream_loses_nothing(stack: Stack, guarantee: str, broker_hides_aborted: bool) -> None:
    stack.create_topics(2)
    total = 20_000
    messages = []
    for i in range(total):
        value, headers = (structured if i % 2 else binary)(f"e{i}", CREATED, group_data(f"g{i}"))
        messages.append((i % 2, None, value, headers))
    stack.produce(messages)
    worker = stack.start_worker(WORKER_PROCESSING_GUARANTEE=guarantee, WORKER_BATCH_SIZE="50")
    wait_for(lambda: worker.metric("worker_records_emitted_total") >= 1000, 60, "some output")

    worker.kill()
    assert worker.metric("worker_records_emitted_total") == 0  # gone
    assert len(stack.read(stack.output_topic, lambda m: False, 0)) < total, "killed before the end of the input"
    stack.start_worker(WORKER_PROCESSING_GUARANTEE=guarantee, WORKER_BATCH_SIZE="50")
    records = stack.read(
        stack.output_topic, lambda m: len({orjson.loads(x.value())["event_id"] for x in m}) >= total, 90
    )

    ids = Counter(orjson.loads(m.value() or b"")["event_id"] for m in records)
    assert set(ids) == {f"e{i}" for i in range(total)}
    duplicates = sum(n - 1 for n in ids.values())
    if guarantee == "exactly_once" and broker_hides_aborted:
        assert duplicates == 0, "read_committed readers must see each record once"
    else:
        # Copies come only from the one batch in flight at the kill (at-least-once replays it; on a broker that
        # shows aborted transactions to read_committed readers, its aborted output shows too).
        assert duplicates <= 50


def test_sigterm_exits_0_with_offsets_committed(stack: Stack) -> None:
    stack.create_topics(2)
    sent = stack.produce((i % 2, None, *structured(f"t{i}", CREATED, group_data(f"g{i}"))) for i in range(200))
    worker = stack.start_worker()
    stack.records(sent)

    assert worker.terminate() == 0
    assert stack.committed(2) == [100, 100]
    assert '"event": "stopped"' in worker.log() and '"clean": true' in worker.log()


def test_health_endpoints(stack: Stack) -> None:
    stack.create_topics(1)
    worker = stack.start_worker()
    worker.wait_ready()

    assert worker.get("/healthz") == (200, "ok\n")
    assert worker.get("/readyz") == (200, "ready\n")
    assert worker.metric("worker_assigned_partitions") == 2  # the input partition and the control partition
    assert worker.metric("worker_ready") == 1
    build = [line for line in worker.get("/metrics")[1].splitlines() if line.startswith("worker_build_info{")]
    assert len(build) == 1 and 'version="' in build[0]
    assert worker.get("/nope")[0] == 404
