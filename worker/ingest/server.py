"""`python -m worker ingest`: the HTTP endpoint Qlik Cloud delivers its webhooks to. It checks a request's
signature, size, content type and that the body is a JSON object, then produces the body byte for byte to
the ingest topic and answers 202 only after the broker acknowledged it. It does not validate events: the
worker does, so one place decides what is valid (and dead-letters the rest).

`POST /webhooks/qlik`, in this order (the first that fails answers):
  405 another method · 415 content type · 400 `Content-Length` not a number · 413 `Content-Length` over the
  limit · 413 body over the limit while reading · 401 `Qlik-Signature` missing or wrong (raw body, every
  configured secret) · 400 not a JSON object ·
  503 Kafka unavailable or no acknowledgement in time (`Retry-After`) · 202 `{topic, partition, offset}`.
Also `/healthz`, `/readyz` (Kafka answers for the topic), `/metrics` and `/openapi.json` on the same port.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.config import Settings
from worker.ingest import metrics
from worker.ingest.accepted import AcceptedTimes
from worker.ingest.producer import Publisher, Unavailable, producer_config
from worker.ingest.rules import (
    CONTENT_TYPE_HEADER,
    RECEIVED_AT_HEADER,
    SIGNATURE_HEADER,
    log_fields,
    media_type_accepted,
    received_at,
    record_key,
    signature_matches,
)
from worker.state.client import redis_client

log = structlog.get_logger("worker.ingest.server")

WEBHOOK_PATH = "/webhooks/qlik"
ROUTES = (WEBHOOK_PATH, "/healthz", "/readyz", "/metrics", "/openapi.json")
# What a 503 asks the sender to wait: Kafka outages that end by themselves (a broker restart, a leader
# election) take seconds.
RETRY_AFTER_SECONDS = 5
READY_TIMEOUT_SECONDS = 2.0
CLOSE_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Policy:
    """What a request is checked against, from the settings."""

    secrets: tuple[str, ...]
    check_signature: bool
    max_body_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> Policy:
        secrets = tuple(secret.get_secret_value() for secret in settings.ingest_secrets)
        return cls(secrets, bool(secrets) or not settings.ingest_allow_unsigned, settings.ingest_max_body_bytes)


def refusal(settings: Settings) -> str | None:
    """Why the endpoint must not start with these settings, or None."""
    if not settings.ingest_secrets and not settings.ingest_allow_unsigned:
        return (
            "WORKER_INGEST_SECRETS is empty: every webhook would be refused (401). Set it to the secret of the "
            "Qlik webhook (comma-separated for rotation), or WORKER_INGEST_ALLOW_UNSIGNED=true to accept "
            "unsigned requests (a trusted test setup only)."
        )
    return None


def _json(status: int, content: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def _error(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"error": text}, headers)


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it grows past `limit` (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class Webhook:
    """The ASGI app of `POST /webhooks/qlik` (an app, not a request function, so it sees every method)."""

    def __init__(self, policy: Policy, publisher: Publisher, accepted: AcceptedTimes | None = None) -> None:
        self.policy, self.publisher, self.accepted = policy, publisher, accepted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response, fields = await self._answer(Request(scope, receive))
        status = response.status_code
        # Every refusal is logged; a stored event only at DEBUG: it is counted, and on the topic with its
        # ingest.received_at, and a line per 202 would cost a tenth of the endpoint's CPU at full load.
        level = log.debug if status == 202 else log.info if status < 500 else log.warning
        level("webhook", status=status, **fields)
        await response(scope, receive, send)

    async def _answer(self, request: Request) -> tuple[Response, dict[str, Any]]:
        taken = received_at(datetime.now(UTC))
        if request.method != "POST":
            return _error(405, "use POST", {"Allow": "POST"}), {"method": request.method[:16]}
        content_type = request.headers.get(CONTENT_TYPE_HEADER)
        if not media_type_accepted(content_type):
            return _error(415, "Content-Type must be application/json or application/cloudevents+json"), {}
        declared = request.headers.get("content-length")
        if declared is not None and not declared.isdigit():
            return _error(400, "Content-Length is not a number"), {}
        limit = self.policy.max_body_bytes
        if declared is not None and int(declared) > limit:
            return _error(413, f"body over {limit} bytes"), {"bytes": int(declared)}
        body = await _read_limited(request, limit)
        if body is None:
            return _error(413, f"body over {limit} bytes"), {}
        metrics.BODY_BYTES.observe(len(body))
        fields: dict[str, Any] = {"bytes": len(body)}
        signature = request.headers.get(SIGNATURE_HEADER)
        if self.policy.check_signature and not signature_matches(body, signature, self.policy.secrets):
            return _error(401, "Qlik-Signature missing or wrong"), fields
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, "body is not JSON"), fields
        if not isinstance(event, dict):
            return _error(400, "body is not a JSON object"), fields
        fields.update(log_fields(event))
        assert content_type is not None  # media_type_accepted said so
        headers = [(CONTENT_TYPE_HEADER, content_type.encode("latin-1")), (RECEIVED_AT_HEADER, taken.encode())]
        started = time.perf_counter()
        try:
            stored = await self.publisher.publish(body, record_key(event), headers)
        except Unavailable as error:
            fields["cause"] = str(error)
            retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
            return _error(503, f"Kafka unavailable: {error}", retry), fields
        metrics.ACK_SECONDS.observe(time.perf_counter() - started)
        if self.accepted is not None:  # the watch's gap starts where a tenant's events stop (issue 21)
            self.accepted.accepted(fields.get("tenant"))
        where = {"topic": stored.topic, "partition": stored.partition, "offset": stored.offset}
        return _json(202, where), {**fields, **where}


class CountRequests:
    """ASGI middleware: `ingest_requests_total{route, status}` for every answer, whoever wrote it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._counters: dict[tuple[str, int], Counter] = {}  # label children, looked up once per pair

    def _count(self, route: str, status: int) -> None:
        counter = self._counters.get((route, status))
        if counter is None:
            counter = self._counters[route, status] = metrics.REQUESTS.labels(route, str(status))
        counter.inc()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "other"

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._count(route, message["status"])
            await send(message)

        await self.app(scope, receive, counted)


def build_app(settings: Settings, publisher: Publisher, accepted: AcceptedTimes | None = None) -> Starlette:
    """The ASGI app; the publisher (and `accepted`, the per-tenant last accepted times) are started and closed
    with it (lifespan)."""
    document = openapi(settings)

    async def healthz(_request: Request) -> Response:
        alive = publisher.alive()
        return PlainTextResponse("ok\n" if alive else "poll thread stopped\n", 200 if alive else 503)

    async def readyz(_request: Request) -> Response:
        problem = await asyncio.to_thread(publisher.reachable, READY_TIMEOUT_SECONDS)
        return PlainTextResponse(f"{problem}\n" if problem else "ready\n", 503 if problem else 200)

    async def prometheus(_request: Request) -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    async def schema(_request: Request) -> Response:
        return _json(200, document)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        publisher.start(asyncio.get_running_loop())
        if accepted is not None:
            accepted.start()
        log.info("ingest_started", topic=publisher.topic, port=settings.ingest_port, path=WEBHOOK_PATH)
        yield
        await asyncio.to_thread(publisher.close, CLOSE_TIMEOUT_SECONDS)
        if accepted is not None:
            await asyncio.to_thread(accepted.close)

    routes = [
        Route(WEBHOOK_PATH, Webhook(Policy.of(settings), publisher, accepted)),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", prometheus),
        Route("/openapi.json", schema),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(CountRequests)
    return app


def serve(settings: Settings) -> int:
    """Run the endpoint until SIGTERM/SIGINT (uvicorn finishes the requests in flight, then the lifespan
    flushes the producer)."""
    if problem := refusal(settings):
        print(f"refusing to start: {problem}", file=sys.stderr)
        return 2
    publisher = Publisher(
        producer_config(settings), settings.effective_ingest_topic, settings.ingest_delivery_timeout_ms / 1000
    )
    config = uvicorn.Config(
        build_app(settings, publisher, AcceptedTimes(redis_client(settings))),
        host="0.0.0.0",
        port=settings.ingest_port,
        ssl_certfile=settings.ingest_tls_certfile or None,
        ssl_keyfile=settings.ingest_tls_keyfile or None,
        log_config=None,  # uvicorn's own lines go through worker.logs (JSON)
        access_log=False,  # the webhook line above says more, and never the body
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
    )
    # uvicorn handles SIGTERM/SIGINT itself (stop accepting, finish requests, lifespan shutdown) and then
    # re-raises the signal to the handler from before it started: by then there is nothing left to do.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: None)
    uvicorn.Server(config).run()
    return 0


# ---- OpenAPI -----------------------------------------------------------------------------------------------


def _error_response(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        response["headers"] = headers
    return response


def _text_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def openapi(settings: Settings) -> dict[str, Any]:
    """The document served at /openapi.json (OpenAPI 3.0), what the schemathesis test checks the app against."""
    body_schema = {"type": "object", "description": "the webhook's event: a CloudEvent (structured) or a UMS webhook"}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "group-events worker: Qlik Cloud webhook ingest",
            "version": "1",
            "description": "Signed Qlik Cloud webhooks in, records on the ingest Kafka topic out.",
        },
        "paths": {
            WEBHOOK_PATH: {
                "post": {
                    "summary": "Store one webhook event on the ingest topic",
                    "parameters": [
                        {
                            "name": "Qlik-Signature",
                            "in": "header",
                            "required": True,
                            "description": "hex HMAC-SHA256 of the raw body under the webhook's secret",
                            "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": body_schema},
                            "application/cloudevents+json": {"schema": body_schema},
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "acknowledged by Kafka (acks=all)",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Stored"}}},
                        },
                        "400": _error_response("not JSON, or JSON that is not an object"),
                        "401": _error_response("Qlik-Signature missing or wrong"),
                        "405": _error_response("another method than POST"),
                        "413": _error_response(f"body over {settings.ingest_max_body_bytes} bytes"),
                        "415": _error_response("another content type"),
                        "503": _error_response(
                            "Kafka unavailable or no acknowledgement within the delivery timeout; retry",
                            {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
                        ),
                    },
                }
            },
            "/healthz": {"get": {"responses": {"200": _text_response("alive"), "503": _text_response("not")}}},
            "/readyz": {"get": {"responses": {"200": _text_response("Kafka answers"), "503": _text_response("why")}}},
            "/metrics": {"get": {"responses": {"200": _text_response("Prometheus text format")}}},
            "/openapi.json": {
                "get": {"responses": {"200": {"description": "this document", "content": {"application/json": {}}}}}
            },
        },
        "components": {
            "schemas": {
                "Stored": {
                    "type": "object",
                    "required": ["topic", "partition", "offset"],
                    "properties": {
                        "topic": {"type": "string"},
                        "partition": {"type": "integer", "minimum": 0},
                        "offset": {"type": "integer", "minimum": 0},
                    },
                },
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            }
        },
    }
