"""Which Qlik Cloud tenants the upstream jobs talk to, and with which credentials, from the settings.

One tenant: `WORKER_QLIK_URL` with `WORKER_QLIK_API_KEY`, or `WORKER_QLIK_CLIENT_ID` + `WORKER_QLIK_CLIENT_SECRET`
(an OAuth2 machine-to-machine client), optionally `WORKER_QLIK_TENANT_ID`. Several: `WORKER_QLIK_TENANTS_FILE`, a
JSON object of tenant name -> an object of the same variables:

    {"acme": {"WORKER_QLIK_URL": "https://acme.eu.qlikcloud.com", "WORKER_QLIK_API_KEY": "..."},
     "globex": {"WORKER_QLIK_URL": "https://globex.us.qlikcloud.com", "WORKER_QLIK_CLIENT_ID": "...",
                "WORKER_QLIK_CLIENT_SECRET": "..."}}

Secrets are `SecretStr` from the moment they are read: their repr, str and every error say `**********`.
A problem raises `ConfigError` naming the variable (and the tenant of the file) to fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr

from worker.config import ConfigError, Settings

URL = "WORKER_QLIK_URL"
API_KEY = "WORKER_QLIK_API_KEY"
CLIENT_ID = "WORKER_QLIK_CLIENT_ID"
CLIENT_SECRET = "WORKER_QLIK_CLIENT_SECRET"
TENANT_ID = "WORKER_QLIK_TENANT_ID"
FILE = "WORKER_QLIK_TENANTS_FILE"
KNOWN = frozenset({URL, API_KEY, CLIENT_ID, CLIENT_SECRET, TENANT_ID})


@dataclass(frozen=True)
class Tenant:
    """One configured tenant. `where` says where its settings came from, for error messages."""

    name: str
    url: str  # scheme://host[:port], no trailing slash
    api_key: SecretStr
    client_id: str
    client_secret: SecretStr
    tenant_id: str  # empty: ask the tenant
    where: str

    @property
    def oauth(self) -> bool:
        return bool(self.client_id)

    def setting(self, variable: str) -> str:
        """How an operator names one of this tenant's settings: the variable, or the variable in the file."""
        return variable if self.where == "environment" else f"{variable} of tenant {self.name!r} in {self.where}"


def configured(settings: Settings) -> list[Tenant]:
    """The tenants of the settings: the file's, else the one of `WORKER_QLIK_URL`, else none."""
    if settings.qlik_tenants_file:
        return _from_file(Path(settings.qlik_tenants_file))
    if not settings.qlik_url:
        return []
    values: dict[str, str | SecretStr] = {
        URL: settings.qlik_url,
        API_KEY: settings.qlik_api_key,
        CLIENT_ID: settings.qlik_client_id,
        CLIENT_SECRET: settings.qlik_client_secret,
        TENANT_ID: settings.qlik_tenant_id,
    }
    return [_tenant(_host(settings.qlik_url), values, "environment")]


def pick(tenants: list[Tenant], name: str | None) -> list[Tenant]:
    """All tenants, or the one named `name` (by its name or its tenant id)."""
    if name is None:
        return tenants
    chosen = [t for t in tenants if name in (t.name, t.tenant_id)]
    if not chosen:
        raise ConfigError(f"--tenant {name}: not configured (configured: {', '.join(t.name for t in tenants)})")
    return chosen


def _from_file(path: Path) -> list[Tenant]:
    where = f"{FILE} ({path})"
    try:
        document = json.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"{FILE}: cannot read {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{FILE}: {path} is not JSON (line {error.lineno})") from None
    if not isinstance(document, dict) or not document:
        raise ConfigError(f"{FILE}: {path} must be a JSON object of tenant name -> settings")
    tenants = []
    for name, values in document.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: tenant {name!r} must be an object of {URL} and its credentials")
        if unknown := set(values) - KNOWN:
            raise ConfigError(f"{where}: tenant {name!r}: unknown setting {sorted(unknown)[0]}")
        secret_values: dict[str, str | SecretStr] = {
            k: SecretStr(str(v)) if k in (API_KEY, CLIENT_SECRET) else str(v) for k, v in values.items()
        }
        tenants.append(_tenant(str(name), secret_values, where))
    return tenants


def _secret(value: str | SecretStr | None) -> SecretStr:
    return value if isinstance(value, SecretStr) else SecretStr(value or "")


def _tenant(name: str, values: dict[str, str | SecretStr], where: str) -> Tenant:
    url = str(values.get(URL) or "").rstrip("/")
    draft = Tenant(
        name,
        url,
        _secret(values.get(API_KEY)),
        str(values.get(CLIENT_ID) or ""),
        _secret(values.get(CLIENT_SECRET)),
        str(values.get(TENANT_ID) or ""),
        where,
    )
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.path not in ("", "/"):
        raise ConfigError(
            f"{draft.setting(URL)}: expected the tenant's base URL, like https://<tenant>.<region>"
            f".qlikcloud.com (got {url!r})"
        )
    has_key = bool(draft.api_key.get_secret_value())
    has_client = bool(draft.client_id) or bool(draft.client_secret.get_secret_value())
    if has_key == has_client:
        raise ConfigError(
            f"{draft.setting(API_KEY)}, or {draft.setting(CLIENT_ID)} with {CLIENT_SECRET}: set exactly one way "
            "to authenticate"
        )
    if has_client and not (draft.client_id and draft.client_secret.get_secret_value()):
        missing = CLIENT_SECRET if draft.client_id else CLIENT_ID
        raise ConfigError(f"{draft.setting(missing)}: required with the other half of the OAuth client")
    return draft


def _host(url: str) -> str:
    return urlsplit(url).hostname or url
