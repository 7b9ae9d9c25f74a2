"""The secrets one webhook endpoint checks signatures against, each bound to the tenant it may sign for, and
their reload from a file.

- `Keyring`: the configured secrets as keyed HMAC-SHA256 states (never shown by `repr`). A `Verifier` made
  from it per request takes the raw body chunk by chunk, as it arrives, and then says which tenants a
  signature lets the body speak for (`Grant`): every secret is compared, in constant time, whether or not an
  earlier one matched, so the time taken says nothing about which secret (or how much of a guess) was right.
- `Grant.allows`: a secret bound to a tenant grants only that tenant, so the admin of tenant A (who knows A's
  secret) cannot post events for tenant B; a bare secret grants any tenant (one tenant per ingest: the
  signature alone cannot tell tenants apart).
- `SecretsSource`: the keyring of the settings, or of a file read again when it changes (a mounted Kubernetes
  Secret is replaced atomically: its path then names a new file), so a rotation needs no restart. A file that
  becomes unreadable or invalid keeps the secrets already loaded and logs why (never a secret).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import structlog

from worker.config import SecretEntry, secrets_file_entries

log = structlog.get_logger("worker.ingest.secrets")

RELOAD_INTERVAL_SECONDS: Final = 1.0  # how often a secrets file is looked at (one stat)
SIGNATURE_SHAPE: Final = re.compile(r"\s*[0-9a-fA-F]{64}\s*")


def sign(body: bytes, secret: str) -> str:
    """The signature a sender puts on `body` under `secret`: lower-case hex HMAC-SHA256 (`Qlik-Signature`)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def well_formed(signature: str | None) -> bool:
    """64 hex digits, either case, surrounding spaces allowed: anything else cannot match, and is refused before
    the body is read."""
    return signature is not None and SIGNATURE_SHAPE.fullmatch(signature) is not None


@dataclass(frozen=True, slots=True)
class Grant:
    """The tenants a body may name after its signature matched: any (a bare secret matched) or these."""

    tenants: frozenset[str] | None  # None: any tenant

    def allows(self, named: Sequence[object]) -> bool:
        """Every tenant the body names (`worker.ingest.rules.tenants_named`) is one granted tenant; a body that
        names none is allowed only by a bare secret."""
        if self.tenants is None:
            return True
        return bool(named) and all(tenant == named[0] for tenant in named) and named[0] in self.tenants


ANY: Final = Grant(None)


@dataclass(frozen=True, slots=True)
class _Key:
    tenant: str | None
    state: hmac.HMAC  # keyed with the secret, copied per request

    def __repr__(self) -> str:
        return f"_Key(tenant={self.tenant!r})"


class Keyring:
    def __init__(self, entries: Sequence[SecretEntry]) -> None:
        self._keys = tuple(
            _Key(tenant, hmac.new(secret.encode(), digestmod=hashlib.sha256)) for tenant, secret in entries
        )

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        tenants = sorted({key.tenant or "*" for key in self._keys})
        return f"Keyring({len(self._keys)} secret(s) for {', '.join(tenants) or 'nobody'})"

    def verifier(self) -> Verifier:
        return Verifier(self._keys)


class Verifier:
    """One request's signature check: `update` with each chunk of the raw body, then `grant`."""

    __slots__ = ("_keys", "_states")

    def __init__(self, keys: Sequence[_Key]) -> None:
        self._keys = keys
        self._states = [key.state.copy() for key in keys]

    def update(self, chunk: bytes) -> None:
        for state in self._states:
            state.update(chunk)

    def grant(self, signature: str | None) -> Grant | None:
        """What the signature grants (None: it matches no secret), compared against every secret."""
        if signature is None:
            return None
        given = signature.strip().lower().encode("ascii", "replace")
        matched: list[_Key] = []
        for key, state in zip(self._keys, self._states, strict=True):
            if hmac.compare_digest(given, state.hexdigest().encode()):
                matched.append(key)
        if not matched:
            return None
        if any(key.tenant is None for key in matched):
            return ANY
        return Grant(frozenset(key.tenant for key in matched if key.tenant is not None))


class SecretsSource:
    """The current keyring of an endpoint: fixed, or reloaded from `path` when the file there changes."""

    def __init__(self, entries: Sequence[SecretEntry], path: str = "", variable: str = "") -> None:
        self.keyring = Keyring(entries)
        self._path, self._variable = path, variable
        self._seen = _identity(path) if path else None

    def reload(self) -> bool:
        """Read the file again if it changed since the last look; True when the keyring was replaced."""
        if not self._path or (seen := _identity(self._path)) == self._seen:
            return False
        self._seen = seen
        try:
            with open(self._path) as file:
                entries = secrets_file_entries(file.read())
        except (OSError, ValueError) as error:
            text = error.strerror if isinstance(error, OSError) else str(error)
            log.error(
                "secrets_file_invalid", variable=self._variable, path=self._path, error=text, kept=len(self.keyring)
            )
            return False
        self.keyring = Keyring(entries)
        log.info("secrets_reloaded", variable=self._variable, path=self._path, secrets=len(entries))
        return True

    async def watch(self, interval: float = RELOAD_INTERVAL_SECONDS) -> None:
        """Reload every `interval` seconds, until cancelled (nothing to watch without a file)."""
        while self._path:
            await asyncio.sleep(interval)
            self.reload()


def _identity(path: str) -> tuple[int, int, int] | None:
    """What changes when the file is replaced or rewritten (inode, size, modification time)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns
