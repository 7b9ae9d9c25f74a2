"""`make bench-backfill`: the backfill (`worker/upstream/backfill.py`) against the local Qlik tenant, producing
to the embedded broker (Apache Kafka where Java is present, else Tansu, as `make run`): events per second read,
converted and acknowledged by Kafka, and requests per 1,000 events (4 event types, pages of 100: about 10).

The tenant holds `--events` group changes (creations, updates, deletions and users.modified, in the proportions
of `MIX`); its rate limit is Qlik's (1,000 requests a minute) and the client's budget the default (600). The
whole run is timed, reading through to the last acknowledgement; the tenant, the broker and this process share
the machine's cores. Prints a JSON line and writes bench/RESULTS-backfill.md.

    python -m bench.backfill [--events 20000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import SecretStr

from worker.config import Settings
from worker.local.stack import create_topics, start_kafka
from worker.local.tenant import LocalTenant
from worker.qlik.client import QlikClient
from worker.qlik.tenants import configured
from worker.upstream.backfill import Interval, backfill
from worker.upstream.sending import Sender

TOPIC = "bench.backfill"
MIX = (("created", 4), ("updated", 3), ("users.modified", 2), ("deleted", 1))  # out of 10 changes


def populate(tenant: LocalTenant, events: int) -> None:
    live: list[str] = []
    for i in range(events):
        kind = next(k for k, share in _cycle() if i % 10 < share)
        if kind == "created" or not live:
            live.append(tenant.create_group(f"g{i}", deliver=False)["id"])
        elif kind == "updated":
            tenant.update_group(live[i % len(live)], f"g{i}", deliver=False)
        elif kind == "users.modified":
            tenant.modify_users(live[i % len(live)], [f"u{i}", f"u{i + 1}"], deliver=False)
        else:
            tenant.delete_group(live.pop(), deliver=False)


def _cycle() -> list[tuple[str, int]]:
    """(kind, cumulative share): i % 10 below the share picks the kind."""
    out, total = [], 0
    for kind, share in MIX:
        total += share
        out.append((kind, total))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.backfill")
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    broker = start_kafka(workdir)
    try:
        create_topics(broker.address, {TOPIC: 4})
        tenant = LocalTenant("bench-tenant")
        populate(tenant, args.events)
        with tenant.serve():
            settings = Settings(kafka_bootstrap_servers=broker.address, ingest_topic=TOPIC, qlik_url=tenant.url,
                                qlik_api_key=SecretStr(tenant.api_key))  # fmt: skip
            (configured_tenant,) = configured(settings)
            now = datetime.now(UTC)
            interval = Interval(now - timedelta(hours=1), now + timedelta(hours=1))
            with QlikClient(configured_tenant, settings.qlik_requests_per_minute) as client:
                summary = backfill(client, tenant.tenant_id, interval, sender=Sender(settings), checkpoints=None,
                                   dedupe_ttl_seconds=settings.dedupe_ttl_seconds, now=now)  # fmt: skip
    finally:
        broker.stop()
    total = sum(summary.events.values())
    result = {
        "broker": broker.kind,
        "events": total,
        "seconds": summary.seconds,
        "events_per_second": round(total / summary.seconds),
        "requests": summary.requests,
        "requests_per_1000_events": round(summary.requests * 1000 / total, 2),
        "rate_limited": summary.rate_limited,
        "by_type": dict(summary.events),
    }
    print(json.dumps(result))
    Path("bench/RESULTS-backfill.md").write_text(
        "# Backfill against the local Qlik tenant (`make bench-backfill`)\n\n"
        f"{total} group events ({', '.join(f'{k} {v}' for k, v in sorted(summary.events.items()))}) read from the "
        f"local tenant's Audits API and produced to {broker.kind} (idempotent, acks=all, acknowledged before the "
        f"end): **{result['events_per_second']} events/s**, **{result['requests_per_1000_events']} requests per "
        f"1,000 events** ({summary.requests} requests, {summary.rate_limited} 429s, {summary.seconds} s), "
        "with the client's default budget of 600 requests a minute.\n\n"
        f"```json\n{json.dumps(result, indent=2)}\n```\n"
    )


if __name__ == "__main__":
    main()
