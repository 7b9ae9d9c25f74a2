"""The Redis change store (worker/state/lua/change.lua, due.lua) gives the same answers as the in-memory store on the
pure rules of worker/processing/reassembly.py, for any sequence of parts, replays, duplicates, timeout and continue
commands, scans and settles (hypothesis, on a real Redis); and what only Redis can show: TTLs, nothing written
for unknown changes, a scan that moves on (defect 7), bounded script work for a large change (defect 8)."""

from __future__ import annotations

import itertools

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.change_model import CHUNKS, FINALS, PARTS_USERS, STEPS, play
from tests.support.change_model import change_info as info
from worker.processing.control import Command
from worker.processing.reassembly import Part
from worker.processing.stores import MemoryChangeStore
from worker.state.changes import DEADLINES, RedisChangeStore, change_keys

pytestmark = pytest.mark.integration

USERS = st.lists(st.sampled_from("abcdefg"), min_size=0, max_size=4).map(tuple)
CHUNK, TIMEOUT_MS, RESEND_MS = 2, 1_000, 500
# ("part", position, users, final) | ("timeout", position) | ("continue", position, cursor) | ("scan", ms) | ("settle",)
PART = st.tuples(st.just("part"), st.integers(0, 4), USERS, st.booleans())
TIMEOUT = st.tuples(st.just("timeout"), st.integers(0, 3))
CONTINUE = st.tuples(st.just("continue"), st.integers(0, 3), st.integers(0, 6))
SCAN = st.tuples(st.just("scan"), st.integers(0, 1_500))
SETTLE = st.tuples(st.just("settle"))
changes = itertools.count()


def store(client: redis.Redis, chunk: int = CHUNK) -> RedisChangeStore:
    return RedisChangeStore(client, timeout_ms=TIMEOUT_MS, ttl_seconds=600, resend_ms=RESEND_MS, chunk=chunk)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(PART, PART, TIMEOUT, CONTINUE, CONTINUE, SCAN, SETTLE), max_size=16))
def test_the_redis_store_agrees_with_the_in_memory_one(client: redis.Redis, ops: list[tuple]) -> None:
    change_id = f"change-{next(changes)}"
    redis_store, memory = store(client), MemoryChangeStore(TIMEOUT_MS, RESEND_MS, CHUNK)
    parts: dict[int, Part] = {}
    now = 1_000_000
    for op in ops:
        if op[0] == "part":
            _, index, users, final = op
            part = parts.setdefault(index, Part(f"in:0:{index}", f"event-{index}", users, final))  # same tag, same part
            item = [(info(change_id), part)]
            assert redis_store.apply_parts(item, now) == memory.apply_parts(item, now)
        elif op[0] in ("timeout", "continue"):
            command = [(Command(change_id, None if op[0] == "timeout" else op[2]), f"ctl:0:{op[1]}")]
            assert redis_store.apply_commands(command) == memory.apply_commands(command)
        elif op[0] == "scan":
            now += op[1]
            assert redis_store.due(now, 10) == memory.due(now, 10)
        else:
            redis_store.settle([change_id])
            memory.settle([change_id])
        assert redis_store.open_changes() == memory.open_changes()
    redis_store.settle([change_id])


def dump(client: redis.Redis, change_id: str) -> list[object]:
    users, order, meta, applied, _legacy = change_keys(change_id)
    hashes = [client.hgetall(key) for key in (users, meta, applied)]
    return [client.lrange(order, 0, -1), *hashes]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(users=st.lists(st.sampled_from("abcdefg"), max_size=8).map(tuple), chunk=st.integers(1, 4))
def test_a_change_closed_by_its_first_part_is_stored_as_the_general_path_stores_it(
    client: redis.Redis, users: tuple[str, ...], chunk: int
) -> None:
    """change.lua's short path (a change seen first in its final part) against its general one, reached by an
    empty part first, which writes nothing but the change info and its own tag: the same emission and the same
    state."""
    fast, general = f"fast-{next(changes)}", f"general-{next(changes)}"
    s = store(client, chunk)
    final = Part("in:0:1", "e1", users, True)
    (short,) = s.apply_parts([(info(fast), final)], 0)
    assert s.apply_parts([(info(general), Part("in:0:0", "e0", (), False))], 0) == [None]
    (long,) = s.apply_parts([(info(general), final)], 0)
    assert short is not None and long is not None
    assert short.emission == long.emission and short.info == info(fast) and long.info == info(general)
    fast_state, general_state = dump(client, fast), dump(client, general)
    fast_meta, general_meta = fast_state[2], general_state[2]  # order, users, meta, applied
    general_applied = general_state[3]
    assert isinstance(general_applied, dict) and general_applied.pop(b"in:0:0") == b""
    assert isinstance(fast_meta, dict) and isinstance(general_meta, dict)
    assert fast_meta.pop(b"info") == orjson.dumps(info(fast)) and general_meta.pop(b"info") == orjson.dumps(
        info(general)
    )
    assert fast_state == general_state


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunk=CHUNKS, users=PARTS_USERS, final=FINALS, steps=STEPS)
def test_every_user_is_committed_once_whatever_zombies_do_on_the_lua_scripts(
    client: redis.Redis, chunk: int, users: list[list[str]], final: int | None, steps: list[tuple[str, int, bool]]
) -> None:
    """Issue 19, defects 2 and 4, on change.lua: the worker-group model of tests/support/change_model.py (aborts,
    replays, copies, commands and zombies re-running committed positions at any moment) commits every user of
    the change exactly once, and no emission is larger than a chunk."""
    play(store(client, chunk), f"model-{next(changes)}", chunk, users, final, steps)


def test_change_keys_share_one_hash_tag_and_expire(client: redis.Redis) -> None:
    s = store(client)
    (closed,) = s.apply_parts([(info("c-info"), Part("in:0:1", "e1", ("u", "v", "w"), True))], 0)
    assert closed is not None and closed.info == info("c-info") and closed.emission.next_cursor == 2
    keys = sorted(k.decode() for k in client.keys("gew:change:{c-info}:*"))
    assert keys == sorted(change_keys("c-info")[:4]) and all(0 < client.ttl(k) <= 600 for k in keys)  # not chunks
    assert client.ttl(DEADLINES) > 0
    s.settle(["c-info"])
    assert s.open_changes() == 0


def test_a_command_for_an_unknown_change_emits_nothing_and_writes_only_its_tag(client: redis.Redis) -> None:
    """Its tag is recorded (issue 19, the tag rule): run again after parts arrived, it must still do nothing."""
    s = store(client)
    assert s.apply_commands([(Command("never-seen"), "ctl:0:1"), (Command("never-seen", 4), "ctl:0:2")]) == [None, None]
    applied = change_keys("never-seen")[3]
    assert client.keys("gew:change:*") == [applied.encode()] and 0 < client.ttl(applied) <= 600
    assert s.apply_parts([(info("never-seen"), Part("in:0:1", "e1", ("u",), False))], 0) == [None]
    assert s.apply_commands([(Command("never-seen"), "ctl:0:1")]) == [None]


def test_a_scan_moves_on_from_the_changes_it_took(client: redis.Redis) -> None:
    """Defect 7: `due()` returned the same oldest 200 ids on every scan, so 200 changes another worker was busy
    with blocked every other change. A scan now moves the deadlines it takes ahead."""
    s = store(client)
    s.apply_parts([(info(f"c-{i:03}"), Part(f"in:0:{i}", f"e{i}", ("u",), False)) for i in range(250)], 0)
    first = s.due(TIMEOUT_MS, 200)
    second = s.due(TIMEOUT_MS, 200)
    assert len(first) == 200 and len(second) == 50 and not set(first) & set(second)
    assert s.due(TIMEOUT_MS + RESEND_MS - 1, 200) == []
    assert sorted(s.due(TIMEOUT_MS + RESEND_MS, 500)) == sorted(first + second)  # not closed: sent again


def test_a_large_change_is_emitted_in_bounded_chunks_each_user_once(client: redis.Redis) -> None:
    """Defect 8: the final part emitted every collected user in one script reply. Now each call emits one chunk
    and the cursor of the next; Redis does no call longer than a part plus a chunk."""
    users = [f"user-{i:05}" for i in range(20_000)]
    s = store(client, chunk=3_000)
    parts = [
        (info("big"), Part(f"in:0:{i}", f"e{i}", tuple(users[i * 1000 : (i + 1) * 1000]), False)) for i in range(20)
    ]
    assert s.apply_parts(parts, 0) == [None] * 20
    (closed,) = s.apply_parts([(info("big"), Part("in:0:20", "e20", (), True))], 0)
    emitted, steps, position = [], 0, itertools.count(1)
    while closed is not None:
        assert len(closed.emission.users) <= 3_000
        emitted += [user for user, _ in closed.emission.users]
        steps += 1
        cursor = closed.emission.next_cursor
        if cursor is None:
            break
        (closed,) = s.apply_commands([(Command("big", cursor), f"ctl:0:{next(position)}")])
    assert emitted == users and steps == 7
    slow = client.slowlog_get(128)
    assert all(entry["duration"] < 1_000_000 for entry in slow)  # no call near a second


def test_a_tag_applied_again_writes_nothing(client: redis.Redis) -> None:
    """The tag rule in Redis: after a close, run every earlier message again (a zombie): the same replies, and
    not one byte of the change's state changes."""
    s = store(client)
    parts = [
        (info("again"), Part(f"in:0:{i}", f"e{i}", tuple(f"u{i}-{j}" for j in range(3)), i == 2)) for i in range(4)
    ]
    commands = [(Command("again", 2), "ctl:0:1"), (Command("again"), "ctl:0:2"), (Command("again", 4), "ctl:0:3")]
    first = [s.apply_parts([p], 0) for p in parts[:3]] + [s.apply_commands([c]) for c in commands]
    first.append(s.apply_parts([parts[3]], 0))  # a late part
    before = dump(client, "again")
    again = [s.apply_parts([p], 0) for p in parts[:3]] + [s.apply_commands([c]) for c in commands]
    again.append(s.apply_parts([parts[3]], 0))
    assert again == first and dump(client, "again") == before


def test_late_parts_are_emitted_in_chunks(client: redis.Redis) -> None:
    """Issue 19, defect 4, in Redis: after a timeout, late parts of 2,500 new users each (a restart's first batch
    can hold tens of them) emit at most one chunk each; the chain brings the rest, each user once."""
    s = store(client, chunk=2_000)
    s.apply_parts([(info("late"), Part("in:0:0", "e0", ("first",), False))], 0)
    (closed,) = s.apply_commands([(Command("late"), "ctl:0:0")])
    assert closed is not None and [u for u, _ in closed.emission.users] == ["first"]
    late = [
        (info("late"), Part(f"in:0:{i}", f"e{i}", tuple(f"user-{i}-{j}" for j in range(2_500)), False))
        for i in range(1, 9)
    ]
    results = s.apply_parts(late, 0)
    emitted = [u for r in results if r is not None for u, _ in r.emission.users]
    assert max(len(r.emission.users) for r in results if r is not None) <= 2_000
    cursors = [r.emission.next_cursor for r in results if r is not None and r.emission.next_cursor is not None]
    position = itertools.count(1)
    while cursors:
        (step,) = s.apply_commands([(Command("late", cursors.pop()), f"ctl:0:{next(position)}")])
        assert step is not None and len(step.emission.users) <= 2_000 and step.emission.late
        emitted += [u for u, _ in step.emission.users]
        cursors += [step.emission.next_cursor] if step.emission.next_cursor is not None else []
    assert sorted(emitted) == sorted(u for _, p in late for u in p.users)


def test_a_change_closed_by_a_worker_of_the_previous_layout_goes_on(client: redis.Redis) -> None:
    """An upgrade over a change closed mid-chain by a worker before issue 19 (meta `end`, no `late_from`, ranges in
    `chunks`): the replay of a chunk that worker began emits its range, and the chain goes on from `next`
    instead of failing on missing state or skipping the chunk."""
    users, order, meta, _applied, chunks = change_keys("old")
    client.hset(users, mapping={u: "e1" for u in "abcdef"})
    client.rpush(order, *"abcdef")
    client.hset(meta, mapping={"info": orjson.dumps(info("old")), "final": "in:0:1", "end": 6, "next": 4})
    client.hset(chunks, mapping={"in:0:1": "0:2", "ctl:0:1": "2:4"})  # the close, and a continue in flight
    (replayed,) = store(client).apply_commands([(Command("old", 2), "ctl:0:1")])  # its replay after the upgrade
    assert replayed is not None and [u for u, _ in replayed.emission.users] == ["c", "d"]
    assert replayed.emission.next_cursor == 4
    (step,) = store(client).apply_commands([(Command("old", 4), "ctl:0:2")])
    assert step is not None and [u for u, _ in step.emission.users] == ["e", "f"] and not step.emission.late
