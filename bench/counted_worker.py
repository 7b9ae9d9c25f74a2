"""`python -m bench.counted_worker run` is `python -m worker run` plus one counter: Redis round trips.

Every request redis-py sends (a single command, a whole pipeline, a health-check PING, the connection
handshake) goes through one `send_packed_command` call and is answered before the client sends the next, so
counting those calls counts round trips. The count is served as `bench_redis_round_trips_total` on the
worker's own `/metrics` (the default Prometheus registry). The worker module itself is run unchanged.
"""

from __future__ import annotations

import runpy
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter
from redis.connection import AbstractConnection

ROUND_TRIPS = Counter("bench_redis_round_trips", "Requests sent to Redis (one per command or pipeline)")


def _install() -> None:
    original: Callable[..., Any] = AbstractConnection.send_packed_command

    def counted(self: AbstractConnection, *args: Any, **kwargs: Any) -> Any:
        ROUND_TRIPS.inc()
        return original(self, *args, **kwargs)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]


if __name__ == "__main__":
    _install()
    runpy.run_module("worker", run_name="__main__", alter_sys=True)
