"""The Lua scripts in Redis follow the pure rules of worker/reassembly.py, for any sequence of parts,
replays, duplicates and timeout flushes (hypothesis, on a real Redis)."""

from __future__ import annotations

import itertools

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker import reassembly
from worker.changes import ChangeStore, Closed
from worker.reassembly import ChangeState, Emission, Part, TimeoutOutcome
from worker.records import ChangeInfo
from worker.redis_scripts import connect

pytestmark = pytest.mark.integration

USERS = st.lists(st.sampled_from("abcdefg"), min_size=0, max_size=4).map(tuple)
# An operation: ("part", tag index, users, final) or ("timeout", token index, clock step ms) or ("confirm", token).
PART = st.tuples(st.just("part"), st.integers(0, 4), USERS, st.booleans())
TIMEOUT = st.tuples(st.just("timeout"), st.integers(0, 2), st.integers(0, 2000))
CONFIRM = st.tuples(st.just("confirm"), st.integers(0, 2))
LEASE_MS = 1000
changes = itertools.count()


@pytest.fixture
def store(redis_service: object) -> ChangeStore:
    url = getattr(redis_service, "address", redis_service)
    assert isinstance(url, str)
    client = connect(url)
    client.flushdb()
    return ChangeStore(client, timeout_ms=60_000, ttl_seconds=600, lease_ms=LEASE_MS)


def info(change_id: str) -> ChangeInfo:
    return {
        "change_id": change_id,
        "tenant_id": "t",
        "group_id": "g",
        "group_name": "G",
        "change": "group_updated",
        "updates": [],
        "occurred_at": "2024-01-01T00:00:00.000Z",
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=PART, ops=st.lists(st.one_of(PART, PART, TIMEOUT, CONFIRM), max_size=12))
def test_lua_scripts_agree_with_the_pure_rules(store: ChangeStore, first: tuple, ops: list[tuple]) -> None:
    change_id = f"change-{next(changes)}"
    state = ChangeState()
    parts: dict[int, Part] = {}
    now = 1_000_000
    for op in [first, *ops]:
        if op[0] == "part":
            _, index, users, final = op
            part = parts.setdefault(index, Part(f"in:0:{index}", f"event-{index}", users, final))  # same tag, same part
            expected = reassembly.apply_part(state, part)
            got = store.apply_parts([(info(change_id), part)], now)[0]
            assert _emission(got) == expected
        elif op[0] == "timeout":
            _, token, step = op
            now += step
            expected_t = reassembly.apply_timeout(state, f"token-{token}", now, LEASE_MS)
            got_t = store.apply_timeouts([change_id], f"token-{token}", now)[0]
            assert (got_t.emission if isinstance(got_t, Closed) else got_t) == expected_t
        else:
            reassembly.confirm_timeout(state, f"token-{op[1]}")
            store.settle([], [(change_id, f"token-{op[1]}")])


def _emission(closed: Closed | None) -> Emission | None:
    return None if closed is None else closed.emission


def test_closed_changes_carry_their_stored_info_and_keys_expire(store: ChangeStore) -> None:
    part = Part("in:0:1", "e1", ("u",), True)
    (closed,) = store.apply_parts([(info("c-info"), part)], 0)
    assert closed is not None and closed.info == info("c-info")
    client = redis.Redis(connection_pool=store._client.connection_pool)
    keys = client.keys("gew:change:{c-info}:*")
    assert len(keys) == 3 and all(0 < client.ttl(k) <= 600 for k in keys)
    assert store.due(60_000, 10) == ["c-info"]
    store.settle(["c-info"], [])
    assert store.due(60_000, 10) == [] and store.open_changes() == 0


def test_timeout_of_an_unknown_change_is_done(store: ChangeStore) -> None:
    assert store.apply_timeouts(["never-seen"], "tok", 0) == [TimeoutOutcome.DONE]
