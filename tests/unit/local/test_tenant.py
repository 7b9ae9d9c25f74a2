"""The local Qlik tenant's API (worker/local/tenant.py) in process: the documented shapes the client reads,
audits filtered by type and time and paged with `links.next`, 401 without a valid key or token, OAuth client
credentials, 429 with Retry-After past the budget (and requests that come before it counted as early), the
occasional 500, and webhooks enabled again with a JSON Patch. Deliveries to a real ingest:
tests/integration/upstream/."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from worker.local.tenant import Behaviour, LocalTenant
from worker.qlik.api import AuditItem, Group, Webhook


@pytest.fixture
def tenant() -> LocalTenant:
    tenant = LocalTenant("t-1")
    tenant.url = "http://testserver"
    return tenant


def auth(tenant: LocalTenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.api_key}"}


def test_audits_are_filtered_sorted_and_paged_with_next_links(tenant: LocalTenant) -> None:
    group = tenant.create_group("Sales")
    tenant.update_group(group["id"], "Sales EU")
    tenant.create_group("Ops")
    client = TestClient(tenant.app)
    params = {"eventType": "com.qlik.v1.group.created", "sort": "+eventTime", "limit": 1}
    first = client.get("/api/v1/audits", params=params, headers=auth(tenant)).json()
    second = client.get(first["links"]["next"]["href"], headers=auth(tenant)).json()
    items = [AuditItem.model_validate(i) for i in first["data"] + second["data"]]
    assert [i.data["name"] for i in items if i.data] == ["Sales", "Ops"] and "next" not in second["links"]
    assert items[0].event_id and items[0].event_time < items[1].event_time
    span = f"{tenant.audits[1]['eventTime']}/{tenant.audits[2]['eventTime']}"
    window = client.get("/api/v1/audits", params={"eventTime": span}, headers=auth(tenant)).json()["data"]
    assert [i["eventType"] for i in window] == ["com.qlik.v1.group.created", "com.qlik.v1.group.updated"]
    groups = client.get("/api/v1/groups", headers=auth(tenant)).json()["data"]
    assert sorted(Group.model_validate(g).name for g in groups) == ["Ops", "Sales EU"]


def test_no_valid_credential_is_a_401_and_oauth_tokens_work(tenant: LocalTenant) -> None:
    client = TestClient(tenant.app)
    assert client.get("/api/v1/groups").status_code == 401
    assert client.get("/api/v1/groups", headers={"Authorization": "Bearer nope"}).status_code == 401
    wrong = {"client_id": tenant.client_id, "client_secret": "x", "grant_type": "client_credentials"}
    assert client.post("/oauth/token", json=wrong).status_code == 401
    token = client.post("/oauth/token", json={**wrong, "client_secret": tenant.client_secret}).json()
    assert token["expires_in"] == 3600
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    assert client.get("/api/v1/users/me", headers=headers).json()["tenantId"] == "t-1"


def test_past_the_budget_a_429_says_how_long_to_wait_and_early_requests_are_counted() -> None:
    tenant = LocalTenant(behaviour=Behaviour(requests_per_window=2, window=30))
    client = TestClient(tenant.app)
    assert [client.get("/api/v1/groups", headers=auth(tenant)).status_code for _ in range(2)] == [200, 200]
    refused = client.get("/api/v1/groups", headers=auth(tenant))
    assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 30
    assert refused.json()["errors"][0]["code"] == "HTTP-429"
    assert tenant.early == 0
    client.get("/api/v1/groups", headers=auth(tenant))
    assert tenant.early == 1


def test_some_reads_fail_with_500_at_the_configured_rate() -> None:
    tenant = LocalTenant(behaviour=Behaviour(error_rate=0.5), seed=7)
    client = TestClient(tenant.app)
    statuses = [client.get("/api/v1/groups", headers=auth(tenant)).status_code for _ in range(40)]
    assert 5 < statuses.count(500) < 35 and set(statuses) == {200, 500}


def test_the_local_control_routes_make_changes_without_credentials(tenant: LocalTenant) -> None:
    client = TestClient(tenant.app)
    created = client.post("/_local/groups", json={"name": "Sales"})
    assert created.status_code == 201 and tenant.groups[created.json()["id"]]["name"] == "Sales"
    assert client.delete(f"/_local/groups/{created.json()['id']}").status_code == 204
    assert tenant.groups == {} and [a["eventType"][-7:] for a in tenant.audits] == ["created", "deleted"]
    assert tenant.requests == []  # not API requests: no budget spent


def test_a_disabled_webhook_is_enabled_again_by_a_json_patch(tenant: LocalTenant) -> None:
    webhook_id = tenant.add_webhook("http://127.0.0.1:9/none", "s" * 32)
    hook = tenant.webhooks[webhook_id]
    hook.enabled, hook.disabled_reason = False, "3 deliveries in a row failed"
    client = TestClient(tenant.app)
    listed = Webhook.model_validate(client.get("/api/v1/webhooks", headers=auth(tenant)).json()["data"][0])
    assert (listed.enabled, listed.disabled_reason) == (False, "3 deliveries in a row failed")
    patch = [{"op": "replace", "path": "/enabled", "value": True}]
    assert client.patch(f"/api/v1/webhooks/{webhook_id}", json=patch, headers=auth(tenant)).status_code == 204
    assert hook.enabled and hook.disabled_reason is None
    resend = f"/api/v1/webhooks/{webhook_id}/deliveries/unknown/actions/resend"
    assert client.post(resend, headers=auth(tenant)).status_code == 404
