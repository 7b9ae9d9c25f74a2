"""One small client for the Qlik Cloud REST APIs of one tenant, used by backfill, watch and reconcile.

What it promises:
- Authentication: the tenant's API key, or an OAuth2 machine-to-machine client: a token from `POST /oauth/token`
  (client credentials), fetched before the first request and again before it expires, or once after a 401.
- A request budget per tenant (`worker/qlik/budget.py`): never more than `requests_per_minute` requests in any
  minute, the token requests included, so Qlik's limit (1,000 per minute, tier 1) is not reached by us alone.
- A 429 is waited out for its `Retry-After` (seconds or an HTTP date), then sent again; 5xx answers, timeouts and
  connection errors are sent again after an exponential back-off with full jitter, up to `Retry.attempts` times,
  then `QlikUnavailable`. A 401 or 403 raises `QlikAuthError` naming the setting to fix. Other 4xx: `QlikError`.
- Pagination follows `links.next.href`, only on the tenant's own origin: credentials never go to another host.
- Credentials are never in a log line, an error, a metric or a repr: they stay `SecretStr` until the header is
  built, errors name settings, and httpx's own per-request log line is turned down to warnings.
Timeouts: 5 s to connect, 30 s to read; one connection pool per client (connections are reused).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import structlog

from worker import __version__
from worker.qlik import metrics
from worker.qlik.budget import Budget
from worker.qlik.tenants import API_KEY, CLIENT_ID, CLIENT_SECRET, Tenant

log = structlog.get_logger("worker.qlik.client")
# httpx logs every request at INFO; ours say more (tenant, attempt, wait) and are JSON lines.
logging.getLogger("httpx").setLevel(logging.WARNING)

TOKEN_PATH = "/oauth/token"
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
RATE_LIMITED_MAX = 50  # 429s in a row before giving up: the tenant is saturated by someone else
DEFAULT_RETRY_AFTER = 1.0  # a 429 without a usable Retry-After


class QlikError(Exception):
    """A request the tenant refused. The message names the method, path and status, never a credential."""


class QlikAuthError(QlikError):
    """401/403: the credentials were refused or lack a permission; the message names the setting."""


class QlikUnavailable(QlikError):
    """5xx answers, timeouts or connection errors after every retry."""


@dataclass(frozen=True)
class Retry:
    attempts: int = 5  # sends of one request before QlikUnavailable
    base: float = 0.5  # seconds; doubled per failed attempt, capped, then a uniform random part of it is waited
    cap: float = 30.0


@dataclass
class Stats:
    """What one client did, for summaries: requests sent, 429s waited out, retries."""

    requests: int = 0
    rate_limited: int = 0
    retries: int = 0


class QlikClient:
    def __init__(
        self,
        tenant: Tenant,
        requests_per_minute: int,
        *,
        window: float = 60.0,
        retry: Retry = Retry(),
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        """`window`: the budget's window in seconds (tests shorten the minute); `transport`: httpx's (tests)."""
        self.tenant = tenant
        self.stats = Stats()
        self._http = httpx.Client(
            base_url=tenant.url,
            timeout=TIMEOUT,
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": f"group-events-worker/{__version__}"},
        )
        self._origin = _origin(tenant.url)
        self._budget = Budget(requests_per_minute, window)
        self._retry, self._clock, self._sleep, self._jitter = retry, clock, sleep, jitter
        self._token: str | None = None
        self._refresh_at = 0.0

    def __repr__(self) -> str:
        return f"QlikClient(tenant={self.tenant.name!r}, url={self.tenant.url!r})"

    def __enter__(self) -> QlikClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """The JSON of a GET. Raises `QlikError` and its subclasses."""
        return self.request("GET", path, params=params).json()

    def request(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None
    ) -> httpx.Response:
        """A 2xx answer to an authenticated request (`path` relative to the tenant, or an absolute URL on it)."""
        refreshed = False
        while True:
            response = self._send(method, path, params, body, authorization=self._authorization())
            if response.status_code == 401 and self.tenant.oauth and not refreshed:
                self._token, refreshed = None, True  # revoked or expired early: one new token, one more try
                continue
            return self._checked(method, path, response)

    def pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every page of a list, following `links.next.href` (on this tenant only)."""
        page: dict[str, Any] = self.get(path, params)
        yield page
        while href := (page.get("links") or {}).get("next", {}).get("href"):
            url = urljoin(self.tenant.url + "/", href)
            if _origin(url) != self._origin:
                raise QlikError(f"GET {path}: links.next points to {_origin(url)}, not the tenant: not followed")
            page = self.get(url)
            yield page

    # ---- sending -----------------------------------------------------------------------------------------

    def _authorization(self) -> str:
        if not self.tenant.oauth:
            return "Bearer " + self.tenant.api_key.get_secret_value()
        if self._token is None or self._clock() >= self._refresh_at:
            self._fetch_token()
        assert self._token is not None
        return "Bearer " + self._token

    def _fetch_token(self) -> None:
        body = {
            "client_id": self.tenant.client_id,
            "client_secret": self.tenant.client_secret.get_secret_value(),
            "grant_type": "client_credentials",
        }
        response = self._checked("POST", TOKEN_PATH, self._send("POST", TOKEN_PATH, None, body, authorization=None))
        document = response.json()
        token, lifetime = document.get("access_token"), document.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(lifetime, int | float) or lifetime <= 0:
            raise QlikError(f"POST {TOKEN_PATH}: the answer has no access_token or expires_in")
        self._token = token
        # Renewed a minute before it expires (half its life when that is shorter), so no request carries a
        # token that expires on the way.
        self._refresh_at = self._clock() + max(lifetime - 60, lifetime / 2)
        log.info("qlik_token_fetched", tenant=self.tenant.name, expires_in=lifetime)

    def _send(
        self, method: str, path: str, params: dict[str, Any] | None, body: Any, *, authorization: str | None
    ) -> httpx.Response:
        """One request with the budget, 429s, 5xx and transport errors handled; any other answer is returned."""
        headers = {"Authorization": authorization} if authorization else {}
        failures = rate_limited = 0
        while True:
            self._wait_for_budget()
            self.stats.requests += 1
            try:
                response = self._http.request(method, path, params=params, json=body, headers=headers)
            except httpx.TransportError as error:
                self._budget.spend(self._clock())
                metrics.REQUESTS.labels(self.tenant.name, "error").inc()
                failures += 1
                self._back_off(method, path, failures, cause=type(error).__name__)
                continue
            self._budget.spend(self._clock())
            metrics.REQUESTS.labels(self.tenant.name, str(response.status_code)).inc()
            if response.status_code == 429:
                rate_limited += 1
                if rate_limited > RATE_LIMITED_MAX:
                    raise QlikUnavailable(f"{method} {_path(path)}: 429 {rate_limited} times in a row")
                wait = retry_after(response.headers.get("retry-after"), datetime.now(UTC))
                self.stats.rate_limited += 1
                metrics.RATE_LIMITED.labels(self.tenant.name).inc()
                log.warning("qlik_rate_limited", tenant=self.tenant.name, method=method, path=_path(path), wait=wait)
                self._sleep(wait)
                continue
            if response.status_code >= 500:
                failures += 1
                self._back_off(method, path, failures, cause=f"HTTP {response.status_code}")
                continue
            return response

    def _wait_for_budget(self) -> None:
        """Requests are counted when they are done, not when they leave: one at a time, so the next one leaves
        a full window after a request that ended, later than a window after it left, whatever the latency."""
        while (wait := self._budget.wait(self._clock())) > 0:
            self._sleep(wait)

    def _back_off(self, method: str, path: str, failures: int, *, cause: str) -> None:
        if failures >= self._retry.attempts:
            raise QlikUnavailable(f"{method} {_path(path)}: {cause} after {failures} attempts")
        wait = self._jitter() * min(self._retry.cap, self._retry.base * 2 ** (failures - 1))
        self.stats.retries += 1
        metrics.RETRIES.labels(self.tenant.name).inc()
        log.warning(
            "qlik_request_retry", tenant=self.tenant.name, method=method, path=_path(path), cause=cause,
            attempt=failures, wait=round(wait, 3),
        )  # fmt: skip
        self._sleep(wait)

    def _checked(self, method: str, path: str, response: httpx.Response) -> httpx.Response:
        status = response.status_code
        where = f"{method} {_path(path)} on tenant {self.tenant.name!r}: {status}"
        if status in (401, 403):
            if path == TOKEN_PATH:
                fix = f"{self.tenant.setting(CLIENT_ID)} and {CLIENT_SECRET}"
            elif self.tenant.oauth:
                fix = f"the OAuth client of {self.tenant.setting(CLIENT_ID)} (its scopes, or the TenantAdmin role)"
            else:
                fix = self.tenant.setting(API_KEY)
            what = "refused" if status == 401 else "lack a permission"
            raise QlikAuthError(f"{where}: the credentials were {what}; check {fix}")
        if status >= 400:
            raise QlikError(f"{where} {_error_title(response)}".rstrip())
        return response


def retry_after(value: str | None, now: datetime) -> float:
    """Seconds a 429's `Retry-After` asks for: a number of seconds or an HTTP date; 1 s when absent or unreadable."""
    if value is None:
        return DEFAULT_RETRY_AFTER
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - now).total_seconds())
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _path(url: str) -> str:
    """The path of a URL, without its query (cursors are long and say nothing)."""
    return urlsplit(url).path or url


def _error_title(response: httpx.Response) -> str:
    """The first error title Qlik sent (`{"errors": [{"title": ...}]}`), cut short; else nothing."""
    try:
        errors = response.json().get("errors") or []
        return str(errors[0].get("title", ""))[:200]
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""
