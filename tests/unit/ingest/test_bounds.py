"""worker.ingest.bounds through one endpoint's ASGI app, driven message by message (issue 20, items 2 and 7, and
the event not kept while waiting): a body that stops arriving gets 408 within the deadline; slow bodies in every
read slot do not keep a signed request out (the oldest read is ended); requests over the Kafka waiting bound get
503; a client gone mid-body is a 499, not an application error; the parsed event is not kept while the request
waits for Kafka. The same bounds over real sockets, on the ingest process:
tests/integration/ingest/test_slow_clients.py."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable
from typing import Any

import orjson
import structlog.testing

from worker.ingest import metrics
from worker.ingest.bounds import Bounds
from worker.ingest.producer import Delivered
from worker.ingest.rules import RefusalLog
from worker.ingest.secrets import SecretsSource, sign
from worker.ingest.server import WEBHOOK_PATH, CountRequests, Endpoint, Webhook

SECRET = "bounds-secret-bounds-secret-bounds-secret"
BODY = orjson.dumps({"specversion": "1.0", "id": "e-1", "tenantid": "t", "data": {"id": "g", "tenantId": "t"}})


class FakePublisher:
    """Acknowledges at once, or holds every record until `ack` (`hold`)."""

    topic = "topic"

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.sent: list[bytes] = []
        self.pending: list[asyncio.Future[Delivered]] = []

    def send(self, value: bytes, key: bytes | None, headers: Any) -> asyncio.Future[Delivered]:
        future: asyncio.Future[Delivered] = asyncio.get_running_loop().create_future()
        self.sent.append(value)
        if self.hold:
            self.pending.append(future)
        else:
            future.set_result(Delivered(self.topic, 0, len(self.sent) - 1))
        return future

    def ack(self) -> None:
        for offset, future in enumerate(self.pending):
            future.set_result(Delivered(self.topic, 0, offset))


class Client:
    """One request: its body is handed over chunk by chunk; what the app sends is kept."""

    def __init__(self, body: bytes | None = BODY, secret: str | None = SECRET) -> None:
        headers = [(b"content-type", b"application/json")]
        if secret is not None and body is not None:
            headers.append((b"qlik-signature", sign(body, secret).encode()))
        self.scope = {
            "type": "http",
            "method": "POST",
            "path": WEBHOOK_PATH,
            "headers": headers,
            "client": ("10.0.0.9", 4711),
        }
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def chunk(self, data: bytes, more: bool) -> None:
        self.incoming.put_nowait({"type": "http.request", "body": data, "more_body": more})

    def disconnect(self) -> None:
        self.incoming.put_nowait({"type": "http.disconnect"})

    @property
    def status(self) -> int | None:
        return next((m["status"] for m in self.sent if m["type"] == "http.response.start"), None)

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(next(m["headers"] for m in self.sent if m["type"] == "http.response.start"))


def webhook(
    publisher: FakePublisher, read_timeout: float = 10, max_reads: int = 64, max_waiting: int = 1000
) -> Webhook:
    endpoint = Endpoint(
        WEBHOOK_PATH, "qlik-signature", SecretsSource([(None, SECRET)]), ums=False, max_body_bytes=10_000
    )
    return Webhook(endpoint, publisher, Bounds(read_timeout, max_reads, max_waiting), RefusalLog())  # type: ignore[arg-type]


def run(coroutine: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 10))  # type: ignore[arg-type]


def test_a_body_that_stops_arriving_gets_408_within_the_deadline() -> None:
    async def scenario() -> None:
        app, client = webhook(FakePublisher(), read_timeout=0.2), Client()
        client.chunk(BODY[:10], more=True)  # and nothing more
        started = time.monotonic()
        await app(client.scope, client.receive, client.send)
        assert client.status == 408 and client.headers[b"connection"] == b"close"
        assert time.monotonic() - started < 1.0

    run(scenario())


def test_slow_bodies_in_every_read_slot_do_not_keep_a_signed_request_out() -> None:
    async def scenario() -> None:
        publisher = FakePublisher()
        app = webhook(publisher, read_timeout=30, max_reads=4)
        slow = [Client() for _ in range(4)]
        tasks = []
        for client in slow:
            client.chunk(BODY[:10], more=True)
            tasks.append(asyncio.create_task(app(client.scope, client.receive, client.send)))
            await asyncio.sleep(0.01)  # each read begins before the next: the first is the oldest
        evicted = metrics.READS_EVICTED._value.get()
        fast = Client()
        fast.chunk(BODY, more=False)
        await app(fast.scope, fast.receive, fast.send)
        assert fast.status == 202 and publisher.sent == [BODY]
        await asyncio.wait_for(tasks[0], 1)  # ended now, not after the 30 s deadline
        assert slow[0].status == 408 and metrics.READS_EVICTED._value.get() == evicted + 1
        assert all(client.status is None for client in slow[1:]), "only the oldest read gave its slot"
        for task in tasks[1:]:
            task.cancel()

    run(scenario())


def test_requests_over_the_kafka_waiting_bound_get_503_with_retry_after() -> None:
    async def scenario() -> None:
        publisher = FakePublisher(hold=True)
        app = webhook(publisher, max_waiting=2)
        waiting = [Client(), Client()]
        tasks = []
        for client in waiting:
            client.chunk(BODY, more=False)
            tasks.append(asyncio.create_task(app(client.scope, client.receive, client.send)))
        await asyncio.sleep(0.05)
        refused = Client()
        refused.chunk(BODY, more=False)
        await app(refused.scope, refused.receive, refused.send)
        assert refused.status == 503 and refused.headers[b"retry-after"] == b"5"
        publisher.ack()
        await asyncio.gather(*tasks)
        assert [client.status for client in waiting] == [202, 202] and len(publisher.sent) == 2

    run(scenario())


def test_a_client_gone_mid_body_is_counted_as_499_and_is_no_error() -> None:
    async def scenario() -> None:
        app, client = CountRequests(webhook(FakePublisher())), Client()
        before = metrics.REQUESTS.labels(WEBHOOK_PATH, "499")._value.get()
        client.chunk(BODY[:10], more=True)
        client.disconnect()
        with structlog.testing.capture_logs() as logged:
            await app(client.scope, client.receive, client.send)
        assert client.sent == []
        assert metrics.REQUESTS.labels(WEBHOOK_PATH, "499")._value.get() == before + 1
        assert [entry["log_level"] for entry in logged] == ["info"] and logged[0]["status"] == 499

    run(scenario())


def test_the_parsed_event_is_not_kept_while_the_request_waits_for_kafka() -> None:
    marker = "a-value-only-this-request-has"
    body = orjson.dumps({"specversion": "1.0", "id": "e-9", "tenantid": "t", "data": {"id": "g", "name": marker}})

    def parsed_events() -> int:
        """Events alive: the outer dict is tracked by the collector (it holds a dict), the inner one may not be."""
        return sum(1 for o in gc.get_objects() if isinstance(o, dict) and o.get("id") == "e-9" and "data" in o)

    async def scenario() -> None:
        publisher = FakePublisher(hold=True)
        app, client = webhook(publisher), Client(body)
        client.chunk(body, more=False)
        task = asyncio.create_task(app(client.scope, client.receive, client.send))
        await asyncio.sleep(0.05)
        assert publisher.pending and not task.done()
        gc.collect()
        assert parsed_events() == 0
        publisher.ack()
        await task
        assert client.status == 202

    run(scenario())


def test_refusal_lines_are_sampled_and_name_the_client() -> None:
    async def scenario() -> None:
        app = webhook(FakePublisher())
        with structlog.testing.capture_logs() as logged:
            for _ in range(50):
                client = Client(secret="wrong-secret-wrong-secret-wrong-secret")
                client.chunk(BODY, more=False)
                await app(client.scope, client.receive, client.send)
                assert client.status == 401
        lines = [entry for entry in logged if entry["event"] == "webhook"]
        assert 1 <= len(lines) <= 11, "a burst of ten, then one per second"
        assert lines[0]["client"] == "10.0.0.9" and lines[0]["suppressed"] == 0

    run(scenario())
