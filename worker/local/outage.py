"""The demo's second act, and the local tenant beside `make run`: a local Qlik tenant (worker/local/tenant.py)
whose webhook delivers to the ingest, and the webhook watch (worker/upstream/watch.py) on it.

The story `tell` runs: changes delivered by the webhook; the ingest stops; more changes, whose deliveries fail
until the tenant disables the webhook; one made while it is disabled (never even tried); the ingest comes back;
one cycle of the watch notices, re-enables the webhook and backfills the gap from the Audits API. The caller
reads the records: every change of the tenant must come out once (`expected`).
"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import SecretStr

from worker.config import Settings
from worker.local.ingest_client import IngestProcess
from worker.local.tenant import Behaviour, LocalTenant
from worker.upstream.watch import Watch

# Qlik retries longer and disables later; the demo's tenant gives up within a second.
DEMO_BEHAVIOUR = Behaviour(delivery_attempts=2, delivery_backoff=0.2, disable_after=2)
RUN_WATCH_INTERVAL_SECONDS = 15.0


def tenant_settings(settings: Settings, tenant: LocalTenant, **extra: Any) -> Settings:
    """The settings with the local tenant as the configured one (and `extra` settings)."""
    values = {"qlik_url": tenant.url, "qlik_api_key": SecretStr(tenant.api_key), "qlik_tenants_file": "", **extra}
    return settings.model_copy(update=values)


def tell(settings: Settings, ingest: IngestProcess, secret: str, say: Callable[[str], None]) -> LocalTenant:
    """Run the story against `ingest` (stopped and started again on its port); the tenant is returned served
    no longer, its audits hold every change."""
    tenant = LocalTenant(behaviour=DEMO_BEHAVIOUR)
    with tenant.serve():
        webhook_id = tenant.add_webhook(ingest.webhook_url, secret)
        watch = Watch.of(tenant_settings(settings, tenant, watch_reenable=True, watch_reconcile_interval_seconds=0))
        watch.cycle()
        say(f"local Qlik tenant {tenant.url}: webhook {webhook_id} delivers to {ingest.webhook_url}")
        sales = tenant.create_group("Sales")["id"]
        tenant.create_group("Support")
        tenant.wait_delivered()
        say(f"  2 groups created, delivered: {_deliveries(tenant)}")
        ingest.stop()
        say("  the ingest stops")
        tenant.update_group(sales, "Sales EMEA")
        ops = tenant.create_group("Operations")["id"]
        tenant.modify_users(ops, ["ann", "bob", "cid"])
        tenant.wait_delivered()
        webhook = tenant.webhooks[webhook_id]
        say(f"  3 more changes, deliveries fail: {_deliveries(tenant)}")
        say(f"  the tenant disabled the webhook: enabled={webhook.enabled}, disabledReason={webhook.disabled_reason!r}")
        tenant.create_group("Finance")
        tenant.delete_group(sales)
        say("  2 changes while it is disabled: not even tried")
        ingest.start()
        say("  the ingest is back; the watch runs one cycle:")
        watch.cycle()
        say(f"  webhook enabled again: {webhook.enabled}; the gap was backfilled from the Audits API")
        tenant.create_group("Legal")
        tenant.wait_delivered()
        watch.cycle()
        say(f"  1 change after it, delivered: {_deliveries(tenant)}")
    return tenant


def expected(tenant: LocalTenant) -> int:
    """Records the tenant's changes give, each once: one per group event, one per user of a users.modified."""
    return sum(
        len(item["data"]["affectedUsers"]) if item["eventType"].endswith("users.modified") else 1
        for item in tenant.audits
    )


@contextmanager
def beside_run(settings: Settings, ingest: IngestProcess, secret: str, say: Callable[[str], None]) -> Iterator[None]:
    """`make run` without a configured tenant: the local tenant, its webhook to the ingest, and the watch every
    `RUN_WATCH_INTERVAL_SECONDS` (re-enabling), until the block ends."""
    tenant = LocalTenant()
    with tenant.serve():
        tenant.add_webhook(ingest.webhook_url, secret)
        watch = Watch.of(tenant_settings(settings, tenant, watch_reenable=True))
        stop = threading.Event()
        thread = threading.Thread(target=watch_loop, args=(watch, stop), name="watch", daemon=True)
        thread.start()
        create = shlex.join(["curl", "-sS", "-X", "POST", f"{tenant.url}/_local/groups", "-H",
                             "Content-Type: application/json", "-d", '{"name": "Sales"}'])  # fmt: skip
        jobs = f"WORKER_QLIK_URL={tenant.url} WORKER_QLIK_API_KEY={tenant.api_key} .venv/bin/python -m worker reconcile"
        say(
            f"\nlocal Qlik tenant: {tenant.url}, its webhook delivers to the ingest, the watch checks it every "
            f"{RUN_WATCH_INTERVAL_SECONDS:.0f} s. Make a change there:\n\n  {create}\n\n"
            f"and run the upstream jobs against it:\n\n  {jobs}\n"
        )
        try:
            yield
        finally:
            stop.set()
            thread.join(10)


def watch_loop(watch: Watch, stop: threading.Event) -> None:
    while not stop.wait(RUN_WATCH_INTERVAL_SECONDS):
        watch.cycle()


def _deliveries(tenant: LocalTenant) -> str:
    statuses = [d["status"] for d in tenant.deliveries]
    return f"{statuses.count('success')} succeeded, {statuses.count('fail')} failed so far"
