"""Apprise: a long digest's text reaches a real HTTP server on 127.0.0.1 (posing as a
Mattermost incoming webhook, a service that takes 4,000 characters a message) split into
messages that fit, none of it cut. Skipped without the
optional apprise package (pip install 'paperbot[apprise]')."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from werkzeug import Response

from bot.captures import read_capture
from bot.errors import PermanentError, TransientError
from bot.match import WatchIndex, match_papers
from bot.render import DigestLinks, build_digest, render_digest
from bot.store import Delivery
from bot.subscriptions import read_subscription
from conftest import HF

apprise = pytest.importorskip(
    "apprise", reason="the optional apprise package is not installed: pip install 'paperbot[apprise]'"
)
from bot.channels.apprise import AppriseSender  # noqa: E402

TOKEN = "3ccdd113474722377935511fc85d3dd4"
NOW = datetime(2026, 6, 12, 7, 0, tzinfo=UTC)
LINKS = DigestLinks(
    list_url="https://paperbot.example.org/digest/2026-06-12/t",
    unsubscribe_url="https://paperbot.example.org/unsubscribe/t",
    manage_url="https://paperbot.example.org/manage/t",
)


def long_digest(tmp_path):
    path = tmp_path / "bob.toml"
    path.write_text(
        'name = "Bob"\nemail = "bob@example.org"\ntimezone = "Europe/Berlin"\nmax_papers = 200\n'
        "[[watch]]\nname = \"broad\"\nquery = 'the OR a OR model'\n",
        encoding="utf-8",
    )
    bob = read_subscription(path)
    papers = [
        p for f in sorted(HF.glob("api_daily_papers_*.json")) for c in read_capture(f) for p in c.papers
    ]
    return build_digest(bob, match_papers(papers, WatchIndex([bob])), generated_at=NOW, links=LINKS)


def delivery(text: str, subject: str) -> Delivery:
    return Delivery(
        id=3,
        subscriber_id="bob",
        channel="chat",
        kind="apprise",
        period="2026-06-12",
        recipient="${BOB_APPRISE_URL}",
        state="sending",
        attempts=1,
        paper_ids=(),
        message=text.encode("utf-8"),
        subject=subject,
    )


def test_a_long_digest_arrives_split_to_fit_the_service(tmp_path, httpserver):
    httpserver.expect_request(f"/hooks/{TOKEN}", method="POST").respond_with_data("ok")
    digest = long_digest(tmp_path)
    rendered = render_digest(digest)
    url = f"mmost://127.0.0.1:{httpserver.port}/{TOKEN}"
    limit = apprise.Apprise.instantiate(url).body_maxlen
    assert len(rendered.text) > 2 * limit  # too long for one message

    AppriseSender(lambda d: url).send(delivery(rendered.text, rendered.subject))

    texts = [json.loads(request.get_data())["text"] for request, _ in httpserver.log]
    assert len(texts) >= 3
    assert all(len(text) <= limit for text in texts)
    joined = "".join(texts)
    for match in digest.matches[: rendered.shown]:  # every paper's page is in some message
        assert match.paper.hf_url in joined
    assert "Unsubscribe (one click): https://paperbot.example.org/unsubscribe/t" in joined


def test_a_failing_service_is_transient_and_a_bad_url_permanent(httpserver):
    httpserver.expect_request("/notify", method="POST").respond_with_response(Response("down", 500))
    url = f"json://127.0.0.1:{httpserver.port}/notify"
    with pytest.raises(TransientError, match="Apprise could not deliver"):
        AppriseSender(lambda d: url).send(delivery("hello", "paperbot"))
    with pytest.raises(PermanentError, match="cannot read the URL"):
        AppriseSender(lambda d: "nosuchservice://x").send(delivery("hello", "paperbot"))
