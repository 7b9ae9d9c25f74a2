"""The ingest's record of when it last accepted an event, per tenant, for the webhook watch: where events
stopped coming is where a gap starts (`worker/upstream/gaps.py`).

The request path only writes the time into a dict (`accepted`: no I/O, no lock: one assignment); a thread writes
the dict to Redis once a second (`worker.state.upstream.record_accepted`, one `ZADD GT` for all tenants), so a
request never waits for Redis and Redis being down never fails a request: the times are kept and written at the
next try, and a warning is logged at most once a minute. At most `MAX_TENANTS` tenants are tracked (a signed
sender names the tenant in the body): the ones beyond are not recorded, and logged.
"""

from __future__ import annotations

import threading
import time

import redis
import structlog

from worker.state.client import Client
from worker.state.upstream import record_accepted

log = structlog.get_logger("worker.ingest.accepted")

FLUSH_SECONDS = 1.0
WARN_EVERY_SECONDS = 60.0
MAX_TENANTS = 1000


class AcceptedTimes:
    def __init__(self, client: Client, flush_seconds: float = FLUSH_SECONDS) -> None:
        self._client, self._flush_seconds = client, flush_seconds
        self._pending: dict[str, int] = {}
        self._known: set[str] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_at = -WARN_EVERY_SECONDS

    def accepted(self, tenant: str | None) -> None:
        """An event of `tenant` was stored (the event loop calls this after a 202)."""
        if tenant is None:
            return
        if tenant not in self._known:
            if len(self._known) >= MAX_TENANTS:
                return
            self._known.add(tenant)
        self._pending[tenant] = int(time.time() * 1000)

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="ingest-accepted", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        try:
            record_accepted(self._client, pending)
        except redis.RedisError as error:
            for tenant, at in pending.items():  # keep them for the next try, unless a newer time came meanwhile
                self._pending[tenant] = max(at, self._pending.get(tenant, 0))
            if time.monotonic() - self._warned_at >= WARN_EVERY_SECONDS:
                self._warned_at = time.monotonic()
                log.warning("ingest_accepted_times_not_recorded", error=str(error)[:200], tenants=len(pending))

    def _run(self) -> None:
        while not self._stopping.wait(self._flush_seconds):
            self.flush()
