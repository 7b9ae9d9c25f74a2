"""UMS webhooks next to CloudEvents on one input topic, on a real broker and Redis: one stream of records,
duplicates dropped and bad webhooks dead-lettered as for CloudEvents, and the tenant group counts in Redis."""

from __future__ import annotations

import inspect
import itertools
import time
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import worker.consumer.loop
from tests.integration.helpers import TENANT, Stack, binary, group_data, structured, wait_for
from worker.processing.tenants import GroupCount
from worker.state.client import connect
from worker.state.tenants import TenantGroups, applied_key, groups_key, legacy_applied_key

pytestmark = pytest.mark.integration

CREATED, UPDATED, DELETED = (f"com.qlik.v1.group.{t}" for t in ("created", "updated", "deleted"))
Message = tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]
# Until worker/consumer/loop.py gives the Processor a TenantGroups store and the topic formats (WORKER_TOPIC_FORMATS
# in worker/config.py), the tests of those skip.
CONSUMER = inspect.getsource(worker.consumer.loop)


def webhook(event_id: str, action: str, group_id: str, tenant: str = TENANT, **data: Any) -> bytes:
    body = {
        "id": event_id,
        "version": "UserGroupUpdatedV1",
        "occurredAt": "2024-01-02T00:00:01.000Z",
        "tenantId": tenant,
        "tenantName": "tenant one",
        "data": {
            "id": f"data-{event_id}",
            "action": action,
            "tenant": "tenant one",
            "groupId": group_id,
            "name": f"Group {group_id}",
            "type": "Standard",
            "parentId": "",
            "externalId": "",
            "createdTime": "2024-01-01 00:00:00.000",
            "isDeleted": action == "Delete",
            "isDeactivated": False,
            "lastModifiedTime": "2024-01-02 00:00:00.500",
            "managerIds": ["m-1"],
            **data,
        },
        "application": "UserGroup",
        "productArea": "UMS",
    }
    return orjson.dumps(body)


def ums(partition: int, value: bytes) -> Message:
    return (partition, None, value, [("content-type", b"application/json")])


def cloud(partition: int, message: tuple[bytes, list[tuple[str, bytes]]]) -> Message:
    return (partition, None, message[0], message[1])


def test_ums_and_cloudevents_of_one_tenant_on_one_topic_make_one_stream(stack: Stack) -> None:
    stack.create_topics(2)
    stack.produce(
        [
            cloud(0, structured("ce-created-g1", CREATED, group_data("g1"))),
            ums(0, webhook("ums-create-g2", "Create", "g2")),
            ums(0, webhook("ums-update-g1", "Update", "g1", name="Group g1 renamed", parentId="g0")),
            ums(1, webhook("ums-create-g2", "Create", "g2")),  # a copy on another partition
            cloud(1, binary("ce-updated-g2", UPDATED, group_data("g2", updates=[{"path": "/name"}]))),
            (1, b"k-poison", webhook("ums-bad-action", "Explode", "g3"), []),
            (1, None, orjson.dumps({"id": "ums-no-tenant", "application": "UserGroup", "data": {}}), []),
            ums(0, webhook("ums-delete-g1", "Delete", "g1")),
        ]
    )
    worker = stack.start_worker()

    records = stack.records(5)
    dead = stack.read(stack.dlq_topic, lambda m: len(m) >= 2)

    assert len(records) == 5
    assert {r["schema"] for r in records} == {"group_change/v1"}
    assert len({frozenset(r) for r in records}) == 1, "one shape for both formats"
    assert {r["tenant_id"] for r in records} == {TENANT}
    assert len({r["record_id"] for r in records}) == 5
    source = {r["event_id"]: r["source_system"] for r in records}
    assert source == {
        "ce-created-g1": "qlik-cloud",
        "ums-create-g2": "ums",
        "ums-update-g1": "ums",
        "ce-updated-g2": "qlik-cloud",
        "ums-delete-g1": "ums",
    }
    g1 = [r for r in records if r["group_id"] == "g1"]  # one key, one output partition: input order kept
    assert [(r["change"], r["group_name"]) for r in g1] == [
        ("created", "Group g1"),
        ("updated", "Group g1 renamed"),
        ("deleted", "Group g1"),
    ]
    renamed = g1[1]
    assert (renamed["parent_group_id"], renamed["external_id"], renamed["manager_ids"]) == ("g0", None, ["m-1"])
    assert renamed["occurred_at"] == "2024-01-02T00:00:00.500Z"
    assert (g1[0]["parent_group_id"], g1[0]["manager_ids"]) == (None, [])

    assert len(dead) == 2
    by_reason = {dict(m.headers())["dlq.reason"]: dict(m.headers()) for m in dead}
    assert set(by_reason) == {b"invalid_ums_data", b"invalid_ums_envelope"}
    assert by_reason[b"invalid_ums_data"]["dlq.detail"].startswith(b"data.action: Value error, unknown action")
    assert by_reason[b"invalid_ums_envelope"]["dlq.detail"].startswith(b"occurredAt: Field required")
    poison = next(m for m in dead if m.key() == b"k-poison")
    assert poison.value() == webhook("ums-bad-action", "Explode", "g3")

    wait_for(lambda: worker.metric("worker_dlq_messages_total") == 2, 20, "DLQ counted")
    assert worker.metric("worker_events_total", type="UserGroup", outcome="duplicate") == 1
    assert worker.metric("worker_events_total", type="UserGroup", outcome="processed") == 3
    assert worker.metric("worker_events_total", type="UserGroup", outcome="invalid") == 2
    assert worker.metric("worker_dlq_messages_total", reason="invalid_ums_data") == 1


def test_tenant_group_counts_from_both_formats_survive_duplicates_and_replays(stack: Stack) -> None:
    stack.create_topics(2)
    messages = [
        cloud(0, structured("c1", CREATED, group_data("g1"))),
        cloud(1, structured("c2", CREATED, group_data("g2"))),
        ums(0, webhook("u1", "Create", "g3")),
        ums(1, webhook("u2", "Create", "g1")),  # g1 again, from the other source: counted once
        ums(0, webhook("u3", "Update", "g3")),  # not a creation or deletion: no change
        ums(1, webhook("u4", "Delete", "g2")),
        cloud(0, structured("c3", DELETED, group_data("g404"))),  # never seen created: nothing to remove
        ums(1, webhook("u5", "Create", "g9", tenant="tenant-2")),
    ]
    stack.produce([*messages, *messages[:4]])  # the first four again: duplicates at other positions
    first = stack.start_worker()
    stack.records(8)
    client = connect(stack.redis_url)

    assert client.smembers(groups_key(TENANT)) == {b"g1", b"g3"}
    assert client.smembers(groups_key("tenant-2")) == {b"g9"}
    assert 0 < client.ttl(groups_key(TENANT)) <= 30 * 86_400
    wait_for(lambda: first.metric("worker_tenant_groups", tenant=TENANT) == 2, 20, "tenant gauge")
    assert first.metric("worker_tenant_groups", tenant="tenant-2") == 1
    assert first.metric("worker_tenant_group_limit_exceeded_total") == 0
    assert first.terminate() == 0

    # A replay at the same positions (a new consumer group reads the topic again): the claims are its own,
    # so the events are processed again, and the sets do not change.
    replay = stack.start_worker(1, WORKER_GROUP_ID=stack.group_id + "-replay")
    stack.records(16)
    wait_for(lambda: replay.metric("worker_events_total", outcome="processed") == 8, 30, "replay processed")
    assert client.smembers(groups_key(TENANT)) == {b"g1", b"g3"}
    assert client.smembers(groups_key("tenant-2")) == {b"g9"}


def test_a_topic_set_to_ums_reads_only_ums(stack: Stack) -> None:
    stack.create_topics(1)
    stack.produce(
        [
            cloud(0, structured("ce-1", CREATED, group_data("g1"))),  # a CloudEvent on a UMS topic
            ums(0, webhook("u-1", "Create", "g2")),
            (0, None, webhook("u-2", "Create", "g3"), [("ce_id", b"copied")]),  # its headers are not looked at
        ]
    )
    stack.start_worker(WORKER_TOPIC_FORMATS=f"{stack.input_topic}=ums")

    records = stack.records(2)
    dead = stack.read(stack.dlq_topic, lambda m: len(m) >= 1)

    assert sorted(r["event_id"] for r in records) == ["u-1", "u-2"]
    assert [dict(m.headers())["dlq.reason"] for m in dead] == [b"invalid_ums_envelope"]
    assert dict(dead[0].headers())["dlq.detail"].startswith(b"application: Field required")


# ---- the Lua script against its rules ----------------------------------------------------------------------

APPLIED_TTL_S = 600
OPS = st.lists(st.tuples(st.sampled_from(["t1", "t2"]), st.sampled_from("abcd"), st.booleans()), max_size=12)
batches = itertools.count()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches_of_ops=st.lists(OPS, min_size=1, max_size=4))
def test_tenant_groups_script_is_a_set_per_tenant_and_idempotent(stack: Stack, batches_of_ops: list[Any]) -> None:
    client = connect(stack.redis_url)
    prefix = f"h{next(batches)}-"
    store = TenantGroups(client, ttl_seconds=600, applied_ttl_seconds=600)
    model: dict[str, set[str]] = {}
    for b, ops in enumerate(batches_of_ops):
        changes = [GroupCount(prefix + t, g, created, "e", f"in:{b}:{i}") for i, (t, g, created) in enumerate(ops)]
        expected = []
        for change in changes:
            groups = model.setdefault(change.tenant_id, set())
            (groups.add if change.created else groups.discard)(change.group_id)
            expected.append(len(groups))
        assert store.apply(changes) == expected
        store.apply(changes)  # the same batch replayed: nothing changes
        for tenant, groups in model.items():
            assert {m.decode() for m in client.smembers(groups_key(tenant))} == groups
            ttl = client.ttl(groups_key(tenant))
            assert ttl == -2 if not groups else 598 <= ttl <= 600  # an empty set is gone
    assert store.apply([]) == []


def test_counts_of_a_batch_are_per_tenant_in_event_order(stack: Stack) -> None:
    store = TenantGroups(connect(stack.redis_url), applied_ttl_seconds=APPLIED_TTL_S)
    ops = [("a", "1", True), ("b", "1", True), ("a", "2", True), ("a", "1", False)]
    changes = [GroupCount(t, g, c, "e", f"in:0:{i}") for i, (t, g, c) in enumerate(ops)]
    assert store.apply(changes) == [1, 1, 2, 1]


def test_a_creation_applied_again_after_the_deletion_changes_nothing(stack: Stack) -> None:
    """Issue 19, the tag rule for the tenant sets: a zombie's run of a committed group creation, after the
    group's deletion committed, re-added the group for good (the count stayed one too high)."""
    store = TenantGroups(connect(stack.redis_url), applied_ttl_seconds=APPLIED_TTL_S)
    created, deleted = GroupCount("z", "g", True, "e1", "in:0:1"), GroupCount("z", "g", False, "e2", "in:0:2")
    assert store.apply([created]) == [1]
    assert store.apply([deleted]) == [0]
    assert store.apply([created]) == [1]  # what it returned the first time
    assert store.apply([GroupCount("z", "h", True, "e3", "in:0:3")]) == [1]  # g was not re-added


def test_an_active_tenant_keeps_the_results_of_the_replay_window_only(stack: Stack) -> None:
    """Noticed in issue 22: the result of every creation and deletion was a field of one hash per tenant whose TTL
    restarted at every change, so a tenant with a change at least every 30 days kept all of them, for good.
    Each is now a key of its own that expires after the replay window, whatever the tenant does next."""
    client = connect(stack.redis_url)
    store = TenantGroups(client, applied_ttl_seconds=1)
    assert store.apply([GroupCount("w", "g1", True, "e1", "in:0:1")]) == [1]
    time.sleep(1.5)  # the first position's window passes, the tenant stays active
    assert store.apply([GroupCount("w", "g2", True, "e2", "in:0:2")]) == [2]
    assert positions_kept(client, "w") == {"in:0:2"}
    assert 0 < client.ttl(applied_key("w", "in:0:2")) <= 1


def positions_kept(client: Any, tenant: str) -> set[str]:
    """The positions whose result the tenant's keys hold, in either layout (a hash field, or a key each)."""
    kept: set[str] = set()
    for key in client.scan_iter(match="gew:tenant:{" + tenant + "}:applied*"):
        if client.type(key) == b"hash":
            kept |= {field.decode() for field in client.hkeys(key)}
        else:
            kept.add(key.decode().removeprefix(applied_key(tenant, "")))
    return kept


def test_a_position_applied_by_the_legacy_layout_is_not_applied_again(stack: Stack) -> None:
    """Across the upgrade: a creation whose result only the legacy hash holds (written by a worker of before),
    replayed after the group's deletion, gives its recorded size and does not re-add the group; the legacy hash
    is read but not kept alive."""
    client = connect(stack.redis_url)
    client.sadd(groups_key("u"), "g0")
    client.hset(legacy_applied_key("u"), "in:0:1", 2)  # g created at in:0:1 when the set held g0 and g
    client.expire(legacy_applied_key("u"), 100)
    store = TenantGroups(client, applied_ttl_seconds=APPLIED_TTL_S)
    assert store.apply([GroupCount("u", "g", True, "e1", "in:0:1")]) == [2]  # the replay: the size it gave
    assert client.smembers(groups_key("u")) == {b"g0"}  # g, deleted since, was not re-added
    assert client.ttl(legacy_applied_key("u")) <= 100
