"""A local Qlik Cloud tenant for the tests, `make run` and `make demo`: a small Starlette app with the parts of
Qlik's REST APIs the upstream jobs call, in the documented shapes (`worker/qlik/api.py`), and Qlik's webhook
delivery to the ingest. What real Qlik does that the documentation does not pin down is a setting here
(`Behaviour`), and README "A local Qlik tenant" says what was chosen.

- `GET /api/v1/audits` (eventType, eventTime `<start>/<end>` inclusive, sort ±eventTime, limit ≤ 100, `next`
  cursor in `links.next.href`), `GET /api/v1/groups`, `GET|POST /api/v1/webhooks`, `GET|PATCH
  /api/v1/webhooks/{id}`, `GET /api/v1/webhooks/{id}/deliveries`, `POST .../deliveries/{id}/actions/resend`,
  `GET /api/v1/users/me`, `POST /oauth/token` (client credentials).
- 401 without a valid API key or unexpired token; 429 with `Retry-After` (whole seconds) past
  `requests_per_window` requests in any `window` seconds; a share `error_rate` of reads answered 500.
- A change made here (`create_group`, `update_group`, `delete_group`, `modify_users`) is a CloudEvent: it is
  recorded as an audit item and delivered to every enabled webhook of its type, signed (`Qlik-Signature`), with
  `delivery_attempts` tries; a delivery whose tries all failed is recorded `fail`, and after `disable_after` of
  them in a row the webhook is disabled (`disabledReason`), as Qlik does. Deliveries go out in order, one thread.
- What the tests check afterwards: `requests` (every API request's time and status) and `early` (requests that
  came before the time a 429 asked to wait for).
"""

from __future__ import annotations

import base64
import contextlib
import math
import queue
import random
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from worker.ingest.secrets import sign
from worker.local.stack import HOST, free_port
from worker.processing.models import GROUP_CREATED, GROUP_DELETED, GROUP_UPDATED, USERS_MODIFIED, rfc3339

SOURCE = "com.qlik/identities"
GROUP_TYPES = (GROUP_CREATED, GROUP_UPDATED, GROUP_DELETED, USERS_MODIFIED)
ADMIN_USER = "local-admin"
MAX_LIMIT = 100


@dataclass
class Behaviour:
    """How the local tenant behaves where real Qlik's behaviour is not documented, or is slow to wait for."""

    requests_per_window: int = 1000  # Qlik: 1,000 per minute (tier 1)
    window: float = 60.0
    error_rate: float = 0.0  # share of GETs answered 500
    token_lifetime: int = 3600  # seconds
    delivery_attempts: int = 3  # tries of one delivery
    delivery_backoff: float = 0.5  # seconds before the second try, doubling
    delivery_timeout: float = 5.0
    disable_after: int = 3  # failed deliveries in a row that disable the webhook
    same_event_ids: bool = True  # an audit item's eventId is the delivered CloudEvent's id (else its own)


@dataclass
class Webhook:
    id: str
    name: str
    url: str
    secret: str
    event_types: list[str]
    enabled: bool = True
    disabled_reason: str | None = None
    disabled_reason_code: str | None = None
    created_at: str = ""
    updated_at: str = ""
    failures_in_a_row: int = 0

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "url": self.url, "eventTypes": self.event_types,
            "enabled": self.enabled, "disabledReason": self.disabled_reason,
            "disabledReasonCode": self.disabled_reason_code, "level": "tenant", "origin": "api",
            "createdAt": self.created_at, "updatedAt": self.updated_at,
        }  # fmt: skip


class LocalTenant:
    def __init__(
        self,
        tenant_id: str = "local-tenant",
        *,
        api_key: str | None = None,
        client_id: str = "local-client",
        client_secret: str | None = None,
        behaviour: Behaviour | None = None,
        seed: int = 0,
    ) -> None:
        self.tenant_id = tenant_id
        self.api_key = api_key or "local-key-" + secrets.token_hex(16)
        self.client_id, self.client_secret = client_id, client_secret or "local-secret-" + secrets.token_hex(16)
        self.behaviour = behaviour or Behaviour()
        self.groups: dict[str, dict[str, Any]] = {}
        self.audits: list[dict[str, Any]] = []
        self.webhooks: dict[str, Webhook] = {}
        self.deliveries: list[dict[str, Any]] = []
        self.requests: list[tuple[float, str, int]] = []  # (monotonic time, path, status) of every API request
        self.early = 0
        self.url = ""
        self._tokens: dict[str, float] = {}  # access token -> expiry (monotonic)
        self._admitted: deque[float] = deque()
        self._ready_at = 0.0  # what the last 429 asked to wait for
        self._last_ms = 0
        self._random = random.Random(seed)
        self._lock = threading.RLock()
        self._outbox: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self.app = self._build_app()

    # ---- changes, as an admin makes them -----------------------------------------------------------------

    def create_group(self, name: str, *, deliver: bool = True) -> dict[str, Any]:
        with self._lock:
            now = self._now()
            group: dict[str, Any] = {
                "id": uuid.uuid4().hex[:24], "name": name, "status": "active", "tenantId": self.tenant_id,
                "createdAt": now, "lastUpdatedAt": now, "providerType": "custom", "assignedRoles": [],
                "createdBy": ADMIN_USER, "updatedBy": ADMIN_USER,
            }  # fmt: skip
            self.groups[group["id"]] = group
            self._event(GROUP_CREATED, dict(group), deliver=deliver)
            return group

    def update_group(self, group_id: str, name: str, *, deliver: bool = True) -> dict[str, Any]:
        with self._lock:
            group = self.groups[group_id]
            updates = [{"path": "/name", "oldValue": group["name"], "newValue": name}]
            group.update(name=name, lastUpdatedAt=self._now())
            self._event(GROUP_UPDATED, {**group, "updates": updates}, deliver=deliver)
            return group

    def delete_group(self, group_id: str, *, deliver: bool = True, record: bool = True) -> None:
        """`record` False: the group goes without any event at all (neither audit nor webhook): the deletion a
        stream can only learn from a reconciliation."""
        with self._lock:
            group = self.groups.pop(group_id)
            group["lastUpdatedAt"] = self._now()
            if record:
                self._event(GROUP_DELETED, group, deliver=deliver)

    def modify_users(self, group_id: str, users: list[str], *, deliver: bool = True) -> None:
        with self._lock:
            group = self.groups[group_id]
            group["lastUpdatedAt"] = self._now()
            data = {**group, "deleted": False, "affectedUsers": users, "fullyProcessed": True}
            self._event(USERS_MODIFIED, data, deliver=deliver)

    def add_webhook(self, url: str, secret: str, event_types: list[str] | None = None, name: str = "groups") -> str:
        with self._lock:
            now = self._now()
            webhook = Webhook(uuid.uuid4().hex, name, url, secret, list(event_types or GROUP_TYPES), True,
                              created_at=now, updated_at=now)  # fmt: skip
            self.webhooks[webhook.id] = webhook
            return webhook.id

    def wait_delivered(self, timeout: float = 60) -> None:
        """Until every queued delivery has been tried (with its retries)."""
        deadline = time.monotonic() + timeout
        while self._outbox.unfinished_tasks:  # each put is done once its tries are over
            if time.monotonic() > deadline:
                raise TimeoutError("deliveries still pending")
            time.sleep(0.05)

    def _now(self) -> str:
        """RFC 3339 UTC with milliseconds, strictly increasing: every change of the tenant has its own time."""
        now_ms = max(self._last_ms + 1, int(time.time() * 1000))
        self._last_ms = now_ms
        return rfc3339(datetime.fromtimestamp(now_ms / 1000, UTC))

    def _event(self, event_type: str, data: dict[str, Any], *, deliver: bool) -> None:
        event = {
            "id": str(uuid.uuid4()), "time": data["lastUpdatedAt"], "type": event_type, "source": SOURCE,
            "specversion": "1.0", "datacontenttype": "application/json", "userid": ADMIN_USER,
            "tenantid": self.tenant_id, "data": data,
        }  # fmt: skip
        audit_id = uuid.uuid4().hex
        self.audits.append(
            {
                "id": audit_id, "eventId": event["id"] if self.behaviour.same_event_ids else str(uuid.uuid4()),
                "eventTime": event["time"], "eventType": event_type, "eventTypeVersion": "1.0.0", "source": SOURCE,
                "tenantId": self.tenant_id, "userId": ADMIN_USER, "contentType": "application/json",
                "data": data, "extensions": {}, "links": {"self": {"href": f"{self.url}/api/v1/audits/{audit_id}"}},
            }
        )  # fmt: skip
        if deliver:
            for webhook in self.webhooks.values():
                if webhook.enabled and event_type in webhook.event_types:
                    self._outbox.put((webhook.id, event))

    # ---- delivery ----------------------------------------------------------------------------------------

    def _deliver_forever(self) -> None:
        with httpx.Client(timeout=self.behaviour.delivery_timeout) as http:
            while (item := self._outbox.get()) is not None:
                try:
                    webhook_id, event = item
                    with self._lock:
                        webhook = self.webhooks[webhook_id]
                        if not webhook.enabled:  # disabled since the event was queued: Qlik does not send it
                            continue
                    self._attempt(http, webhook, event, self.behaviour.delivery_attempts)
                finally:
                    self._outbox.task_done()

    def _attempt(self, http: httpx.Client, webhook: Webhook, event: dict[str, Any], tries: int) -> dict[str, Any]:
        """Send one event to one webhook (`tries` times at most); record and return the delivery."""
        body = orjson.dumps(event)
        headers = {"Content-Type": "application/json", "Qlik-Signature": sign(body, webhook.secret)}
        status, answer = 0, ""
        triggered = self._now()
        for attempt in range(tries):
            if attempt:
                time.sleep(self.behaviour.delivery_backoff * 2 ** (attempt - 1))
            try:
                response = http.post(webhook.url, content=body, headers=headers)
                status, answer = response.status_code, response.text[:500]
            except httpx.HTTPError as error:
                status, answer = 0, type(error).__name__
            if 200 <= status < 300:
                break
        ok = 200 <= status < 300
        delivery = {
            "id": uuid.uuid4().hex, "webhookId": webhook.id, "eventType": event["type"],
            "status": "success" if ok else "fail",
            "statusMessage": "delivered" if ok else f"failed after {tries} tries: {status or answer}",
            "triggeredAt": triggered,
            "request": {"url": webhook.url, "headers": {"Content-Type": "application/json"}, "body": event},
            "response": {"statusCode": status, "body": answer},
        }  # fmt: skip
        with self._lock:
            self.deliveries.append(delivery)
            webhook.failures_in_a_row = 0 if ok else webhook.failures_in_a_row + 1
            if webhook.enabled and webhook.failures_in_a_row >= self.behaviour.disable_after:
                webhook.enabled = False
                webhook.disabled_reason = f"{webhook.failures_in_a_row} deliveries in a row failed"
                webhook.disabled_reason_code = "DELIVERY_FAILURES"
                webhook.updated_at = self._now()
        return delivery

    # ---- serving -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def serve(self, port: int | None = None) -> Iterator[LocalTenant]:
        """Serve on 127.0.0.1 (a free port unless given) and deliver, until the block ends."""
        port = port or free_port()
        self.url = f"http://{HOST}:{port}"
        config = uvicorn.Config(self.app, host=HOST, port=port, log_config=None, access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="local-tenant", daemon=True)
        deliverer = threading.Thread(target=self._deliver_forever, name="local-tenant-deliveries", daemon=True)
        thread.start()
        deliverer.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local Qlik tenant did not start")
            time.sleep(0.02)
        try:
            yield self
        finally:
            self._outbox.put(None)
            server.should_exit = True
            thread.join(10)
            deliverer.join(10)

    def _build_app(self) -> Starlette:
        api: list[tuple[str, Callable[[Request], Response], list[str]]] = [
            ("/oauth/token", self._token, ["POST"]),
            ("/api/v1/users/me", self._me, ["GET"]),
            ("/api/v1/audits", self._audits, ["GET"]),
            ("/api/v1/groups", self._groups, ["GET"]),
            ("/api/v1/webhooks", self._webhooks, ["GET", "POST"]),
            ("/api/v1/webhooks/{id}", self._webhook, ["GET", "PATCH"]),
            ("/api/v1/webhooks/{id}/deliveries", self._deliveries, ["GET"]),
            ("/api/v1/webhooks/{id}/deliveries/{delivery}/actions/resend", self._resend, ["POST"]),
        ]
        routes = [Route(path, self._route(handler), methods=methods) for path, handler, methods in api]
        routes += [
            Route("/_local/groups", self._route(self._local_create, api=False), methods=["POST"]),
            Route("/_local/groups/{id}", self._route(self._local_delete, api=False), methods=["DELETE"]),
        ]
        return Starlette(routes=routes)

    def _route(
        self, handler: Callable[[Request], Response], api: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        """A route on the body read here, run in the thread pool (it takes the lock, and a resend waits for the
        ingest); an API route behind authentication, the rate limit and the occasional 500, and recorded."""

        async def route(request: Request) -> Response:
            request.state.body = await request.body()
            response = self._refusal(request) if api else None
            if response is None:
                response = await run_in_threadpool(handler, request)
            if api:
                with self._lock:
                    self.requests.append((time.monotonic(), request.url.path, response.status_code))
            return response

        return route

    def _refusal(self, request: Request) -> Response | None:
        now = time.monotonic()
        with self._lock:
            if now < self._ready_at:
                self.early += 1
            if request.url.path != "/oauth/token" and not self._authorized(request.headers.get("authorization"), now):
                return _errors(401, "HTTP-401", "Not authorized")
            window = self.behaviour.window
            while self._admitted and self._admitted[0] <= now - window:
                self._admitted.popleft()
            if len(self._admitted) >= self.behaviour.requests_per_window:
                wait = math.ceil(self._admitted[0] + window - now)
                self._ready_at = max(self._ready_at, now + wait)
                detail = f"You need to wait {wait} seconds until limit is lifted."
                return _errors(429, "HTTP-429", "API rate limit reached.", detail, {"Retry-After": str(wait)})
            self._admitted.append(now)
            if request.method == "GET" and self._random.random() < self.behaviour.error_rate:
                return _errors(500, "HTTP-500", "Internal Server Error")
        return None

    def _authorized(self, header: str | None, now: float) -> bool:
        if not header or not header.lower().startswith("bearer "):
            return False
        credential = header[7:].strip()
        return credential == self.api_key or self._tokens.get(credential, 0.0) > now

    # ---- API routes --------------------------------------------------------------------------------------

    def _token(self, request: Request) -> Response:
        body = _body(request)
        if body.get("grant_type") != "client_credentials":
            return _errors(400, "OAUTH-2", "unsupported grant_type")
        if body.get("client_id") != self.client_id or body.get("client_secret") != self.client_secret:
            return _errors(401, "OAUTH-1", "invalid client")
        token = "local-token-" + secrets.token_hex(16)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.behaviour.token_lifetime
        return _json({"access_token": token, "token_type": "bearer", "expires_in": self.behaviour.token_lifetime})

    def _me(self, _request: Request) -> Response:
        return _json({"id": ADMIN_USER, "tenantId": self.tenant_id, "name": "Local admin", "status": "active"})

    def _audits(self, request: Request) -> Response:
        params = request.query_params
        items = self.audits
        if event_type := params.get("eventType"):
            items = [i for i in items if i["eventType"] == event_type]
        if span := params.get("eventTime"):
            try:
                start, end = (_time(part) for part in span.split("/", 1))
            except ValueError:
                return _errors(400, "HTTP-400", "eventTime must be <start>/<end> in ISO 8601")
            items = [i for i in items if start <= _time(i["eventTime"]) <= end]
        items = sorted(items, key=lambda i: i["eventTime"], reverse=params.get("sort", "-eventTime") != "+eventTime")
        return self._page(request, items, default_limit=10)

    def _groups(self, request: Request) -> Response:
        return self._page(request, [{**g, "links": {"self": {"href": ""}}} for g in self.groups.values()], 20)

    def _webhooks(self, request: Request) -> Response:
        if request.method == "POST":
            body = _body(request)
            webhook_id = self.add_webhook(str(body.get("url")), str(body.get("secret", "")), body.get("eventTypes"),
                                          str(body.get("name", "")))  # fmt: skip
            return _json(self.webhooks[webhook_id].document(), 201)
        return self._page(request, [w.document() for w in self.webhooks.values()], 20)

    def _webhook(self, request: Request) -> Response:
        webhook = self.webhooks.get(request.path_params["id"])
        if webhook is None:
            return _errors(404, "WEBHOOK-404", "Not found")
        if request.method == "PATCH":
            for operation in _body_list(request):
                if operation.get("path") == "/enabled":
                    with self._lock:
                        webhook.enabled = bool(operation.get("value"))
                        webhook.failures_in_a_row = 0
                        webhook.disabled_reason = webhook.disabled_reason_code = None
                        webhook.updated_at = self._now()
            return Response(status_code=204)
        return _json(webhook.document())

    def _deliveries(self, request: Request) -> Response:
        webhook_id = request.path_params["id"]
        items = [d for d in self.deliveries if d["webhookId"] == webhook_id]
        if status := request.query_params.get("status"):
            items = [d for d in items if d["status"] == status]
        items.sort(key=lambda d: d["triggeredAt"], reverse=request.query_params.get("sort") != "+triggeredAt")
        return self._page(request, items, 20)

    def _resend(self, request: Request) -> Response:
        webhook = self.webhooks.get(request.path_params["id"])
        original = next((d for d in self.deliveries if d["id"] == request.path_params["delivery"]), None)
        if webhook is None or original is None:
            return _errors(404, "WEBHOOK-404", "Not found")
        with httpx.Client(timeout=self.behaviour.delivery_timeout) as http:
            return _json(self._attempt(http, webhook, original["request"]["body"], 1), 201)

    def _page(self, request: Request, items: list[dict[str, Any]], default_limit: int) -> Response:
        """One page of `items`, with `links.self` and, when more follow, `links.next` (the same query and a
        `next` cursor: the offset, opaque to clients)."""
        params = dict(request.query_params)
        try:
            limit = int(params.get("limit", default_limit))
            offset = int(base64.urlsafe_b64decode(params["next"]).decode()) if "next" in params else 0
        except ValueError:
            return _errors(400, "HTTP-400", "bad limit or cursor")
        if not 1 <= limit <= MAX_LIMIT:
            return _errors(400, "HTTP-400", f"limit must be between 1 and {MAX_LIMIT}")
        base = f"{self.url}{request.url.path}"
        links: dict[str, Any] = {"self": {"href": str(request.url)}}
        if offset + limit < len(items):
            cursor = base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
            query = httpx.QueryParams({**{k: v for k, v in params.items() if k != "next"}, "next": cursor})
            links["next"] = {"href": f"{base}?{query}"}
        return _json({"data": items[offset : offset + limit], "links": links})

    # ---- local control (not Qlik's API): what `make run` prints to try ----------------------------------

    def _local_create(self, request: Request) -> Response:
        return _json(self.create_group(str(_body(request).get("name") or "Local group")), 201)

    def _local_delete(self, request: Request) -> Response:
        if request.path_params["id"] not in self.groups:
            return _errors(404, "GROUP-404", "Not found")
        self.delete_group(request.path_params["id"])
        return Response(status_code=204)


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def _errors(status: int, code: str, title: str, detail: str = "", headers: dict[str, str] | None = None) -> Response:
    error = {"code": code, "title": title, **({"detail": detail} if detail else {})}
    return _json({"errors": [error], "traceId": uuid.uuid4().hex}, status, headers)


def _body(request: Request) -> dict[str, Any]:
    value = _read(request)
    return value if isinstance(value, dict) else {}


def _body_list(request: Request) -> list[dict[str, Any]]:
    value = _read(request)
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _read(request: Request) -> Any:
    """The JSON (or form) body `_guarded` read."""
    raw: bytes = request.state.body
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return dict(httpx.QueryParams(raw.decode()))
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
