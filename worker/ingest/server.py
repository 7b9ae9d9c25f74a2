"""`python -m worker ingest`: the HTTP endpoints webhook senders deliver to. A request's signature, size,
content type, sender and tenant are checked, then its body is produced byte for byte to the ingest topic and
answered 202 only after the broker acknowledged it. Events are not validated: the worker does that, so one
place decides what is valid (and dead-letters the rest).

Two endpoints, one per sender, each with its own secrets (README "Security"):
- `POST /webhooks/qlik`: Qlik Cloud's CloudEvents, signed in `Qlik-Signature`;
- `POST /webhooks/ums`: UMS user-group webhooks (Seismic's User Management Service), signed in
  `UMS-Signature` with a secret of our own (Seismic documents no signature), and Seismic's URL verification.

Each request, in this order (the first check that fails answers; `worker/ingest/http.py` refuses before: 408
headers too slow, 431 headers too large):
  405 another method · 415 content type · 400 `Content-Length` not a number · 413 `Content-Length` over the
  limit (a body up to 4 times the limit is read and dropped first, so that the sender reads the 413) · 401 no
  signature, or not 64 hex digits (the body is not read) · 408 body not in within the read timeout (or its
  read slot taken by a newer read) · 413 body over the limit while reading (the rest dropped alike) · 401 signature
  matches no secret (raw body, every secret) · 400 not a JSON object · 403 the other sender's format, or a
  tenant the matching secret is not bound to · 200 Seismic's URL verification (UMS) · 503 too many requests
  wait for Kafka · 413 too large for Kafka · 503 Kafka unavailable or no acknowledgement in time
  (`Retry-After`) · 202 `{topic, partition, offset}`. A client gone before its body was read is counted as 499.
Also `/healthz`, `/readyz` (Kafka answers for the topic; cached), `/metrics` and `/openapi.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import structlog
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.config import SecretEntry, Settings
from worker.ingest import metrics
from worker.ingest.accepted import AcceptedTimes
from worker.ingest.bounds import BodyTooLarge, Bounds, Busy, ClientGone, ReadTimeout
from worker.ingest.http import BoundedHttpTools, tls_context
from worker.ingest.producer import Publisher, TooLarge, Unavailable, limits_problem, producer_config, topic_limit
from worker.ingest.rules import (
    CONTENT_TYPE_HEADER,
    RECEIVED_AT_HEADER,
    SIGNATURE_HEADER,
    UMS_SIGNATURE_HEADER,
    RefusalLog,
    log_fields,
    media_type,
    received_at,
    record_key,
    tenants_named,
    ums_challenge,
)
from worker.ingest.secrets import ANY, Grant, SecretsSource, well_formed
from worker.processing.ums import looks_like_ums
from worker.state.client import redis_client

log = structlog.get_logger("worker.ingest.server")

WEBHOOK_PATH: Final = "/webhooks/qlik"
UMS_PATH: Final = "/webhooks/ums"
ROUTES: Final = (WEBHOOK_PATH, UMS_PATH, "/healthz", "/readyz", "/metrics", "/openapi.json")
# What a 503 asks the sender to wait: Kafka outages that end by themselves (a broker restart, a leader
# election) take seconds.
RETRY_AFTER_SECONDS: Final = 5
READY_TIMEOUT_SECONDS: Final = 2.0
# /readyz answers from the last metadata request while it is this young: probes and scrapers cost one request per
# interval however often they ask; a "not ready" is asked again sooner, so recovery shows within a second.
READY_CACHE_SECONDS: Final = 5.0
NOT_READY_CACHE_SECONDS: Final = 1.0
CLOSE_TIMEOUT_SECONDS: Final = 10.0
TOPIC_LIMIT_TIMEOUT_SECONDS: Final = 5.0  # at start; unknown after it (the broker is down): checked per record
# A request whose body stopped arriving ends its connection. Other refusals keep it: uvicorn reads what is left
# of an unread body and drops it, and worker/ingest/http.py bounds the time that takes (the connection waits for
# a request meanwhile: read timeout, the oldest of too many is closed). That comes after the answer, which a
# sender writing its whole body first may then not read (a broken pipe, seen in CI for a 413): so a body refused
# for its size, up to this many times the limit, is read and dropped before its 413 goes out (`_drain`).
CLOSE: Final = {"Connection": "close"}
DRAIN_FACTOR: Final = 4
GONE: Final = 499  # nginx's "client closed request": counted, never sent

Fields = dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    """One sender's webhook: its path, signature header, secrets (None: unsigned, a trusted test setup) and
    whether it takes UMS webhooks (else CloudEvents)."""

    path: str
    signature_header: str
    secrets: SecretsSource | None
    ums: bool
    max_body_bytes: int

    @property
    def sender(self) -> str:
        return "UMS" if self.ums else "Qlik"


def endpoints(settings: Settings) -> list[Endpoint]:
    """The endpoints of these settings. Unsigned (no `secrets`) only when no secret at all is configured and
    that is allowed; else an endpoint without secrets refuses every request (401)."""
    limit = settings.ingest_max_body_bytes
    unsigned = settings.ingest_allow_unsigned and not settings.ingest_signed

    def secrets(entries: list[SecretEntry], path: str, variable: str) -> SecretsSource | None:
        return None if unsigned else SecretsSource(entries, path, variable)

    qlik = secrets(settings.ingest_secret_entries(), settings.ingest_secrets_file, "WORKER_INGEST_SECRETS_FILE")
    ums = secrets(
        settings.ingest_ums_secret_entries(), settings.ingest_ums_secrets_file, "WORKER_INGEST_UMS_SECRETS_FILE"
    )
    return [
        Endpoint(WEBHOOK_PATH, SIGNATURE_HEADER, qlik, ums=False, max_body_bytes=limit),
        Endpoint(UMS_PATH, UMS_SIGNATURE_HEADER, ums, ums=True, max_body_bytes=limit),
    ]


def refusal(settings: Settings) -> str | None:
    """Why the ingest must not start with these settings, or None."""
    if not settings.ingest_signed and not settings.ingest_allow_unsigned:
        return (
            "WORKER_INGEST_SECRETS is empty: every webhook would be refused (401). Set it to the secret of the "
            "Qlik webhook (<tenant id>:<secret>, comma-separated for several tenants or a rotation) or "
            "WORKER_INGEST_SECRETS_FILE (and WORKER_INGEST_UMS_SECRETS for UMS webhooks), or "
            "WORKER_INGEST_ALLOW_UNSIGNED=true to accept unsigned requests (a trusted test setup only)."
        )
    return limits_problem(settings.ingest_max_body_bytes, producer_config(settings))


def _json(status: int, content: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def _error(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"error": text}, headers)


@dataclass(frozen=True, slots=True)
class Admitted:
    """What a body that passed every check is stored with; the parsed event itself is not kept."""

    key: bytes | None
    fields: Fields


class Webhook:
    """The ASGI app of one endpoint (an app, not a request function, so it sees every method)."""

    def __init__(
        self,
        endpoint: Endpoint,
        publisher: Publisher,
        bounds: Bounds,
        refusals: RefusalLog,
        accepted: AcceptedTimes | None = None,
    ) -> None:
        self.endpoint, self.publisher, self.bounds, self.refusals = endpoint, publisher, bounds, refusals
        self.accepted = accepted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = await self._answer(scope, receive)
        if answer is None:  # gone before its body was read: nobody to answer (CountRequests counts it as 499)
            self._log(GONE, {}, scope)
            return
        response, fields = answer
        self._log(response.status_code, fields, scope)
        await response(scope, receive, send)

    def _log(self, status: int, fields: Fields, scope: Scope) -> None:
        """A stored event only at DEBUG: it is counted, and on the topic with its ingest.received_at, and a line
        per 202 would cost a tenth of the endpoint's CPU at full load. Refusals at INFO (WARNING for 5xx),
        sampled per status (`RefusalLog`): a flood of them costs a bounded number of lines."""
        if status == 202:
            log.debug("webhook", path=self.endpoint.path, status=status, **fields)
            return
        suppressed = self.refusals.admit(f"{self.endpoint.path}:{status}", time.monotonic())
        if suppressed is not None:
            client = scope.get("client")
            level = log.warning if status >= 500 else log.info
            level(
                "webhook",
                path=self.endpoint.path,
                status=status,
                client=client[0] if client else None,
                suppressed=suppressed,
                **fields,
            )

    async def _answer(self, scope: Scope, receive: Receive) -> tuple[Response, Fields] | None:
        taken = received_at(datetime.now(UTC))
        endpoint, headers = self.endpoint, Headers(scope=scope)
        if scope["method"] != "POST":
            return _error(405, "use POST", {"Allow": "POST"}), {"method": scope["method"][:16]}
        media = media_type(headers.get(CONTENT_TYPE_HEADER))
        if media is None:
            return _error(415, "Content-Type must be application/json or application/cloudevents+json"), {}
        declared = headers.get("content-length")
        if declared is not None and not declared.isdigit():
            return _error(400, "Content-Length is not a number"), {}
        limit = endpoint.max_body_bytes
        declared_size = None if declared is None else int(declared)
        if declared_size is not None and declared_size > limit:
            if declared_size <= DRAIN_FACTOR * limit:
                await self._drain(receive, declared_size)
            return _error(413, f"body over {limit} bytes"), {"bytes": declared_size}
        signature = headers.get(endpoint.signature_header)
        verifier = endpoint.secrets.keyring.verifier() if endpoint.secrets else None
        if verifier is not None and not well_formed(signature):
            return self._unsigned(), {}
        try:
            chunks = await self.bounds.read(receive, limit, verifier)
        except ReadTimeout:
            return _error(408, f"body not received within {self.bounds.read_timeout:g} s", CLOSE), {}
        except BodyTooLarge:
            await self._drain(receive, DRAIN_FACTOR * limit)
            return _error(413, f"body over {limit} bytes"), {}
        except ClientGone:
            return None
        size = sum(len(chunk) for chunk in chunks)
        metrics.BODY_BYTES.observe(size)
        fields: Fields = {"bytes": size}
        grant = ANY if verifier is None else verifier.grant(signature)
        if grant is None:
            return self._unsigned(), fields
        body = b"".join(chunks)
        del chunks
        admitted = self._admit(body, grant)
        if isinstance(admitted, tuple):
            response, more = admitted
            return response, {**fields, **more}
        fields.update(admitted.fields)
        record_headers = [(CONTENT_TYPE_HEADER, media.encode()), (RECEIVED_AT_HEADER, taken.encode())]
        started = time.perf_counter()
        try:
            with self.bounds.wait_for_kafka():
                pending = self.publisher.send(body, admitted.key, record_headers)
                del body  # librdkafka holds its own copy while the request waits
                stored = await pending
        except Busy:
            return _unavailable("too many requests wait for Kafka"), {**fields, "cause": "busy"}
        except TooLarge as error:
            return _error(413, "body too large for the Kafka topic"), {**fields, "cause": str(error)}
        except Unavailable as error:
            return _unavailable("Kafka unavailable"), {**fields, "cause": str(error)}
        metrics.ACK_SECONDS.observe(time.perf_counter() - started)
        if self.accepted is not None:  # the watch's gap starts where a tenant's events stop (issue 21)
            self.accepted.accepted(fields.get("tenant"))
        where = {"topic": stored.topic, "partition": stored.partition, "offset": stored.offset}
        return _json(202, where), {**fields, **where}

    async def _drain(self, receive: Receive, limit: int) -> None:
        """Read and drop the rest of a refused body, at most `limit` bytes, within the read deadline and slot of any
        body: a sender that writes its whole body before it reads (urllib, most webhook senders) then gets the
        413 instead of a reset (seen in CI). A larger body gets the answer at once, and the connection closes."""
        with contextlib.suppress(ReadTimeout, BodyTooLarge, ClientGone):
            await self.bounds.read(receive, limit, None, keep=False)

    def _unsigned(self) -> Response:
        return _error(401, f"{self.endpoint.signature_header.title()} missing or wrong")

    def _admit(self, body: bytes, grant: Grant) -> Admitted | tuple[Response, Fields]:
        """The checks of a signed body, on its parsed event (which is dropped when this returns)."""
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, "body is not JSON"), {}
        if not isinstance(event, dict):
            return _error(400, "body is not a JSON object"), {}
        fields: Fields = log_fields(event)
        if self.endpoint.ums and (challenge := ums_challenge(event)):  # nothing is stored: no tenant to check
            return Response(challenge.body, 200, media_type=challenge.media_type), {**fields, "challenge": True}
        if looks_like_ums(event) != self.endpoint.ums:
            other = "a CloudEvent" if self.endpoint.ums else "a UMS webhook"
            return _error(403, f"{other} is not accepted on the {self.endpoint.sender} endpoint"), fields
        if not grant.allows(tenants_named(event)):
            return _error(403, "the signature's secret is not bound to the tenant the body names"), fields
        return Admitted(record_key(event), fields)


def _unavailable(text: str) -> Response:
    """503 with `Retry-After`; the cause is logged, not answered (answers land in the sender's delivery log)."""
    return _error(503, f"{text}, retry later", {"Retry-After": str(RETRY_AFTER_SECONDS)})


class CountRequests:
    """ASGI middleware: `ingest_requests_total{route, status}` for every answer, whoever wrote it, and 499 for a
    request answered by nobody because its client went away first."""

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
        answered = False

        async def counted(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                self._count(route, message["status"])
            await send(message)

        await self.app(scope, receive, counted)
        if not answered:
            self._count(route, GONE)


class Readiness:
    """/readyz: whether the broker answers metadata for the topic, asked again only once the last answer is
    older than `READY_CACHE_SECONDS` (`NOT_READY_CACHE_SECONDS` for a problem); concurrent callers share one."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._checked = -READY_CACHE_SECONDS
        self._problem: str | None = None
        self._lock = asyncio.Lock()

    async def problem(self) -> str | None:
        async with self._lock:
            fresh = NOT_READY_CACHE_SECONDS if self._problem else READY_CACHE_SECONDS
            if time.monotonic() - self._checked >= fresh:
                self._problem = await asyncio.to_thread(self._publisher.reachable, READY_TIMEOUT_SECONDS)
                self._checked = time.monotonic()
            return self._problem


def build_app(
    settings: Settings,
    publisher: Publisher,
    refusals: RefusalLog | None = None,
    accepted: AcceptedTimes | None = None,
) -> Starlette:
    """The ASGI app; the publisher is started and closed with it (lifespan), and so are the secrets files'
    watchers and `accepted` (the per-tenant last accepted times, for the webhook watch)."""
    document = openapi(settings)
    refusals = refusals or RefusalLog()
    bounds = Bounds(settings.ingest_read_timeout_seconds, settings.ingest_max_body_reads, settings.ingest_max_waiting)
    webhooks = endpoints(settings)
    readiness = Readiness(publisher)

    async def healthz(_request: Request) -> Response:
        alive = publisher.alive()
        return PlainTextResponse("ok\n" if alive else "poll thread stopped\n", 200 if alive else 503)

    async def readyz(_request: Request) -> Response:
        problem = await readiness.problem()
        return PlainTextResponse(f"{problem}\n" if problem else "ready\n", 503 if problem else 200)

    async def prometheus(_request: Request) -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    async def schema(_request: Request) -> Response:
        return _json(200, document)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        publisher.start(asyncio.get_running_loop())
        watchers = [asyncio.create_task(door.secrets.watch()) for door in webhooks if door.secrets]
        for door in webhooks:
            if door.secrets is None:
                log.warning("ingest_unsigned", path=door.path, detail="requests are accepted without a signature")
        if accepted is not None:
            accepted.start()
        log.info("ingest_started", topic=publisher.topic, port=settings.ingest_port, paths=[d.path for d in webhooks])
        yield
        bounds.close()
        for watcher in watchers:
            watcher.cancel()
        await asyncio.to_thread(publisher.close, CLOSE_TIMEOUT_SECONDS)
        if accepted is not None:
            await asyncio.to_thread(accepted.close)

    routes = [
        *(Route(door.path, Webhook(door, publisher, bounds, refusals, accepted)) for door in webhooks),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", prometheus),
        Route("/openapi.json", schema),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(CountRequests)
    return app


def serve(settings: Settings) -> int:
    """Run the endpoints until SIGTERM/SIGINT (uvicorn finishes the requests in flight, then the lifespan
    flushes the producer)."""
    config, topic = producer_config(settings), settings.effective_ingest_topic
    problem = refusal(settings) or limits_problem(
        settings.ingest_max_body_bytes, config, topic_limit(config, topic, TOPIC_LIMIT_TIMEOUT_SECONDS)
    )
    if problem:
        print(f"refusing to start: {problem}", file=sys.stderr)
        return 2
    publisher = Publisher(config, topic, settings.ingest_delivery_timeout_ms / 1000)
    refusals = RefusalLog()

    def closed(reason: str, client: str | None) -> None:
        metrics.CONNECTIONS_CLOSED.labels(reason).inc()
        if (suppressed := refusals.admit(reason, time.monotonic())) is not None:
            log.info("connection_closed", reason=reason, client=client, suppressed=suppressed)

    tls = bool(settings.ingest_tls_certfile)
    server = uvicorn.Config(
        build_app(settings, publisher, refusals, AcceptedTimes(redis_client(settings))),
        host="0.0.0.0",
        port=settings.ingest_port,
        http=BoundedHttpTools.bounded(
            settings.ingest_read_timeout_seconds, settings.ingest_max_idle_connections, closed
        ),
        ws="none",
        ssl_certfile=settings.ingest_tls_certfile or None,
        ssl_keyfile=settings.ingest_tls_keyfile or None,
        ssl_context_factory=tls_context if tls else None,
        forwarded_allow_ips=settings.ingest_forwarded_allow_ips,
        log_config=None,  # uvicorn's own lines go through worker.logs (JSON)
        access_log=False,  # the webhook line says more, and never the body
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
    )
    # uvicorn handles SIGTERM/SIGINT itself (stop accepting, finish requests, lifespan shutdown) and then
    # re-raises the signal to the handler from before it started: by then there is nothing left to do.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: None)
    uvicorn.Server(server).run()
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


def _webhook(settings: Settings, sender: str, header: str, body: str, extra: dict[str, Any]) -> dict[str, Any]:
    body_schema = {"type": "object", "description": body}
    retry = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return {
        "post": {
            "summary": f"Store one {sender} webhook event on the ingest topic",
            "parameters": [
                {
                    "name": header,
                    "in": "header",
                    "required": True,
                    "description": "hex HMAC-SHA256 of the raw body under a secret bound to the body's tenant",
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
                **extra,
                "400": _error_response("not JSON, or JSON that is not an object"),
                "401": _error_response(f"{header} missing or wrong"),
                "403": _error_response(f"not a {sender} webhook, or a tenant the secret is not bound to"),
                "405": _error_response("another method than POST"),
                "408": _error_response(f"body not received within {settings.ingest_read_timeout_seconds:g} s"),
                "413": _error_response(f"body over {settings.ingest_max_body_bytes} bytes, or too large for Kafka"),
                "415": _error_response("another content type"),
                "503": _error_response("Kafka unavailable, no acknowledgement in time, or too many waiting", retry),
            },
        }
    }


def openapi(settings: Settings) -> dict[str, Any]:
    """The document served at /openapi.json (OpenAPI 3.0), what the schemathesis test checks the app against."""
    challenge = {
        "200": {
            "description": "Seismic's URL verification: the challenge echoed",
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "group-events worker: webhook ingest",
            "version": "1",
            "description": "Signed Qlik Cloud and UMS webhooks in, records on the ingest Kafka topic out.",
        },
        "paths": {
            WEBHOOK_PATH: _webhook(settings, "Qlik Cloud", "Qlik-Signature", "a CloudEvent (structured)", {}),
            UMS_PATH: _webhook(settings, "UMS", "UMS-Signature", "a UMS webhook (Seismic)", challenge),
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
