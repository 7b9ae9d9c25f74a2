"""The webhook watch's decisions, as one pure function (`plan`): from what it observed of a tenant's webhooks
(enabled or not, their recent deliveries), the ingest's last accepted time for the tenant and the watch's own
state, which webhooks to re-enable, which failed deliveries to resend, and which intervals to backfill.

Times are milliseconds. Terms:
- checked through: every event up to that time was delivered, resent or backfilled (advanced when a cycle
  finds no trouble); where a first cycle starts without it: the ingest's last accepted time for the tenant,
  else the start of Qlik's delivery history.
- trouble: no webhook of group events at all (deleted, or never registered), a webhook disabled, or a webhook
  whose latest delivery failed after what is already covered. It started at `trouble_since` (the
  checked-through time when it was first seen: nothing after that is known to have arrived).
Rules:
1. A disabled webhook is re-enabled when the policy says so. A missing or disabled webhook sends nothing, and
   trouble that lasted past `threshold_ms` may have outlived Qlik's retries: both are backfilled at once, from
   `trouble_since` (less `margin_ms`) to now, and then every cycle from where the last backfill ended, until the
   trouble is over: the events reach Kafka during an outage of the ingest too.
2. When the trouble is over, the rest of it is backfilled (from the last backfill, or the whole trouble when it
   lasted past the threshold); shorter trouble is only resent.
3. Without trouble, failed deliveries since the checked-through time are resent once each, unless their event
   was delivered by another delivery, or a backfill of this plan or of the trouble covers them.
4. A checked-through time older than Qlik's delivery history (the watch was not running) leaves failures the
   history no longer shows: that stretch is backfilled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Final

HISTORY_MS: Final = 7 * 86_400_000  # Qlik keeps a webhook's deliveries for 7 days


@dataclass(frozen=True, slots=True)
class DeliveryView:
    id: str
    event_id: str | None
    ok: bool
    at_ms: int


@dataclass(frozen=True, slots=True)
class WebhookView:
    id: str
    enabled: bool
    reason: str | None  # why Qlik disabled it
    deliveries: tuple[DeliveryView, ...]

    def latest(self) -> DeliveryView | None:
        return max(self.deliveries, key=lambda d: d.at_ms, default=None)


@dataclass(frozen=True, slots=True)
class WatchState:
    checked_through: int | None = None
    trouble_since: int | None = None
    backfilled_through: int | None = None
    reconciled_at: int | None = None

    @classmethod
    def of(cls, values: dict[str, int]) -> WatchState:
        return cls(**{f.name: values.get(f.name) for f in fields(cls)})

    def values(self) -> dict[str, int | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class Policy:
    reenable: bool
    threshold_ms: int
    margin_ms: int
    history_ms: int = HISTORY_MS


@dataclass(frozen=True, slots=True)
class Plan:
    reenable: tuple[str, ...]
    resend: tuple[tuple[str, str], ...]  # (webhook id, delivery id)
    backfill: tuple[tuple[int, int], ...]  # [start, end] in ms
    state: WatchState
    findings: tuple[str, ...]  # for the log: what was found, in words


def known_good(state: WatchState, last_accepted: int | None, now: int, policy: Policy) -> int:
    """Up to when events are known to have arrived (see the module doc)."""
    if state.checked_through is not None:
        return state.checked_through
    return last_accepted if last_accepted is not None else now - policy.history_ms


def history_start(state: WatchState, last_accepted: int | None, now: int, policy: Policy) -> int:
    """From when the watch needs a webhook's deliveries."""
    since = known_good(state, last_accepted, now, policy)
    if state.trouble_since is not None:
        since = min(since, state.trouble_since)
    return max(now - policy.history_ms, since - policy.margin_ms)


def plan(
    now: int,
    webhooks: Sequence[WebhookView],
    last_accepted: int | None,
    state: WatchState,
    resent: frozenset[str],
    policy: Policy,
) -> Plan:
    good = known_good(state, last_accepted, now, policy)
    backfill: list[tuple[int, int]] = []
    findings: list[str] = []
    if state.checked_through is not None and state.checked_through < now - policy.history_ms:
        backfill.append((state.checked_through - policy.margin_ms, now - policy.history_ms + policy.margin_ms))
        findings.append("not watched for longer than Qlik keeps deliveries")
    handled = state.backfilled_through if state.backfilled_through is not None else good
    disabled = [w for w in webhooks if not w.enabled]
    failing = [w for w in webhooks if (last := w.latest()) is not None and not last.ok and last.at_ms > handled]
    silent = disabled or not webhooks  # nothing is sent at all
    if not webhooks:
        findings.append("no webhook delivers group events")
    findings += [f"webhook {w.id} disabled ({w.reason or 'no reason given'})" for w in disabled]
    findings += [f"webhook {w.id}: its latest delivery failed" for w in failing]

    if silent or failing:
        since = state.trouble_since if state.trouble_since is not None else good
        backfilled = state.backfilled_through
        if silent or now - since > policy.threshold_ms:
            backfill.append(((backfilled if backfilled is not None else since) - policy.margin_ms, now))
            backfilled = now
        return Plan(
            tuple(w.id for w in disabled) if policy.reenable else (),
            (),
            tuple(backfill),
            WatchState(state.checked_through, since, backfilled, state.reconciled_at),
            tuple(findings),
        )

    covered = list(backfill)  # what this plan's and the trouble's backfills cover: nothing there is resent
    if state.trouble_since is not None:
        findings.append("the trouble is over")
        whole = (state.trouble_since - policy.margin_ms, now)
        if state.backfilled_through is not None:
            backfill.append((state.backfilled_through - policy.margin_ms, now))
            covered.append(whole)
        elif now - state.trouble_since > policy.threshold_ms:
            backfill.append(whole)
            covered.append(whole)
    resend = _resends(webhooks, resent, good - policy.margin_ms, covered)
    return Plan((), resend, tuple(backfill), WatchState(now, None, None, state.reconciled_at), tuple(findings))


def _resends(
    webhooks: Iterable[WebhookView], resent: frozenset[str], since: int, covered: Sequence[tuple[int, int]]
) -> tuple[tuple[str, str], ...]:
    delivered = {d.event_id for w in webhooks for d in w.deliveries if d.ok and d.event_id is not None}
    out: list[tuple[str, str]] = []
    for webhook in webhooks:
        for d in sorted(webhook.deliveries, key=lambda d: d.at_ms):
            if d.ok or d.id in resent or d.at_ms < since or (d.event_id is not None and d.event_id in delivered):
                continue
            if any(start <= d.at_ms <= end for start, end in covered):
                continue
            if d.event_id is not None:
                delivered.add(d.event_id)  # one resend per event, whichever of its failed deliveries
            out.append((webhook.id, d.id))
    return tuple(out)
