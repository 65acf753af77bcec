"""Operator alerts: one when a problem starts, none while it lasts, one when it is resolved;
mailed through the ledger to a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import email
from datetime import UTC, datetime, timedelta
from email import policy

from bot.alerts import check_alerts
from bot.channels.email import SmtpSender
from bot.deliver import send_due
from bot.errors import SubscriptionError
from bot.store import open_store

T0 = datetime(2026, 6, 12, 7, 0, tzinfo=UTC)


def poll(store, moment, status, error=None):
    store.record_fetch(
        url="https://huggingface.co/api/daily_papers",
        source="api",
        listing="latest",
        started_at=moment,
        status=status,
        count=0 if error else 30,
        error=error,
    )


def test_a_failing_source_is_alerted_once_and_its_recovery_once(tmp_path, make_settings, smtp_server):
    settings = make_settings(
        alerts_email="ops@example.org", alerts_after_errors="3", mail_from="bot@example.org"
    )
    sender = SmtpSender(host="127.0.0.1", port=smtp_server.port, sender="bot@example.org", security="none")
    said = []
    with open_store(tmp_path / "paperbot.db") as store:
        poll(store, T0, "ok")
        for n in range(1, 6):  # five failed polls: the alert comes at the third, once
            moment = T0 + timedelta(minutes=30 * n)
            poll(store, moment, "error", "connection refused (https://huggingface.co/api/daily_papers)")
            said += check_alerts(store, settings, (), moment)
            send_due(store, {"email": sender}, lambda m=moment: m)
        poll(store, T0 + timedelta(hours=4), "ok")
        said += check_alerts(store, settings, (), T0 + timedelta(hours=4))
        send_due(store, {"email": sender}, lambda: T0 + timedelta(hours=4))
    sender.close()
    assert [line.split(":")[0] for line in said] == ["problem", "resolved"]
    subjects = [
        email.message_from_bytes(m, policy=policy.default)["Subject"]
        for _, _, m in smtp_server.handler.messages
    ]
    assert len(subjects) == 2
    assert "failed 3 polls in a row" in subjects[0] and subjects[1].startswith("[paperbot] resolved")
    assert all(to == ["ops@example.org"] for _, to, _ in smtp_server.handler.messages)


def test_a_broken_subscription_file_is_alerted_until_fixed(tmp_path, make_settings):
    settings = make_settings()  # no alerts.email: the log only
    broken = SubscriptionError("subscriptions/bob.toml", "timezone", "unknown time zone 'Europe/Berln'", 3)
    with open_store(tmp_path / "paperbot.db") as store:
        first = check_alerts(store, settings, (broken,), T0)
        again = check_alerts(store, settings, (broken,), T0 + timedelta(hours=1))
        fixed = check_alerts(store, settings, (), T0 + timedelta(hours=2))
        assert store.delivery_counts() == {}  # nowhere to mail them
    assert len(first) == 1 and "bob.toml:3" in first[0] and again == []
    assert len(fixed) == 1 and fixed[0].startswith("resolved")
