"""Each group's recency in Redis: `worker.processing.stores.RecencyStore` (the rules are in
`worker/processing/recency.py`, applied by `worker/state/lua/recency.lua`).

Key layout, one hash tag per group (a digest of tenant and group id: the ids may hold any character, and two
groups must never share a tag by how their ids are cut), so every script call touches one Redis Cluster slot:
- `gew:group:{<digest>}:newest`            the newest occurrence emitted, as `occurrence_text` gives it. TTL
  `NEWEST_TTL_SECONDS` (30 days), restarted at every call for the group: longer than Qlik resends old
  deliveries (7 days) and the dedupe window, so a late copy still finds what it is older than. A group
  without any event for that long starts over (its next event is taken as the newest).
- `gew:group:{<digest>}:verdict:<tag>`     the verdict ("0"/"1") the emission of message `tag` got, so that
  tag gets it again whenever it runs again. A key per emission, so each expires on its own: TTL `step_ttl`
  (the change keys' `batch_timeout + dedupe_ttl`: a position is never replayed later than that).
- `gew:group:{<digest>}:change:<change_id>` the latest part time seen of a change: TTL `step_ttl`, restarted at
  every part, as the change's own keys.
One call per group per batch, all of a batch's calls in one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from worker.processing.recency import Emitted, GroupKey, Occurrence, Step, time_text
from worker.processing.records import digest
from worker.state.client import Arg, Call, Client, LuaScript, in_batch_order, indexes_by

NEWEST_TTL_SECONDS: Final = 30 * 86_400


def group_prefix(group: GroupKey) -> str:
    """What every key of the group starts with (the digest is computed once per group and batch)."""
    return "gew:group:{" + digest(*group) + "}:"


def newest_key(prefix: str) -> str:
    return prefix + "newest"


def verdict_key(prefix: str, tag: str) -> str:
    return prefix + "verdict:" + tag


def change_time_key(prefix: str, change_id: str) -> str:
    return prefix + "change:" + change_id


def occurrence_text(occurrence: Occurrence) -> str:
    """`<time>:<0|1>`: as text, occurrences order as the rule orders them (worker/state/lua/recency.lua)."""
    return time_text(occurrence.time) + (":1" if occurrence.deleted else ":0")


class RedisRecency:
    """`worker.processing.stores.RecencyStore` in Redis."""

    def __init__(self, client: Client, *, step_ttl_seconds: int, newest_ttl_seconds: int = NEWEST_TTL_SECONDS) -> None:
        self._script = LuaScript(client, "recency")
        self._step_ttl, self._newest_ttl = step_ttl_seconds, newest_ttl_seconds

    def apply(self, steps: Sequence[Step]) -> list[bool]:
        """In one round trip (none without steps): one script call per group, its steps in order."""
        by_group = indexes_by([step.group for step in steps])
        calls: list[Call] = []
        for group, indexes in by_group.items():
            prefix = group_prefix(group)
            keys: list[str] = [newest_key(prefix)]
            args: list[Arg] = [self._newest_ttl, self._step_ttl]
            for step in (steps[i] for i in indexes):
                if not isinstance(step, Emitted):
                    keys.append(change_time_key(prefix, step.change_id))
                    args += ["seen", time_text(step.time)]
                elif step.change_id is None:
                    keys.append(verdict_key(prefix, step.tag))
                    args += ["emitted", occurrence_text(step.occurrence)]
                else:
                    keys += [verdict_key(prefix, step.tag), change_time_key(prefix, step.change_id)]
                    args += ["change", occurrence_text(step.occurrence)]
            calls.append((keys, args))
        return [verdict == 1 for verdict in in_batch_order(by_group, self._script.run(calls), len(steps))]
