"""Dedupe claims on a real Redis: first sight owns, a replay at the claiming position owns again, a copy at
any other position (in the same batch or a later one) is a duplicate, claims expire with their TTL, and the
in-memory store (worker/processing/stores.py) answers the same for any batches (hypothesis)."""

from __future__ import annotations

import itertools
import time

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.helpers import binary, group_data
from worker.processing.decode import decode
from worker.processing.models import Event
from worker.processing.stores import MemoryDedupe
from worker.state.client import connect
from worker.state.dedupe import Deduper, dedupe_key

pytestmark = pytest.mark.integration
ids = itertools.count()


@pytest.fixture
def client(redis_service: object) -> redis.Redis:
    url = getattr(redis_service, "address", redis_service)
    assert isinstance(url, str)
    return connect(url)


def event(event_id: str, event_type: str = "com.qlik.v1.group.created", group: str | None = None) -> Event:
    """A group event; its group is named after the event unless given (events of one group and type are the
    same change: one content key)."""
    value, headers = binary(event_id, event_type, group_data(group or event_id))
    decoded = decode(value, headers)
    assert isinstance(decoded, Event)
    return decoded


def redis_major(client: redis.Redis) -> int:
    return int(str(client.info("server")["redis_version"]).split(".")[0])


# None: as the worker runs it (asks the server); False: the Redis 6 form, which every version takes;
# True: SET NX GET, Redis 7+ only.
FORMS = [None, False, True]


@pytest.mark.parametrize("set_get", FORMS)
def test_first_sight_owns_replays_own_again_and_copies_elsewhere_are_duplicates(
    client: redis.Redis, set_get: bool | None
) -> None:
    if set_get and redis_major(client) < 7:
        pytest.skip("SET NX GET needs Redis 7")
    deduper = Deduper(client, ttl_seconds=60, set_get=set_get)
    a, b = event(f"dd-{next(ids)}"), event(f"dd-{next(ids)}")
    same_id_other_type = event(a.envelope.id, "com.qlik.v1.group.deleted", group=a.envelope.id)

    # one batch: a, a copy of a at another position, b, and a's id under another type (its own key)
    assert deduper.claim([(a, "in:0:1"), (a, "in:1:7"), (b, "in:0:2"), (same_id_other_type, "in:0:3")]) == [
        True,
        False,
        True,
        True,
    ]
    # a crash replays the first batch's positions: still theirs; a later copy is not
    assert deduper.claim([(a, "in:0:1"), (b, "in:0:2")]) == [True, True]
    assert deduper.claim([(b, "in:1:9"), (a, "in:1:7")]) == [False, False]
    assert client.get(dedupe_key(a)) == b"in:0:1"
    assert 0 < client.ttl(dedupe_key(a)) <= 60


@pytest.mark.parametrize("set_get", FORMS)
def test_the_same_change_under_another_id_is_a_duplicate(client: redis.Redis, set_get: bool | None) -> None:
    if set_get and redis_major(client) < 7:
        pytest.skip("SET NX GET needs Redis 7")
    deduper = Deduper(client, ttl_seconds=60, set_get=set_get)
    group = f"dc-{next(ids)}"
    delivered, backfilled = event(f"{group}-webhook", group=group), event(f"{group}-audit", group=group)
    assert deduper.claim([(delivered, "in:0:1")]) == [True]
    assert deduper.claim([(backfilled, "in:1:4"), (delivered, "in:0:1")]) == [False, True]
    assert deduper.claim([(backfilled, "in:1:4")]) == [False]  # its replay too: the content is not its own


@pytest.mark.parametrize("set_get", [None, False])
def test_an_expired_claim_is_claimed_anew(client: redis.Redis, set_get: bool | None) -> None:
    deduper = Deduper(client, ttl_seconds=1, set_get=set_get)
    a = event(f"dd-{next(ids)}")
    assert deduper.claim([(a, "in:0:1")]) == [True]
    time.sleep(1.2)  # not a timing assertion: a TTL of 1 s has passed, Redis must have dropped the key
    assert deduper.claim([(a, "in:0:5")]) == [True]
    assert deduper.claim([]) == []


def test_the_worker_uses_set_nx_get_where_redis_has_it(client: redis.Redis) -> None:
    deduper = Deduper(client, ttl_seconds=60)
    deduper.claim([(event(f"dd-{next(ids)}"), "in:0:1")])
    assert deduper._set_get is (redis_major(client) >= 7)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(
        st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1), st.integers(0, 3)), max_size=6), max_size=4
    ),
    set_get=st.sampled_from([False, None]),
)
def test_the_in_memory_store_agrees_with_redis(
    client: redis.Redis, batches: list[list[tuple[int, int, int]]], set_get: bool | None
) -> None:
    run = next(ids)
    types = ("com.qlik.v1.group.created", "com.qlik.v1.group.deleted")
    # two groups, so some events are the same change under other ids (their content keys meet)
    events = {(i, t): event(f"dm-{run}-{i}", types[t], f"dm-{run}-g{i % 2}") for i in range(4) for t in range(2)}
    redis_store, memory = Deduper(client, ttl_seconds=60, set_get=set_get), MemoryDedupe()
    for batch in batches:  # (event, type, position): the same position twice is a replay
        claims = [(events[i, t], f"in:0:{position}") for i, t, position in batch]
        assert redis_store.claim(claims) == memory.claim(claims)
