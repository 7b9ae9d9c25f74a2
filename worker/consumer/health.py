"""HTTP endpoints for operators and orchestrators, on `WORKER_METRICS_PORT`:
`/metrics` (Prometheus), `/healthz` (liveness: the poll loop polled recently and is not stuck on one batch
for longer than `max.poll.interval.ms`: a restart then resolves what the process cannot), `/readyz` (Kafka and Redis
reachable, partitions assigned, and the loop not stuck retrying a batch).
The checks run in the server's thread with their own short-timeout clients, never inside the loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.consumer import metrics

Check = Callable[[], str | None]  # None when fine, else what is wrong


class Health:
    """State the loop reports; read by the HTTP thread."""

    def __init__(self, max_poll_interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_poll_interval_s = max_poll_interval_s
        self._clock = clock
        self.last_poll = clock()
        self.assigned = 0
        self.retrying: str | None = None  # why the current batch is waiting for a retry
        self.retrying_since: float | None = None  # when the current batch first failed

    def polled(self) -> None:
        self.last_poll = self._clock()

    def retry(self, reason: str) -> None:
        self.retrying = reason
        if self.retrying_since is None:
            self.retrying_since = self._clock()

    def retried(self) -> None:
        """The batch is committed or dropped."""
        self.retrying = self.retrying_since = None

    def alive(self) -> str | None:
        now = self._clock()
        idle = now - self.last_poll
        if idle >= self.max_poll_interval_s:
            return f"no poll for {idle:.0f}s"
        since = self.retrying_since
        if since is not None and now - since >= self.max_poll_interval_s:
            return f"retrying one batch for {now - since:.0f}s: {self.retrying}"
        return None

    def loop_ready(self) -> str | None:
        if self.retrying:
            return "retrying a batch: " + self.retrying
        return None if self.assigned else "no partitions assigned"


class ProbeServer:
    """`/metrics`, `/healthz` and `/readyz` on one port, served from a thread: the worker's (`HealthServer`) and
    the supervisor's of `WORKER_PROCESSES` (`worker/consumer/supervisor.py`). `alive` and `ready` return what is
    wrong (nothing: 200 `ok` / `ready`; else 503 with one problem per line); probes are not logged."""

    def __init__(
        self,
        port: int,
        *,
        metrics: Callable[[], bytes],
        alive: Callable[[], list[str]],
        ready: Callable[[], list[str]],
    ) -> None:
        self._server = ThreadingHTTPServer(("0.0.0.0", port), _handler(metrics, alive, ready))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(
    metrics: Callable[[], bytes], alive: Callable[[], list[str]], ready: Callable[[], list[str]]
) -> type[BaseHTTPRequestHandler]:
    probes = {"/healthz": (alive, "ok"), "/readyz": (ready, "ready")}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, metrics(), CONTENT_TYPE_LATEST)
            elif path in probes:
                problems, fine = probes[path]
                found = problems()
                self._reply(503 if found else 200, ("\n".join(found) if found else fine).encode() + b"\n")
            else:
                self._reply(404, b"not found\n")

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


class HealthServer(ProbeServer):
    """The worker's endpoints: liveness from `Health`, readiness from `Health` and the service `checks`."""

    def __init__(self, port: int, health: Health, checks: dict[str, Check]) -> None:
        self.health, self.checks = health, checks
        super().__init__(port, metrics=generate_latest, alive=self.liveness, ready=self.readiness)

    def liveness(self) -> list[str]:
        problem = self.health.alive()
        return [problem] if problem else []

    def readiness(self) -> list[str]:
        """What keeps the worker from being ready; the services are asked only when the loop is fine."""
        problems = [p for p in (self.health.alive(), self.health.loop_ready()) if p]
        if not problems:
            problems = [f"{name}: {p}" for name, check in self.checks.items() if (p := check())]
        metrics.READY.set(0 if problems else 1)
        return problems
