"""The open-change store in Redis: reassembly state of `users.modified` changes, shared by all workers.

Key layout (one hash tag per change, so every script call touches one Redis Cluster slot):
- `gew:change:{<change_id>}:users`   hash user -> event id of the part that carried it
- `gew:change:{<change_id>}:order`   list of the users in arrival order: the chunks index it
- `gew:change:{<change_id>}:meta`    hash: info (record fields, JSON), final or timed_out (the closing tag),
  late_from (users collected at the close; the ones after arrived late), next (where the next chunk starts)
- `gew:change:{<change_id>}:applied` hash tag -> what the first application of that message emitted:
  "start:stop:more" (its chunk of the order list; more: "1" when the chain goes on after it) or "" (nothing).
  A tag found here is never applied again: its replay, or a zombie's run of it, returns the same and writes
  nothing (the tag rule of `worker/processing/reassembly.py`). One field per part or command of the change.
- `gew:deadlines`                    sorted set change_id -> when to send its timeout command (ms). Only
  single-key commands and `worker/state/lua/due.lua` touch it, never together with change keys, so on Redis Cluster
  it is one slot like any other key. Added next to the part calls in the same pipeline (ZADD NX keeps the
  first deadline); a scan moves the deadlines it takes `resend_ms` ahead (the next scan gets the next ones,
  and a command that was lost is sent again then); removed once a close is durable in Kafka (or when a
  timeout command finds its change closed already). A deadline is only a reminder: a zombie's run of a part
  may add one back for a closed change, whose timeout command then emits nothing.
All change keys expire `batch_timeout + dedupe_ttl` after their last touch, so abandoned state goes away.
The rules are in `worker/processing/reassembly.py`; `worker/state/lua/change.lua` implements them atomically.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from worker.processing import control
from worker.processing.reassembly import CHUNK_USERS, Emission, Part
from worker.processing.records import ChangeInfo
from worker.processing.stores import Closed
from worker.state.client import Arg, Call, Client, Command, LuaScript, StateMissing

DEADLINES = "gew:deadlines"


def change_keys(change_id: str) -> list[str]:
    """The keys of a change that change.lua reads and writes; the last, `chunks`, is the previous layout's
    record of each closing or continue message's range, only read (a replay after an upgrade emits the range
    a worker before issue 19 began) and expiring with the change."""
    prefix = "gew:change:{" + change_id + "}:"
    return [prefix + "users", prefix + "order", prefix + "meta", prefix + "applied", prefix + "chunks"]


class RedisChangeStore:
    """`worker.processing.stores.ChangeStore` in Redis."""

    def __init__(
        self, client: Client, *, timeout_ms: int, ttl_seconds: int, resend_ms: int, chunk: int = CHUNK_USERS
    ) -> None:
        self._client = client
        self._change = LuaScript(client, "change")
        self._due = LuaScript(client, "due")
        self._timeout_ms, self._ttl, self._resend_ms, self._chunk = timeout_ms, ttl_seconds, resend_ms, chunk

    def apply_parts(self, parts: Sequence[tuple[ChangeInfo, Part]], now_ms: int) -> list[Closed | None]:
        if not parts:
            return []
        deadline = now_ms + self._timeout_ms
        deadlines: list[Command] = [("ZADD", DEADLINES, "NX", deadline, info["change_id"]) for info, _ in parts]
        deadlines.append(("EXPIRE", DEADLINES, self._ttl))  # emptied as changes close; the TTL is a backstop
        calls: list[Call] = [
            (
                change_keys(info["change_id"]),
                [
                    "part",
                    part.tag,
                    self._ttl,
                    self._chunk,
                    part.event_id,
                    "1" if part.final else "0",
                    orjson.dumps(info),
                    *part.users,
                ],
            )
            for info, part in parts
        ]
        return [_closed(reply) for reply in self._change.run(calls, also=deadlines)]

    def apply_commands(self, commands: Sequence[tuple[control.Command, str]]) -> list[Closed | None]:
        calls: list[Call] = []
        for command, tag in commands:
            args: list[Arg] = ["timeout" if command.cursor is None else "continue", tag, self._ttl, self._chunk]
            if command.cursor is not None:
                args.append(command.cursor)
            calls.append((change_keys(command.change_id), args))
        return [_closed(reply) for reply in self._change.run(calls)]

    def due(self, now_ms: int, limit: int) -> list[str]:
        (members,) = self._due.run([([DEADLINES], [now_ms, limit, now_ms + self._resend_ms])])
        return [m.decode() for m in members]

    def settle(self, closed_ids: Sequence[str]) -> None:
        if closed_ids:
            self._client.zrem(DEADLINES, *closed_ids)

    def open_changes(self) -> int:
        return int(self._client.zcard(DEADLINES))


def _closed(reply: Sequence[bytes | int]) -> Closed | None:
    if not reply:
        return None
    late, complete, cursor, info, *flat = reply
    if not isinstance(info, bytes):  # change.lua checks it; a reply of another script version might not
        raise StateMissing(f"change.lua replied an emission without the change info: {reply[:4]!r}")
    texts = iter([bytes.decode(value) for value in flat])  # type: ignore[arg-type]  # raw replies: bytes
    users = tuple(zip(texts, texts, strict=True))  # (user, event id) pairs
    next_cursor = None if cursor == -1 else int(cursor)
    emission = Emission(users, complete=complete == 1, late=late == 1, next_cursor=next_cursor)
    return Closed(orjson.loads(bytes(info)), emission)
