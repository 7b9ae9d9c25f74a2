"""Commands on the control topic: the worker group's own work items, carried out like input.

A timeout scan (any worker) does not flush a change itself: it sends a *timeout command* keyed by the change id
to the control topic, which the group consumes next to the input topics. The owner of the command's partition
closes the change in the transaction that commits the command's offset, tagged with the command's position like
any input: a replay recognises its own tag, and group generation fencing covers a zombie. A close (by a final
part or a timeout command) emits at most one chunk of users and, when more remain, sends a *continue command*
with the cursor of the next chunk in the same transaction. A copy of a command finds the change closed or the
cursor moved on and does nothing.

The value is a small JSON object, never validated as a Qlik event and never dead-lettered:
`{"command": "timeout", "change_id": "<id>"}` or `{"command": "continue", "change_id": "<id>", "cursor": N}`.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class Command:
    change_id: str
    cursor: int | None = None  # None: close on timeout; else continue the close's emission from this user index


def encode(command: Command) -> bytes:
    if command.cursor is None:
        return orjson.dumps({"command": "timeout", "change_id": command.change_id})
    return orjson.dumps({"command": "continue", "change_id": command.change_id, "cursor": command.cursor})


def decode(value: bytes | None) -> Command | None:
    """The command in a control message, or None if it is not one (logged and skipped by the caller)."""
    try:
        fields = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(fields, dict) or not isinstance(change_id := fields.get("change_id"), str) or not change_id:
        return None
    kind, cursor = fields.get("command"), fields.get("cursor")
    if kind == "timeout":
        return Command(change_id)
    if kind == "continue" and isinstance(cursor, int) and not isinstance(cursor, bool) and cursor >= 0:
        return Command(change_id, cursor)
    return None
