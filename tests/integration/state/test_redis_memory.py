"""Redis memory on real redis-servers (issue 19, defect 3): a full Redis under `noeviction` refuses a batch's
writes and its retry, once there is room, emits everything once; Redis state that is gone is a named Redis
error (retried like an outage), never a TypeError out of the processing; the memory per dedupe claim and per
user of an open change stays what the README's sizing says (`bench/redis_memory.py` measures it)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bench.redis_memory import measure
from tests.integration.helpers import structured, users_modified_part
from tests.integration.state.redis_cluster import redis_server
from tests.support.change_model import change_info
from worker.config import Settings
from worker.consumer.app import redis_processor
from worker.local.stack import Service
from worker.processing.control import Command
from worker.processing.offline import Offline, PlainMessage
from worker.processing.processor import BatchResult, Processor
from worker.processing.reassembly import Part
from worker.state.changes import RedisChangeStore, change_keys
from worker.state.client import StateMissing, connect, redis_client

pytestmark = pytest.mark.integration
CONTROL = "control"
positions = itertools.count()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Service]:
    """A Redis of its own: these tests change its maxmemory."""
    service = redis_server(tmp_path, "--maxmemory-policy", "noeviction")
    yield service
    service.stop()


def message(value: bytes, headers: list[tuple[str, bytes]]) -> PlainMessage:
    return PlainMessage(("in", 0, next(positions)), value, headers)


def batch() -> list[PlainMessage]:
    """Group events, a change in three parts (the final one last), a single-part change and a copy."""
    group = structured("created-1", "com.qlik.v1.group.created", _group("g-1"))
    parts = [users_modified_part(f"part-{i}", "g-2", [f"u{i}-{j}" for j in range(3)], final=i == 2) for i in range(3)]
    single = users_modified_part("single", "g-3", ["ann", "bob"], final=True)
    out = [message(*group), *(message(v, list(h)) for v, h in parts), message(single[0], list(single[1]))]
    return [*out, PlainMessage(("in", 1, 7), out[0].data, out[0].header_list)]  # a copy on another partition


def _group(group_id: str) -> dict[str, object]:
    return {
        "id": group_id,
        "name": f"Group {group_id}",
        "status": "active",
        "tenantId": "tenant-1",
        "createdAt": "2024-01-01T00:00:00Z",
        "lastUpdatedAt": "2024-01-02T00:00:00Z",
    }


def records(processor: Processor | Offline, messages: list[PlainMessage]) -> list[bytes | None]:
    """The records of `messages` and of the commands they send, in order."""
    results: list[BatchResult] = (
        processor.feed(messages, 0) if isinstance(processor, Offline) else [processor.process(messages, 0)]
    )
    if isinstance(processor, Processor):
        while commands := [
            PlainMessage((CONTROL, 0, next(positions)), o.value, o.headers, o.key)
            for o in results[-1].outputs
            if o.topic == CONTROL
        ]:
            results.append(processor.process(commands, 0))
    return [o.value for r in results for o in r.outputs if o.topic not in (CONTROL, "group-events-worker.control")]


def test_a_full_redis_refuses_the_whole_batch_and_its_retry_emits_everything_once(server: Service) -> None:
    settings = Settings(redis_url=server.address, control_topic=CONTROL)
    client = redis_client(settings)
    processor = redis_processor(settings, client)
    messages = batch()
    expected = records(Offline(), messages)
    assert len(expected) == 1 + 9 + 2  # the copy is a duplicate
    before = client.dbsize()
    client.config_set("maxmemory", 1)  # full: every write is refused (OOM), reads and deletes still work
    with pytest.raises(redis.exceptions.OutOfMemoryError):  # a Redis error: the loop backs off and retries
        processor.process(messages, 0)
    assert client.dbsize() == before  # nothing of the batch was written: no half-applied script
    client.config_set("maxmemory", 0)  # room again: the loop's retry of the same batch
    assert records(processor, messages) == expected


def test_state_that_is_gone_is_a_named_redis_error_not_a_type_error(server: Service) -> None:
    """An evicted or deleted `…:users` hash made the close raise TypeError (or ValueError) out of
    Processor.process, which ended the loop; now it is `StateMissing`, a Redis error naming the key."""
    client = connect(server.address)
    store = RedisChangeStore(client, timeout_ms=1_000, ttl_seconds=600, resend_ms=500, chunk=2)
    change = change_info("c")
    store.apply_parts([(change, Part("in:0:1", "e1", ("a", "b", "c"), False))], 0)
    users, order, meta, _applied, _legacy = change_keys("c")
    client.delete(users)
    with pytest.raises(StateMissing, match=f"STATE_MISSING {users}"):
        store.apply_parts([(change, Part("in:0:2", "e2", (), True))], 0)
    client.delete(*change_keys("c"))
    store.apply_parts([(change, Part("in:0:3", "e3", ("a", "b", "c"), True))], 0)
    client.delete(order)
    with pytest.raises(StateMissing, match=f"STATE_MISSING {order}"):
        store.apply_commands([(Command("c", 2), "ctl:0:1")])
    client.hdel(meta, "info")
    with pytest.raises(StateMissing, match=f"STATE_MISSING {meta}"):
        store.apply_parts([(change, Part("in:0:3", "e3", ("a", "b", "c"), True))], 0)  # its replay
    with pytest.raises(StateMissing, match=f"STATE_MISSING {meta}"):
        store.apply_parts([(change, Part("in:0:4", "e4", ("d",), True))], 0)  # not taken for a new change
    assert isinstance(StateMissing("x"), redis.RedisError)  # the loop retries it like an outage


def test_memory_per_claim_and_per_user_is_what_the_readme_sizing_says(server: Service) -> None:
    """README, Redis sizing: about 200 bytes per event's dedupe claims, 175 per user of an open change, 1.5 kB per
    open change, 190 per emission's recency verdict, 240 per group's newest occurrence, 330 per group creation
    or deletion's tenant count (measured 197, 174, 1,478, 140, 238 and 329 on Redis 7.0 with 200,000 of each;
    with 20,000, as here, 203, 195, 1,010, 188, 201 and 167: the hash tables' growth steps move them)."""
    client = connect(server.address)
    assert isinstance(client, redis.Redis)
    sizes = measure(client, claims=20_000, users=20_000, changes=2_000, emissions=20_000)
    assert 150 <= sizes.claim <= 220
    assert 130 <= sizes.user <= 200
    assert sizes.change <= 1_700
    assert 60 <= sizes.verdict <= 250
    assert 60 <= sizes.group <= 300
    assert 60 <= sizes.applied <= 400
