"""Tenants from the settings: one from WORKER_QLIK_*, several from a JSON file of the same settings; every
problem names the variable (and the tenant of the file) and never a secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.config import ConfigError, Settings
from worker.qlik.tenants import configured, pick


def test_one_tenant_from_the_environment_with_an_api_key() -> None:
    (tenant,) = configured(Settings(qlik_url="https://acme.eu.qlikcloud.com/", qlik_api_key="k-secret"))
    assert (tenant.name, tenant.url, tenant.oauth) == ("acme.eu.qlikcloud.com", "https://acme.eu.qlikcloud.com", False)
    assert "k-secret" not in repr(tenant) and tenant.api_key.get_secret_value() == "k-secret"
    assert configured(Settings()) == []


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"qlik_url": "https://a.qlikcloud.com"}, "WORKER_QLIK_API_KEY"),
        ({"qlik_url": "https://a.qlikcloud.com", "qlik_api_key": "k", "qlik_client_id": "c"}, "exactly one"),
        ({"qlik_url": "https://a.qlikcloud.com", "qlik_client_id": "c"}, "WORKER_QLIK_CLIENT_SECRET"),
        ({"qlik_url": "a.qlikcloud.com", "qlik_api_key": "s3cr3t"}, "WORKER_QLIK_URL"),
        ({"qlik_url": "https://a.qlikcloud.com/api", "qlik_api_key": "s3cr3t"}, "base URL"),
    ],
)
def test_problems_name_the_setting(values: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named) as raised:
        configured(Settings(**values))  # type: ignore[arg-type]
    assert "s3cr3t" not in str(raised.value)


def test_several_tenants_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps({
        "acme": {"WORKER_QLIK_URL": "https://acme.eu.qlikcloud.com", "WORKER_QLIK_API_KEY": "k1"},
        "globex": {"WORKER_QLIK_URL": "https://globex.us.qlikcloud.com", "WORKER_QLIK_CLIENT_ID": "c",
                   "WORKER_QLIK_CLIENT_SECRET": "s2", "WORKER_QLIK_TENANT_ID": "t-globex"},
    }))  # fmt: skip
    tenants = configured(Settings(qlik_tenants_file=str(path)))
    assert [(t.name, t.oauth) for t in tenants] == [("acme", False), ("globex", True)]
    assert [t.name for t in pick(tenants, "t-globex")] == ["globex"]
    with pytest.raises(ConfigError, match="--tenant nope"):
        pick(tenants, "nope")
    path.write_text(json.dumps({"acme": {"WORKER_QLIK_URL": "https://a.qlikcloud.com", "WORKER_QLIK_APIKEY": "k"}}))
    with pytest.raises(ConfigError, match="unknown setting WORKER_QLIK_APIKEY"):
        configured(Settings(qlik_tenants_file=str(path)))
    path.write_text(json.dumps({"acme": {"WORKER_QLIK_URL": "https://a.qlikcloud.com"}}))
    with pytest.raises(ConfigError, match="WORKER_QLIK_API_KEY of tenant 'acme' in WORKER_QLIK_TENANTS_FILE"):
        configured(Settings(qlik_tenants_file=str(path)))
