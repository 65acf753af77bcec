"""Operator alerts: the source failing or changed, a channel disabled, a subscription file broken,
the mail server unreachable or refusing paperbot.

Each problem has a key. It is opened once (one alert), stays open while the problem lasts
(no more alerts), and is resolved once (one "resolved" alert). Alerts go to `alerts.email`
through the delivery ledger, so they are retried and never doubled like digests; without
that setting they are only logged.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from bot.config import Settings
from bot.errors import SubscriptionError
from bot.message import POLICY, email_bytes
from bot.store import Store, format_time

__all__ = ["OPERATOR", "check_alerts", "problems"]

log = logging.getLogger(__name__)

OPERATOR = "@operator"  # the ledger's subscriber id for alerts


def problems(
    store: Store, after_errors: int, subscription_errors: Iterable[SubscriptionError]
) -> dict[str, str]:
    """Every problem there is now, by key, with a line saying what it is and what to do."""
    found: dict[str, str] = {}
    for entry in store.fetch_health():
        last = entry["last"]
        key = f"source {entry['source']} {entry['listing']}"
        if entry["errors_in_a_row"] >= after_errors:
            found[key] = (
                f"Hugging Face {entry['source']} {entry['listing']} failed {entry['errors_in_a_row']} polls"
                f" in a row (last good: {entry['last_good'] or 'never'}): {last['error']}"
            )
        elif entry["errors_in_a_row"] and _looks_changed(last["error"] or ""):
            found[key] = (
                f"Hugging Face {entry['source']} {entry['listing']} looks changed: {last['error']}. "
                "paperbot sends no digest built on it; check for a paperbot update."
            )
    for row in store.suppressions():
        if row["subscriber_id"] == OPERATOR or row["channel"] == "*":
            continue  # an unsubscribe is the subscriber's choice, not a problem
        found[f"channel {row['subscriber_id']}/{row['channel']}"] = (
            f"{row['subscriber_id']}'s channel {row['channel']} is disabled: {row['reason']}"
        )
    for error in subscription_errors:
        found[f"subscription {error.path}"] = f"a subscription file is broken and skipped: {error}"
    return found


def _looks_changed(error: str) -> bool:
    # A network failure is a failed poll; these say the answer itself was not what it was.
    signs = ("no papers", "layout", "cut short", "without", "not valid", "cannot read", "changed")
    return any(sign in error for sign in signs)


def check_alerts(
    store: Store,
    settings: Settings,
    subscription_errors: Iterable[SubscriptionError],
    now: datetime,
    also: Mapping[str, str] | None = None,
    unknown: Collection[str] = (),
) -> list[str]:
    """Open alerts for new problems and resolve those that are gone; queue one mail for each
    change. Returns the lines it alerted. `also`: problems the caller saw (a transport down),
    by key; `unknown`: keys of such problems it could not tell about, left as they are."""
    current = problems(store, settings["alerts.after_errors"], subscription_errors) | dict(also or {})
    said = []
    for key, message in current.items():
        if store.open_alert(key, message, now):
            said.append(f"problem: {message}")
    for alert in store.open_alerts():
        if alert["key"] not in current and alert["key"] not in unknown:
            message = store.resolve_alert(alert["key"], now)
            if message:
                said.append(f"resolved: {message}")
    for line in said:
        log.error("operator alert: %s", line)
        if settings["alerts.email"]:
            _queue_mail(store, settings, line, now)
    return said


def _queue_mail(store: Store, settings: Settings, line: str, now: datetime) -> None:
    message = EmailMessage(policy=POLICY)
    message["From"] = settings["mail.from"]
    message["To"] = settings["alerts.email"]
    message["Subject"] = "[paperbot] " + " ".join(line.split())[:150]
    message["Date"] = format_datetime(now)
    message["Message-ID"] = make_msgid("paperbot-alert")
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(f"{line}\n\nSee `paperbot status` for the details.\n", cte="quoted-printable")
    delivery = store.reserve_delivery(
        subscriber_id=OPERATOR,
        channel="alerts",
        kind="email",
        period=f"alert {format_time(now)} {hashlib.sha256(line.encode()).hexdigest()[:12]}",
        recipient=settings["alerts.email"],
        paper_ids=[],
        window_start=now,
        window_end=now,
        now=now,
    )
    if delivery.state == "new":
        store.attach_message(
            delivery.id,
            message=email_bytes(message),
            message_id=message["Message-ID"],
            subject=line,
        )
