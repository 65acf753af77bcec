"""Slack: Block Kit messages from real papers, posted to a real HTTP server on 127.0.0.1.

What a subscriber notices: a long digest arrives as a few numbered messages that Slack
accepts (within its limits) and that hold every paper once; a title that tries to mention
@channel or plant a link shows as plain text; and what the ledger notices: each answer
Slack can give (429, 5xx, a hang, a deleted webhook) is the right kind of error.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from werkzeug import Response

from bot.captures import read_capture
from bot.channels.slack import SlackSender
from bot.chat import MAX_BLOCKS, MAX_HEADER, MAX_TEXT, slack_length, slack_messages
from bot.errors import ChannelGone, PermanentError, TransientError
from bot.match import Match, WatchIndex, match_papers
from bot.models import Paper
from bot.query import Hit
from bot.render import DigestLinks, build_digest
from bot.store import Delivery
from bot.subscriptions import read_subscription
from conftest import HF

NOW = datetime(2026, 6, 12, 7, 0, tzinfo=UTC)
LINKS = DigestLinks(
    list_url="https://paperbot.example.org/digest/2026-06-12/t",
    unsubscribe_url="https://paperbot.example.org/unsubscribe/t",
    manage_url="https://paperbot.example.org/manage/t",
)
EVIL = "<!channel> <https://evil.example|click>"
# Our links only: a paper's pages, its code and project page, and paperbot's own pages.
OUR_LINK = re.compile(r"<(https://[^|<> ]+)\|([^<>]*)>")


def real_papers() -> list[Paper]:
    """Every paper of the real Hugging Face API captures in tests/fixtures/hf (123 papers)."""
    return [
        paper
        for path in sorted(HF.glob("api_daily_papers_*.json"))
        for capture in read_capture(path)
        for paper in capture.papers
    ]


def subscriber(tmp_path: Path, query: str = "the OR a OR model", max_papers: int = 200):
    path = tmp_path / "bob.toml"
    path.write_text(
        'name = "Bob"\nemail = "bob@example.org"\ntimezone = "Europe/Berlin"\n'
        f"max_papers = {max_papers}\n"
        f'[channels]\nteam = {{ kind = "slack", url = "${{BOB_SLACK_URL}}" }}\n'
        f"[[watch]]\nname = \"broad\"\nquery = '{query}'\n",
        encoding="utf-8",
    )
    return read_subscription(path)


def digest_of(tmp_path: Path, papers: list[Paper], **options):
    bob = subscriber(tmp_path, **options)
    matches = match_papers(papers, WatchIndex([bob]))
    return build_digest(bob, matches, generated_at=NOW, links=LINKS, channel="team")


def delivery(message: bytes, number: int = 1) -> Delivery:
    return Delivery(
        id=number,
        subscriber_id="bob",
        channel="team",
        kind="slack",
        period="2026-06-12",
        recipient="${BOB_SLACK_URL}",
        state="sending",
        attempts=1,
        paper_ids=(),
        message_id=f"<paperbot.{number}@paperbot.example.org>",
        message=message,
    )


def encoded(payload: dict) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def texts(payload: dict) -> list[str]:
    """Every text Slack shows of a payload: the fallback, then each block's texts."""
    found = [payload["text"]]
    for block in payload["blocks"]:
        if "text" in block:
            found.append(block["text"]["text"])
        found.extend(element["text"] for element in block.get("elements", ()))
    return found


def assert_within_slack_limits(payload: dict) -> None:
    blocks = payload["blocks"]
    assert 2 <= len(blocks) <= MAX_BLOCKS
    header = blocks[0]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert slack_length(header["text"]["text"]) <= MAX_HEADER
    for text in texts(payload):
        assert 0 < slack_length(text) <= MAX_TEXT
    for block in blocks[1:]:
        assert block["type"] in ("section", "context")
        for text in [block.get("text")] + list(block.get("elements", ())):
            if text is not None:
                assert text["type"] == "mrkdwn" and text["verbatim"] is True


def paper_ids_shown(payload: dict) -> list[str]:
    """The papers a message shows: the Hugging Face page each section's title links to."""
    return [
        re.match(r"\*\d+\. <https://huggingface\.co/papers/([^|]+)\|", block["text"]["text"]).group(1)
        for block in payload["blocks"]
        if block["type"] == "section"
    ]


@pytest.fixture
def slack_url(httpserver):
    """A Slack-like incoming webhook on 127.0.0.1 that records every message it takes."""
    httpserver.expect_request("/services/T000/B000/XXXX", method="POST").respond_with_data("ok")
    return httpserver.url_for("/services/T000/B000/XXXX")


def received(httpserver) -> list[dict]:
    return [json.loads(request.get_data()) for request, _ in httpserver.log]


def test_a_long_digest_reaches_slack_as_numbered_messages_holding_every_paper(
    tmp_path, httpserver, slack_url
):
    papers = real_papers()[:120]
    digest = digest_of(tmp_path, papers)
    assert len(digest.matches) == digest.total == 120

    messages = slack_messages(digest)
    sender = SlackSender(lambda d: slack_url, allow_private=True)
    for number, message in enumerate(messages, 1):
        sender.send(delivery(encoded(message.payload), number))
    sender.close()

    posted = received(httpserver)
    assert len(posted) == len(messages) >= 3  # 120 papers cannot fit 50 blocks
    for part, payload in enumerate(posted, 1):
        assert_within_slack_limits(payload)
        header = payload["blocks"][0]["text"]["text"]
        assert header == f"paperbot · 120 papers · Fri 12 Jun 2026 ({part}/{len(posted)})"
        assert header.split(" (")[0] in payload["text"]  # the notification says what it is
    shown = [paper_id for payload in posted for paper_id in paper_ids_shown(payload)]
    assert sorted(shown) == sorted(p.id for p in papers)  # each of the 120 once
    assert shown == [m.paper.id for m in digest.matches]  # in rank order across the messages
    assert [paper_id for m in messages for paper_id in m.paper_ids] == shown  # what the ledger records
    ranks = [
        int(re.match(r"\*(\d+)\. ", block["text"]["text"]).group(1))
        for payload in posted
        for block in payload["blocks"]
        if block["type"] == "section"
    ]
    assert ranks == list(range(1, 121))
    first_context = posted[0]["blocks"][-1]["elements"][0]["text"]
    assert first_context.startswith(f"Papers 1–{len(messages[0].paper_ids)} of 120")
    assert "<https://paperbot.example.org/unsubscribe/t|Unsubscribe>" in first_context


def test_a_section_shows_title_link_authors_counts_and_why_it_matched(tmp_path):
    paper = next(p for p in real_papers() if p.id == "2606.13392")  # MiniMax Sparse Attention
    hit = Hit("title", "sparse attention", 8, 24)
    match = Match(
        "bob", paper, ("efficient attention",), 9.0, (hit,), ("crossed 50 upvotes (from 30 to 103)",)
    )
    bob = subscriber(tmp_path)
    digest = build_digest(bob, [match], generated_at=NOW, links=LINKS, channel="team")

    (message,) = slack_messages(digest)

    assert_within_slack_limits(message.payload)
    assert message.payload["blocks"][0]["text"]["text"] == "paperbot · 1 paper · Fri 12 Jun 2026"
    text = message.payload["blocks"][1]["text"]["text"]
    lines = text.split("\n")
    assert lines[0] == "*1. <https://huggingface.co/papers/2606.13392|MiniMax Sparse Attention>*"
    assert lines[1] == "Xunhao Lai, Weiqi Xu, Yufeng Yang et al. · MiniMax"
    assert lines[2] == "103 upvotes · 251 GitHub stars · 4 comments"
    assert lines[3] == (
        "Watch: efficient attention · crossed 50 upvotes (from 30 to 103)"
        " · matched “sparse attention” (title)"
    )
    assert lines[4].startswith("> MiniMax Sparse Attention enables")
    assert "<https://github.com/MiniMax-AI/MSA|Code>" in lines[5]
    assert message.paper_ids == ("2606.13392",)
    assert message.payload["unfurl_links"] is False  # no 48 link previews


def test_a_title_that_mentions_channel_and_plants_a_link_arrives_as_plain_text(
    tmp_path, httpserver, slack_url
):
    # Derived from a real paper: its title, abstract and an author replaced by an attack.
    real = real_papers()[0]
    paper = real.replace(
        title=EVIL,
        abstract=f"We study {EVIL} & more; @channel @here look.",
        ai_summary=None,
        authors=("<@U024BE7LH>", "Ann & Bob"),
        organization_fullname="<!everyone>",
    )
    digest = digest_of(tmp_path, [paper], query="channel OR study")

    (message,) = slack_messages(digest)
    SlackSender(lambda d: slack_url, allow_private=True).send(delivery(encoded(message.payload)))

    (payload,) = received(httpserver)
    for text in texts(payload):
        assert "<!" not in text and "<@" not in text  # no mention of anyone
        for url, _label in OUR_LINK.findall(text):  # every link is one paperbot made
            assert not url.startswith("https://evil.example")
        assert "@channel" not in text and "@here" not in text  # defused by a word joiner
    section = payload["blocks"][1]["text"]["text"]
    # Shown as the characters it is: Slack turns &lt; back into "<" on screen.
    label = "&lt;!channel&gt; &lt;https://evil.example∣click&gt;"
    assert f"<https://huggingface.co/papers/{paper.id}|{label}>" in section
    assert "&lt;@U024BE7LH&gt;, Ann &amp; Bob · &lt;!everyone&gt;" in section
    assert "> We study &lt;!channel&gt; &lt;https://evil.example|click&gt; &amp; more" in section


def test_a_paper_with_everything_too_long_stays_within_limits_and_is_not_dropped(tmp_path):
    real = real_papers()[0]
    huge = real.replace(
        title="A & B < C > D " * 400,
        authors=tuple(f"Author-{n} " + "x" * 300 for n in range(500)),
        ai_summary="Summary with & and < and > and 😀 emoji. " * 400,
        github_repo="https://github.com/" + "a" * 3000,
        project_page="https://example.org/project",
    )
    watches = tuple(f"watch number {n} " + "w" * 200 for n in range(30))
    hits = tuple(Hit("abstract", f"term{n}", 0, 4) for n in range(40))
    match = Match("bob", huge, watches, 5.0, hits, ("crossed 50 upvotes",) * 3)
    bob = subscriber(tmp_path)
    digest = build_digest(bob, [match], generated_at=NOW, links=LINKS, channel="team")

    (message,) = slack_messages(digest)

    assert_within_slack_limits(message.payload)
    section = message.payload["blocks"][1]["text"]["text"]
    assert section.startswith(f"*1. <https://huggingface.co/papers/{huge.id}|A &amp; B &lt; C &gt; D")
    assert "…" in section.split("\n")[0]  # the title is shortened, and says so
    assert "\n> Summary with &amp; and &lt;" in section and section.count("…") >= 2
    assert "<https://example.org/project|Project page>" in section  # a link that fits stays
    assert "aaaaaaaaaa" not in section  # the code link that does not fit is left out, not cut
    assert message.paper_ids == (huge.id,)


def test_an_empty_digest_says_nothing_matched(tmp_path):
    bob = subscriber(tmp_path)
    digest = build_digest(bob, [], generated_at=NOW, links=LINKS, channel="team")

    (message,) = slack_messages(digest)

    assert_within_slack_limits(message.payload)
    assert message.payload["blocks"][0]["text"]["text"] == "paperbot · no new papers · Fri 12 Jun 2026"
    assert message.payload["blocks"][1]["text"]["text"] == "No paper matched your watches."
    assert message.paper_ids == ()


def test_more_papers_than_shown_link_to_the_full_list(tmp_path):
    digest = digest_of(tmp_path, real_papers()[:30], max_papers=10)
    assert digest.total == 30

    (message,) = slack_messages(digest)

    context = message.payload["blocks"][-1]["elements"][0]["text"]
    assert "And 20 more: <https://paperbot.example.org/digest/2026-06-12/t|the full list>." in context
    assert message.payload["blocks"][0]["text"]["text"].startswith("paperbot · 30 papers ·")


# -- what Slack answers ---------------------------------------------------------------------------


def answer_then_send(httpserver, response, timeout: float = 5.0) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_response(response)
    sender = SlackSender(lambda d: httpserver.url_for("/hook"), timeout=timeout, allow_private=True)
    try:
        sender.send(delivery(b'{"text": "hello"}'))
    finally:
        sender.close()


def test_ok_is_taken(httpserver):
    answer_then_send(httpserver, Response("ok", 200))
    ((request, _),) = httpserver.log
    assert request.headers["Content-Type"].startswith("application/json")
    assert request.get_data() == b'{"text": "hello"}'  # the stored bytes, unchanged


def test_rate_limited_is_transient_with_retry_after(httpserver):
    with pytest.raises(TransientError) as caught:
        answer_then_send(httpserver, Response("rate_limited", 429, headers={"Retry-After": "30"}))
    assert caught.value.retry_after == 30.0
    assert "XXXX" not in str(caught.value)  # the webhook's secret path is never shown


@pytest.mark.parametrize("status, body", [(500, "rollup_error"), (503, "service unavailable")])
def test_a_server_error_is_transient(httpserver, status, body):
    with pytest.raises(TransientError, match=str(status)):
        answer_then_send(httpserver, Response(body, status))


def test_a_server_that_hangs_is_transient(httpserver):
    def slow(request):
        time.sleep(1.5)
        return Response("ok", 200)

    httpserver.expect_request("/hook", method="POST").respond_with_handler(slow)
    sender = SlackSender(lambda d: httpserver.url_for("/hook"), timeout=0.3, allow_private=True)
    started = time.monotonic()
    with pytest.raises(TransientError, match="did not answer within 0.3 s"):
        sender.send(delivery(b"{}"))
    assert time.monotonic() - started < 1.4
    sender.close()


def test_nobody_listening_is_transient():
    sender = SlackSender(lambda d: "http://127.0.0.1:9/hook", timeout=2, allow_private=True)
    with pytest.raises(TransientError, match="cannot reach http://127.0.0.1:9/…"):
        sender.send(delivery(b"{}"))


@pytest.mark.parametrize(
    "status, body",
    [(410, "channel_is_archived"), (404, "no_service"), (404, "channel_not_found"), (403, "invalid_token")],
)
def test_a_deleted_webhook_or_channel_is_gone(httpserver, status, body):
    with pytest.raises(ChannelGone, match=body):
        answer_then_send(httpserver, Response(body, status))


@pytest.mark.parametrize("status, body", [(400, "invalid_payload"), (403, "action_prohibited"), (302, "")])
def test_other_refusals_are_permanent_but_not_gone(httpserver, status, body):
    with pytest.raises(PermanentError) as caught:
        answer_then_send(httpserver, Response(body, status, headers={"Location": "http://127.0.0.1:1/"}))
    assert not isinstance(caught.value, ChannelGone)


def test_a_loopback_webhook_is_refused_unless_allowed(httpserver, slack_url):
    sender = SlackSender(lambda d: slack_url)  # allow_private defaults to False
    with pytest.raises(PermanentError, match="loopback address"):
        sender.send(delivery(b"{}"))
    assert httpserver.log == []  # nothing was posted

    SlackSender(lambda d: slack_url, allow_private=True).send(delivery(b"{}"))
    assert len(httpserver.log) == 1


@pytest.mark.parametrize("count", [1, 2, 30, 48, 49, 97, 123])
def test_every_size_of_digest_splits_into_even_valid_messages_holding_each_paper_once(tmp_path, count):
    papers = real_papers()[:count]
    digest = digest_of(tmp_path, papers)

    messages = slack_messages(digest)

    for message in messages:
        assert_within_slack_limits(message.payload)
        assert paper_ids_shown(message.payload) == list(message.paper_ids)
    shown = [paper_id for message in messages for paper_id in message.paper_ids]
    assert sorted(shown) == sorted(p.id for p in papers)
    sizes = [len(message.paper_ids) for message in messages]
    assert max(sizes) - min(sizes) <= max(sizes) // 2  # no 48, 48, 1
