"""The Redis key layout (`worker/state/`): every Lua script call names keys of one hash tag, so on Redis Cluster
each call runs on one node (a script over keys of several slots fails with CROSSSLOT)."""

from __future__ import annotations

from redis.crc import key_slot

from worker.state.changes import DEADLINES, change_keys
from worker.state.tenants import applied_key, groups_key, legacy_applied_key


def test_the_keys_of_one_change_share_its_hash_tag_and_one_slot() -> None:
    keys = change_keys("c-1")
    assert all(key.startswith("gew:change:{c-1}:") for key in keys)
    assert len({key_slot(key.encode()) for key in keys}) == 1
    assert DEADLINES not in keys  # touched alone, never in a change's script call


def test_a_tenant_group_set_has_the_tenant_as_hash_tag() -> None:
    keys = [groups_key("t-1"), legacy_applied_key("t-1"), applied_key("t-1", "in:0:7")]  # one script call's keys
    assert keys == ["gew:tenant:{t-1}:groups", "gew:tenant:{t-1}:applied", "gew:tenant:{t-1}:applied:in:0:7"]
    assert len({key_slot(key.encode()) for key in keys}) == 1
