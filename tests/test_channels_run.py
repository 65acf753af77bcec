"""Slack and webhooks through the whole path (`run_once`: plan, ledger, render, send) against
a real HTTP server on 127.0.0.1, with real papers and a real SQLite file.

What a team notices: a long digest arrives in Slack as numbered messages holding every paper
once, even when Slack fails in the middle; a webhook receiver gets the same id on a retry;
a deleted Slack webhook disables the channel with a reason; instant watches alert at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest
from werkzeug import Response

from bot.captures import read_capture
from bot.pipeline import make_senders, run_once
from bot.store import open_store
from bot.subscriptions import load_subscriptions
from conftest import HF

NOW = datetime(2026, 6, 12, 7, 0, tzinfo=UTC)  # 09:00 in Berlin, Friday
KEY = base64.b64encode(b"a test signing key, 32 bytes ok!").decode()


def store_real_papers(store) -> int:
    """The 123 papers of the real API captures, all first seen this morning."""
    papers = [
        p for path in sorted(HF.glob("api_daily_papers_*.json")) for c in read_capture(path) for p in c.papers
    ]
    store.save_papers(papers, NOW - timedelta(hours=2), "api:latest")
    return len({p.id for p in papers})


def write(folder, name: str, text: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.toml").write_text(text, encoding="utf-8")


class Script:
    """Answers the next requests as scripted (a status, or a (status, headers) pair), then 200."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.bodies: list[bytes] = []
        self.headers: list[dict] = []

    def __call__(self, request):
        answer = self.answers.pop(0) if self.answers else 200
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        self.headers.append(dict(request.headers))
        if status == 200:
            self.bodies.append(request.get_data())
        return Response(
            "ok" if status == 200 else "no_service" if status == 410 else "error", status, headers
        )


def run(tmp_path, make_settings, now=NOW):
    people = list(load_subscriptions(tmp_path / "subscriptions").subscribers)
    settings = make_settings(webhook_allow_private="true")
    senders = make_senders(settings, people)
    with open_store(tmp_path / "paperbot.db") as store:
        try:
            return run_once(
                store, settings, people, fetch=lambda: "", senders=senders, clock=lambda: now
            ), store
        finally:
            for sender in senders.values():
                sender.close()


@pytest.fixture
def stored(tmp_path):
    with open_store(tmp_path / "paperbot.db") as store:
        return store_real_papers(store)


def test_a_long_slack_digest_survives_a_failure_in_the_middle(
    tmp_path, make_settings, httpserver, monkeypatch, stored
):
    script = Script(200, 500)  # the first part goes through, the second fails
    httpserver.expect_request("/hook", method="POST").respond_with_handler(script)
    monkeypatch.setenv("TEAM_SLACK_URL", httpserver.url_for("/hook"))
    write(
        tmp_path / "subscriptions",
        "team",
        'timezone = "Europe/Berlin"\nmax_papers = 200\n'
        '[channels]\nlab = { kind = "slack", url = "${TEAM_SLACK_URL}" }\n'
        "[[watch]]\nname = \"everything\"\nquery = 'the OR a OR of'\n",
    )

    first, _ = run(tmp_path, make_settings)
    assert [o.status for o in first.outcomes] == ["retry"]
    assert len(script.bodies) == 1
    second, _ = run(tmp_path, make_settings, NOW + timedelta(hours=1))
    assert [o.status for o in second.outcomes] == ["sent"]

    messages = [json.loads(body) for body in script.bodies]
    headers = [m["blocks"][0]["text"]["text"] for m in messages]
    assert len(messages) >= 3 and all(f"({n}/{len(messages)})" in h for n, h in enumerate(headers, 1))
    assert len(set(headers)) == len(headers)  # part 1 was not posted again after the failure
    linked = [b["text"]["text"] for m in messages for b in m["blocks"] if b["type"] == "section"]
    assert all(len(m["blocks"]) <= 50 for m in messages)
    shown = first.planned[0].shown
    assert shown >= 100 and len(linked) == shown  # every paper, once


def test_a_webhook_retry_carries_the_same_id_and_a_valid_signature(
    tmp_path, make_settings, httpserver, monkeypatch, stored
):
    script = Script((429, {"Retry-After": "1"}))
    httpserver.expect_request("/receive", method="POST").respond_with_handler(script)
    monkeypatch.setenv("LAB_HOOK_URL", httpserver.url_for("/receive"))
    monkeypatch.setenv("LAB_HOOK_SECRET", f"whsec_{KEY}")
    write(
        tmp_path / "subscriptions",
        "lab",
        'timezone = "Europe/Berlin"\n[channels]\nhook = { kind = "webhook", url = "${LAB_HOOK_URL}",'
        ' secret = "${LAB_HOOK_SECRET}" }\n[[watch]]\nname = "attention"\nquery = "attention"\n',
    )
    assert [o.status for o in run(tmp_path, make_settings)[0].outcomes] == ["retry"]
    assert [o.status for o in run(tmp_path, make_settings, NOW + timedelta(hours=1))[0].outcomes] == ["sent"]

    first, retried = script.headers
    assert first["Webhook-Id"] == retried["Webhook-Id"]
    body = script.bodies[0]
    signed = f"{retried['Webhook-Id']}.{retried['Webhook-Timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(base64.b64decode(KEY), signed, hashlib.sha256).digest()).decode()
    assert f"v1,{expected}" in retried["Webhook-Signature"].split()
    payload = json.loads(body)
    assert payload["type"] == "paperbot.matches.v1" and payload["subscriber"]["id"] == "lab"
    assert payload["papers"] and all("attention" in json.dumps(p).lower() for p in payload["papers"])


def test_a_deleted_slack_webhook_disables_the_channel_and_email_still_goes(
    tmp_path, make_settings, httpserver, monkeypatch, stored
):
    httpserver.expect_request("/gone", method="POST").respond_with_handler(Script(410))
    monkeypatch.setenv("OLD_SLACK_URL", httpserver.url_for("/gone"))
    write(
        tmp_path / "subscriptions",
        "carol",
        'email = "carol@example.org"\ntimezone = "Europe/Berlin"\n[channels]\nemail = true\n'
        'old = { kind = "slack", url = "${OLD_SLACK_URL}" }\n[[watch]]\nname = "w"\nquery = "attention"\n',
    )
    monkeypatch.chdir(tmp_path)
    report, _ = run(tmp_path, make_settings)
    by_channel = {o.delivery.channel: o for o in report.outcomes}
    assert by_channel["email"].status == "sent"
    assert by_channel["old"].status == "failed" and "channel disabled" in by_channel["old"].detail
    with open_store(tmp_path / "paperbot.db") as store:
        assert "the channel is gone" in store.suppression("carol", "old")
        assert [a["key"] for a in store.open_alerts()] == ["channel carol/old"]  # the operator is told
    later, _ = run(tmp_path, make_settings, NOW + timedelta(days=1))
    assert all(o.delivery.channel != "old" for o in later.outcomes)


def test_instant_watches_alert_at_once_and_digest_watches_wait(
    tmp_path, make_settings, httpserver, monkeypatch, stored
):
    script = Script()
    httpserver.expect_request("/hook", method="POST").respond_with_handler(script)
    monkeypatch.setenv("DAN_SLACK_URL", httpserver.url_for("/hook"))
    write(
        tmp_path / "subscriptions",
        "dan",
        'timezone = "Europe/Berlin"\nschedule = "daily 18:00"\n'
        '[channels]\nlab = { kind = "slack", url = "${DAN_SLACK_URL}" }\n'
        '[[watch]]\nname = "now"\nquery = "attention"\ndelivery = "instant"\n'
        '[[watch]]\nname = "later"\nquery = "agent*"\n',
    )
    report, _ = run(tmp_path, make_settings)  # 09:00 in Berlin: yesterday's 18:00 digest is due too
    periods = sorted(o.delivery.period for o in report.outcomes)
    assert periods[0] == "2026-06-11" and periods[1].startswith("instant ")
    instant = next(o for o in report.outcomes if o.delivery.period.startswith("instant"))
    digest = next(o for o in report.outcomes if not o.delivery.period.startswith("instant"))
    assert not set(instant.delivery.paper_ids) & set(digest.delivery.paper_ids)
    again, _ = run(tmp_path, make_settings, NOW + timedelta(minutes=30))
    assert again.outcomes == ()  # nothing new: no second alert


def test_a_watch_routed_to_one_channel_shows_only_in_that_channels_digest(tmp_path, monkeypatch, stored):
    """A watch with `channels = ["lab"]` feeds the lab's digest alone: the email digest leaves
    out the papers only it found, and does not name it on the papers another watch found too."""
    from bot.deliver import plan_digests

    monkeypatch.setenv("DAN_SLACK_URL", "https://hooks.slack.com/services/T0/B0/x")
    write(
        tmp_path / "subscriptions",
        "dan",
        'email = "dan@example.org"\ntimezone = "Europe/Berlin"\nschedule = "daily 08:00"\n'
        '[channels]\nemail = true\nlab = { kind = "slack", url = "${DAN_SLACK_URL}" }\n'
        '[[watch]]\nname = "lab only"\nquery = "model*"\nchannels = ["lab"]\n'
        '[[watch]]\nname = "everywhere"\nquery = "agent*"\n',
    )
    people = list(load_subscriptions(tmp_path / "subscriptions").subscribers)
    with open_store(tmp_path / "paperbot.db") as store:
        plans, _ = plan_digests(store, people, NOW, kinds=("email", "slack"))
    by_channel = {plan.channel.name: plan for plan in plans}
    lab = {m.paper.id: m.watches for m in by_channel["lab"].matches}
    assert {("lab only",), ("lab only", "everywhere"), ("everywhere",)} <= set(lab.values())
    expected = {
        paper_id: tuple(w for w in names if w != "lab only")
        for paper_id, names in lab.items()
        if names != ("lab only",)
    }
    assert {m.paper.id: m.watches for m in by_channel["email"].matches} == expected
