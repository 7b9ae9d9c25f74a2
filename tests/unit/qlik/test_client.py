"""The Qlik API client against httpx's mock transport, on a fake clock: the budget (property-tested), 429s waited
out for their Retry-After, 5xx and connection errors retried then given up, OAuth tokens fetched, reused,
renewed and retried once after a 401, pagination on the tenant only, and no credential in a repr, an error or a
log line."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from worker.qlik.budget import Budget
from worker.qlik.client import QlikAuthError, QlikClient, QlikError, QlikUnavailable, Retry, retry_after
from worker.qlik.tenants import Tenant

KEY, CLIENT_SECRET = "api-key-do-not-print", "client-secret-do-not-print"
URL = "https://acme.eu.qlikcloud.com"
Handler = Callable[[httpx.Request], httpx.Response]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def tenant(*, oauth: bool = False) -> Tenant:
    if oauth:
        return Tenant("acme", URL, SecretStr(""), "client-1", SecretStr(CLIENT_SECRET), "", "environment")
    return Tenant("acme", URL, SecretStr(KEY), "", SecretStr(""), "", "environment")


def client(handler: Handler, clock: FakeClock, *, oauth: bool = False, per_minute: int = 1000) -> QlikClient:
    return QlikClient(
        tenant(oauth=oauth), per_minute, transport=httpx.MockTransport(handler), clock=clock, sleep=clock.sleep,
        jitter=lambda: 1.0, retry=Retry(attempts=3, base=0.5, cap=30),
    )  # fmt: skip


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"data": [], "links": {"self": {"href": str(request.url)}}})


@given(st.lists(st.floats(0, 5), min_size=1, max_size=60), st.integers(1, 10), st.floats(0.5, 10))
def test_the_budget_never_lets_more_than_its_limit_into_any_window(gaps: list[float], limit: int, window: float):
    budget, now, sent = Budget(limit, window), 0.0, []
    for gap in gaps:
        now += gap
        while (wait := budget.wait(now)) > 0:  # as the client does: a sum may round a hair short
            now += wait
        budget.spend(now)
        sent.append(now)
    for start in sent:
        assert len([t for t in sent if start <= t < start + window]) <= limit


def test_requests_wait_for_the_budget() -> None:
    clock = FakeClock()
    with client(ok, clock, per_minute=3) as qlik:
        for _ in range(4):
            qlik.get("/api/v1/groups")
    assert clock.slept == [60.0]


def test_a_429_is_waited_out_for_its_retry_after_then_sent_again() -> None:
    clock, answers = FakeClock(), iter([429, 429, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        return httpx.Response(status, headers={"Retry-After": "13"}) if status == 429 else ok(request)

    with client(handler, clock) as qlik:
        assert qlik.get("/api/v1/audits") == {"data": [], "links": {"self": {"href": f"{URL}/api/v1/audits"}}}
        assert clock.slept == [13.0, 13.0] and qlik.stats.rate_limited == 2 and qlik.stats.requests == 3


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after("7", now) == 7.0
    assert retry_after("Wed, 01 May 2024 12:00:30 GMT", now) == 30.0
    assert retry_after(None, now) == retry_after("soon", now) == 1.0


def test_5xx_and_connection_errors_are_retried_with_back_off_then_given_up() -> None:
    clock, answers = FakeClock(), iter(["refused", 503, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if answer == "refused":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(503) if answer == 503 else ok(request)

    with client(handler, clock) as qlik:
        qlik.get("/api/v1/groups")
        assert clock.slept == [0.5, 1.0] and qlik.stats.retries == 2
    with client(lambda _r: httpx.Response(502), FakeClock()) as qlik, pytest.raises(QlikUnavailable, match="502"):
        qlik.get("/api/v1/groups")


def test_a_refused_api_key_names_the_setting_and_not_the_key() -> None:
    with client(lambda _r: httpx.Response(401), FakeClock()) as qlik, pytest.raises(QlikAuthError) as raised:
        qlik.get("/api/v1/groups")
    assert "WORKER_QLIK_API_KEY" in str(raised.value) and KEY not in str(raised.value)


def test_oauth_tokens_are_fetched_reused_renewed_and_retried_once_after_a_401() -> None:
    clock, tokens, seen = FakeClock(), iter(["t1", "t2", "t3"]), []
    revoked = {"t2"}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            assert b"client_credentials" in request.content
            return httpx.Response(200, json={"access_token": next(tokens), "expires_in": 600})
        token = request.headers["authorization"].removeprefix("Bearer ")
        seen.append(token)
        return httpx.Response(401) if token in revoked else ok(request)

    with client(handler, clock, oauth=True) as qlik:
        qlik.get("/api/v1/groups")
        qlik.get("/api/v1/groups")
        clock.now += 541  # within a minute of expiry: renewed before use
        qlik.get("/api/v1/groups")  # t2 is refused: one new token, one more try
    assert seen == ["t1", "t1", "t2", "t3"]


def test_refused_client_credentials_name_the_settings() -> None:
    with client(lambda _r: httpx.Response(401), FakeClock(), oauth=True) as qlik, pytest.raises(QlikAuthError) as e:
        qlik.get("/api/v1/groups")
    assert "WORKER_QLIK_CLIENT_ID" in str(e.value) and CLIENT_SECRET not in str(e.value)


def test_pages_follow_next_links_on_the_tenant_and_never_elsewhere() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "next" in request.url.params:
            return httpx.Response(200, json={"data": [2], "links": {"next": {"href": "https://evil.example/x"}}})
        return httpx.Response(200, json={"data": [1], "links": {"next": {"href": f"{URL}/api/v1/groups?next=c"}}})

    with client(handler, FakeClock()) as qlik:
        pages = qlik.pages("/api/v1/groups", {"limit": 1})
        assert next(pages)["data"] == [1] and next(pages)["data"] == [2]
        with pytest.raises(QlikError, match="not followed"):
            next(pages)


def test_no_credential_in_reprs_errors_or_log_lines() -> None:
    clock, tokens = FakeClock(), iter(["token-do-not-print-1", "token-do-not-print-2"])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": next(tokens), "expires_in": 2})
        return httpx.Response(429, headers={"Retry-After": "1"}) if clock.now < 1001 else httpx.Response(500)

    with structlog.testing.capture_logs() as lines, client(handler, clock, oauth=True) as qlik:
        with pytest.raises(QlikUnavailable) as raised:
            qlik.get("/api/v1/groups")
        text = " ".join([repr(qlik), repr(qlik.tenant), str(raised.value), repr(lines)])
    assert lines and "qlik_rate_limited" in text and "qlik_request_retry" in text
    assert not [secret for secret in (KEY, CLIENT_SECRET, "token-do-not-print") if secret in text]
