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

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker import metrics

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


class HealthServer:
    def __init__(self, port: int, health: Health, checks: dict[str, Check]) -> None:
        self.health, self.checks = health, checks
        self._server = ThreadingHTTPServer(("0.0.0.0", port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def readiness(self) -> list[str]:
        """What keeps the worker from being ready; the services are asked only when the loop is fine."""
        problems = [p for p in (self.health.alive(), self.health.loop_ready()) if p]
        if not problems:
            problems = [f"{name}: {p}" for name, check in self.checks.items() if (p := check())]
        metrics.READY.set(0 if problems else 1)
        return problems

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    problem = server.health.alive()
                    self._send(503 if problem else 200, (problem or "ok").encode() + b"\n")
                elif path == "/readyz":
                    problems = server.readiness()
                    body = ("\n".join(problems) if problems else "ready") + "\n"
                    self._send(503 if problems else 200, body.encode())
                else:
                    self._send(404, b"not found\n")

            def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # probes are not news
                pass

        return Handler
