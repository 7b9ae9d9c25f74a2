"""Redis connection and Lua scripts run in batches: many script calls, one round trip.

redis-py's own `Script` objects re-check the script cache with an extra round trip on every pipeline
execution; here a batch is sent with EVALSHA and only a NOSCRIPT reply (new or restarted Redis) loads the
script and re-sends the calls that failed. Every script is idempotent for a replayed call, so that is safe.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

import redis
from redis.exceptions import NoScriptError

Arg = str | int | float | bytes
Call = tuple[Sequence[str], Sequence[Arg]]  # (keys, args)
Command = tuple[Arg, ...]


def connect(url: str, timeout: float = 5) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=10, decode_responses=False
    )


class LuaScript:
    def __init__(self, client: redis.Redis, name: str) -> None:
        self._client = client
        self._source = (files("worker") / "lua" / f"{name}.lua").read_bytes()
        self._sha = hashlib.sha1(self._source).hexdigest()

    def run(self, calls: Sequence[Call], also: Sequence[Command] = ()) -> list[Any]:
        """Run the script once per call, pipelined after the plain commands `also` (sent in the same round
        trip, replies dropped); script results in call order. Raises RedisError on failure."""
        if not calls:
            return []
        results = self._send(calls, also)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            self._client.script_load(self._source)
            for i, result in zip(missing, self._send([calls[i] for i in missing]), strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    def _send(self, calls: Sequence[Call], also: Sequence[Command] = ()) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for command in also:
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        for keys, args in calls:
            pipe.evalsha(self._sha, len(keys), *keys, *args)
        replies = pipe.execute(raise_on_error=False)
        for reply in replies[: len(also)]:
            if isinstance(reply, Exception):
                raise reply
        return replies[len(also) :]
