"""The Redis recency store (worker/state/lua/recency.lua) gives the verdicts of the pure rule
(worker/processing/recency.py, in memory) for any sequence of emissions, part times, replayed tags and groups,
split into batches any way (hypothesis, on a real Redis; issue 20, item 4); and what only Redis can show: every
call's keys share one hash tag, the TTLs, and the processor on Redis stores giving a replayed position its first
verdicts after newer events."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from worker.config import Settings
from worker.consumer.app import redis_processor
from worker.processing.offline import PlainMessage
from worker.processing.recency import Emitted, Occurrence, Seen, Step
from worker.processing.stores import MemoryRecency
from worker.state.recency import (
    NEWEST_TTL_SECONDS,
    RedisRecency,
    change_time_key,
    group_prefix,
    newest_key,
    verdict_key,
)

pytestmark = pytest.mark.integration

STEP_TTL = 600
runs = itertools.count()
# Times near year 2024 in microseconds, a few apart, so ties and order both happen.
BASE = (datetime(2024, 5, 14, tzinfo=UTC) - datetime(1, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
TIMES = st.integers(0, 4).map(lambda offset: BASE + offset)
GROUPS = st.sampled_from([("t", "g-1"), ("t", "g-2"), ("t:x", "y")])


def steps_of(run: int) -> st.SearchStrategy[list[Step]]:
    tags = st.sampled_from([f"in:{run}:{i}" for i in range(6)])
    changes = st.sampled_from([f"c-{run}-1", f"c-{run}-2"])
    occurrences = st.builds(Occurrence, TIMES, st.booleans())
    return st.lists(
        st.one_of(
            st.builds(Emitted, GROUPS, tags, occurrences),
            st.builds(Emitted, GROUPS, tags, occurrences, changes),
            st.builds(Seen, GROUPS, changes, TIMES),
        ),
        max_size=24,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), cuts=st.lists(st.integers(0, 24), max_size=4))
def test_the_redis_store_agrees_with_the_pure_rule(client: redis.Redis, data: st.DataObject, cuts: list[int]) -> None:
    """Each run uses tags and changes of its own, so the runs' verdicts never meet in the shared Redis; the
    groups are shared across steps of one run, as one tag always belongs to one group in the worker."""
    run = next(runs)
    steps = data.draw(steps_of(run))
    group_of: dict[str, tuple[str, str]] = {}
    steps = [s for s in steps if not isinstance(s, Emitted) or group_of.setdefault(s.tag, s.group) == s.group]
    redis_store, memory = RedisRecency(client, step_ttl_seconds=STEP_TTL), MemoryRecency()
    client.delete(*{newest_key(group_prefix(step.group)) for step in steps} or {"none"})
    bounds = sorted({0, len(steps), *(min(cut, len(steps)) for cut in cuts)})
    for start, stop in itertools.pairwise(bounds):
        batch = steps[start:stop]
        assert redis_store.apply(batch) == memory.apply(batch), batch


def test_every_call_touches_one_hash_tag_and_its_keys_expire(client: redis.Redis) -> None:
    store = RedisRecency(client, step_ttl_seconds=STEP_TTL)
    group = ("tenant}{odd", "group:with{braces}")
    steps: list[Step] = [
        Seen(group, "change-1", BASE),
        Emitted(group, "in:0:1", Occurrence(BASE, False)),
        Emitted(group, "ctl:0:2", Occurrence(BASE, False), "change-1"),
    ]
    assert store.apply(steps) == [False, False, False]
    prefix = group_prefix(group)
    steps_keys = [change_time_key(prefix, "change-1"), verdict_key(prefix, "in:0:1"), verdict_key(prefix, "ctl:0:2")]
    assert sorted(k.decode() for k in client.keys(prefix.replace("{", "[{]").replace("}", "[}]") + "*")) == sorted(
        [newest_key(prefix), *steps_keys]
    )
    assert len({key_slot(key.encode()) for key in [newest_key(prefix), *steps_keys]}) == 1
    assert NEWEST_TTL_SECONDS - 5 < client.ttl(newest_key(prefix)) <= NEWEST_TTL_SECONDS
    assert all(0 < client.ttl(key) <= STEP_TTL for key in steps_keys)
    assert client.get(verdict_key(prefix, "in:0:1")) == b"0"


def test_the_processor_on_redis_gives_a_replayed_position_its_first_verdicts(
    client: redis.Redis, redis_service: object, seed_event_bytes: bytes
) -> None:
    """A zombie (or a retry) runs an old position after a newer event of the group was emitted: the same
    records as the first run, not superseded, as docs/guarantees.md's rule 2 asks of every tagged write."""
    url = getattr(redis_service, "address", redis_service)
    processor = redis_processor(Settings(redis_url=str(url)), client)

    def event(event_id: str, time: str) -> PlainMessage:
        """An update at `time`, which is also its lastUpdatedAt (Qlik stamps each change with its own)."""
        raw = orjson.loads(seed_event_bytes)
        raw.update(id=event_id, time=time)
        raw["data"]["lastUpdatedAt"] = time
        return PlainMessage(("in", 0, int(event_id)), orjson.dumps(raw), [("content-type", b"application/json")])

    old = event("1", "2024-05-14T12:00:01Z")
    first = processor.process([old], 0)
    newer = processor.process([event("2", "2024-05-14T12:00:09Z")], 0)
    late = processor.process([event("3", "2024-05-14T12:00:05Z")], 0)  # an older change at another position
    copy = processor.process([event("4", "2024-05-14T12:00:01Z")], 0)  # the old change again, under another id
    replay = processor.process([old], 0)
    verdicts = [orjson.loads(r.outputs[0].value)["superseded"] for r in (first, newer, late, replay)]
    assert verdicts == [False, False, True, False]
    assert replay.outputs == first.outputs
    assert copy.outputs == []  # the same change by its content: a duplicate


@pytest.fixture(scope="module")
def seed_event_bytes() -> bytes:
    from worker.local.samples import seed_example

    return seed_example("group-updated")
