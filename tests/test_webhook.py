"""Webhooks: the "paperbot.matches.v1" payload of real papers, posted to a real HTTP server on
127.0.0.1, signed the Standard Webhooks way and checked by this file's own verifier.

What a receiver notices: every POST verifies with their Standard Webhooks library (the
published test vector, and a verifier written here from the specification); a retry carries
the same webhook-id; the body holds each paper's stored fields and why it matched. What an
operator notices: a URL pointing into their own network is refused.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from werkzeug import Response

from bot.captures import read_capture
from bot.channels.webhook import WebhookSender, sign, signing_key
from bot.chat import PAYLOAD_TYPE, webhook_payload
from bot.errors import ChannelGone, PermanentError, TransientError
from bot.match import WatchIndex, match_papers
from bot.models import Paper
from bot.render import DigestLinks, build_digest
from bot.store import Delivery
from bot.subscriptions import read_subscription
from bot.transport import Poster, refused_address
from conftest import HF

DAY = HF / "api_daily_papers_2026-06-12.json"
NOW = datetime(2026, 6, 12, 7, 0, tzinfo=UTC)
SENT_AT = 1_781_247_600  # Unix seconds of the first attempt
LINKS = DigestLinks(
    list_url="https://paperbot.example.org/digest/2026-06-12/t",
    unsubscribe_url="https://paperbot.example.org/unsubscribe/t",
    manage_url="https://paperbot.example.org/manage/t",
)
SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()


def verify_standard_webhook(secret: str, headers, body: bytes, now: int, tolerance: int = 300) -> bool:
    """A receiver's check, written from the Standard Webhooks specification: the key is the
    base64 after "whsec_"; the signed content is "{webhook-id}.{webhook-timestamp}.{body}";
    webhook-signature holds space-separated "v1,<base64 HMAC-SHA256>" entries."""
    message_id = headers["webhook-id"]
    timestamp = headers["webhook-timestamp"]
    if abs(now - int(timestamp)) > tolerance:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = f"{message_id}.{timestamp}.{body.decode('utf-8')}".encode()
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    for entry in headers["webhook-signature"].split(" "):
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return True
    return False


def day_papers() -> list[Paper]:
    return [paper for capture in read_capture(DAY) for paper in capture.papers]


def lab_digest(tmp_path: Path, query: str = "title:attention OR reasoning"):
    path = tmp_path / "lab.toml"
    path.write_text(
        'name = "Lab <ops> & co"\nemail = "lab@example.org"\ntimezone = "Europe/Berlin"\n'
        '[channels]\nhook = { kind = "webhook", url = "${LAB_HOOK}", secret = "${LAB_SECRET}" }\n'
        f"[[watch]]\nname = \"mine\"\nquery = '{query}'\n",
        encoding="utf-8",
    )
    lab = read_subscription(path)
    matches = match_papers(day_papers(), WatchIndex([lab]))
    return build_digest(lab, matches, generated_at=NOW, links=LINKS, channel="hook")


def delivery(message: bytes) -> Delivery:
    return Delivery(
        id=7,
        subscriber_id="lab",
        channel="hook",
        kind="webhook",
        period="2026-06-12",
        recipient="${LAB_HOOK}",
        state="sending",
        attempts=1,
        paper_ids=(),
        message_id="msg_3f1c9a0b5d2e4f6a8b7c6d5e4f3a2b1c",
        message=message,
    )


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hook_url(httpserver):
    httpserver.expect_request("/hooks/paperbot", method="POST").respond_with_data("", status=204)
    return httpserver.url_for("/hooks/paperbot")


def test_signing_reproduces_the_published_standard_webhooks_test_vector():
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signature = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_digest_arrives_signed_and_verifies_with_the_standard_algorithm(tmp_path, httpserver, hook_url):
    body = json.dumps(webhook_payload(lab_digest(tmp_path)), ensure_ascii=False).encode("utf-8")
    sender = WebhookSender(lambda d: (hook_url, SECRET), allow_private=True, clock=Clock(SENT_AT))

    sender.send(delivery(body))
    sender.close()

    ((request, reply),) = httpserver.log
    assert reply.status_code == 204
    assert request.get_data() == body  # the stored bytes, unchanged
    assert request.headers["Content-Type"] == "application/json; charset=utf-8"
    assert request.headers["webhook-id"] == "msg_3f1c9a0b5d2e4f6a8b7c6d5e4f3a2b1c"
    assert request.headers["webhook-timestamp"] == str(SENT_AT)
    assert verify_standard_webhook(SECRET, request.headers, request.get_data(), now=SENT_AT + 2)
    # A changed body, or another secret, does not verify.
    assert not verify_standard_webhook(
        SECRET, request.headers, body.replace(b"attention", b"attentioN"), SENT_AT
    )
    other = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    assert not verify_standard_webhook(other, request.headers, request.get_data(), SENT_AT)


def test_a_retry_keeps_the_webhook_id_with_a_fresh_timestamp_and_signature(httpserver, hook_url):
    clock = Clock(SENT_AT)
    sender = WebhookSender(lambda d: (hook_url, SECRET), allow_private=True, clock=clock)
    same = delivery(b'{"type": "paperbot.matches.v1", "papers": []}')

    sender.send(same)
    clock.now += 3600  # the ledger retries an hour later
    sender.send(same)

    (first, _), (second, _) = httpserver.log
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == same.message_id
    assert int(second.headers["webhook-timestamp"]) == int(first.headers["webhook-timestamp"]) + 3600
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    assert verify_standard_webhook(SECRET, first.headers, first.get_data(), now=SENT_AT)
    assert verify_standard_webhook(SECRET, second.headers, second.get_data(), now=SENT_AT + 3600)


def test_a_secret_without_the_whsec_prefix_is_used_as_its_bytes(httpserver, hook_url):
    sender = WebhookSender(
        lambda d: (hook_url, "plain text secret"), allow_private=True, clock=Clock(SENT_AT)
    )
    sender.send(delivery(b"{}"))

    ((request, _),) = httpserver.log
    signed = f"{request.headers['webhook-id']}.{SENT_AT}.{{}}".encode()
    digest = hmac.new(b"plain text secret", signed, hashlib.sha256).digest()
    assert request.headers["webhook-signature"] == "v1," + base64.b64encode(digest).decode()


def test_without_a_secret_the_post_is_unsigned_but_keeps_its_id(httpserver, hook_url):
    WebhookSender(lambda d: (hook_url, None), allow_private=True).send(delivery(b"{}"))

    ((request, _),) = httpserver.log
    assert "webhook-signature" not in request.headers
    assert request.headers["webhook-id"] == "msg_3f1c9a0b5d2e4f6a8b7c6d5e4f3a2b1c"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60


def test_a_secret_that_is_not_base64_says_how_to_fix_it():
    with pytest.raises(TransientError, match="not base64"):
        signing_key("whsec_not*base64!")


# -- the payload ---------------------------------------------------------------------------------


def test_the_payload_holds_every_stored_field_of_each_paper_and_why_it_matched(tmp_path):
    digest = lab_digest(tmp_path)
    assert digest.matches

    payload = json.loads(json.dumps(webhook_payload(digest)))  # plain JSON, nothing else

    assert payload["type"] == PAYLOAD_TYPE == "paperbot.matches.v1"
    assert payload["subscriber"] == {"id": "lab", "name": "Lab <ops> & co"}  # data, not markup
    assert payload["period"] == "2026-06-12" and payload["label"] == "Fri 12 Jun 2026"
    assert payload["generated_at"] == "2026-06-12T07:00:00Z"
    assert payload["total"] == len(payload["papers"]) == len(digest.matches)
    stored = [field.name for field in dataclasses.fields(Paper)]
    for rank, (entry, match) in enumerate(zip(payload["papers"], digest.matches, strict=True), 1):
        paper = match.paper
        assert list(entry)[: len(stored)] == stored
        assert entry["id"] == paper.id and entry["title"] == paper.title
        assert entry["authors"] == list(paper.authors)
        assert entry["featured_on"] == "2026-06-12"
        assert entry["published_at"].endswith("Z")
        assert entry["rank"] == rank
        assert entry["url"] == f"https://huggingface.co/papers/{paper.id}"
        assert entry["arxiv_url"] == f"https://arxiv.org/abs/{paper.id}"
        assert entry["watches"] == ["mine"] and entry["score"] > 0
        for term in entry["terms"]:
            if term["field"] == "title":  # offsets index the field's text
                assert entry["title"][term["start"] : term["end"]].lower() == term["term"]
    found = {(t["field"], t["term"]) for entry in payload["papers"] for t in entry["terms"]}
    assert ("title", "attention") in found and ("abstract", "reasoning") in found


# -- what the receiver answers -------------------------------------------------------------------


def answer_then_send(httpserver, response, timeout: float = 5.0) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_response(response)
    sender = WebhookSender(
        lambda d: (httpserver.url_for("/hook"), SECRET), allow_private=True, timeout=timeout
    )
    try:
        sender.send(delivery(b"{}"))
    finally:
        sender.close()


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_busy_or_failing_receivers_are_transient(httpserver, status):
    with pytest.raises(TransientError, match=str(status)) as caught:
        answer_then_send(httpserver, Response("busy", status, headers={"Retry-After": "120"}))
    assert caught.value.retry_after == 120.0


def test_a_receiver_that_hangs_is_transient(httpserver):
    def slow(request):
        time.sleep(1.5)
        return Response("", 204)

    httpserver.expect_request("/hook", method="POST").respond_with_handler(slow)
    sender = WebhookSender(lambda d: (httpserver.url_for("/hook"), None), allow_private=True, timeout=0.3)
    with pytest.raises(TransientError, match="did not answer"):
        sender.send(delivery(b"{}"))
    sender.close()


def test_gone_is_gone(httpserver):
    with pytest.raises(ChannelGone, match="410"):
        answer_then_send(httpserver, Response("endpoint deleted", 410))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 301])
def test_other_refusals_are_permanent(httpserver, status):
    with pytest.raises(PermanentError, match=str(status)) as caught:
        answer_then_send(httpserver, Response("no", status, headers={"Location": "http://127.0.0.1:1/"}))
    assert not isinstance(caught.value, ChannelGone)


# -- where paperbot posts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://100.64.0.1/hook", "non-public"),
        ("http://240.0.0.1/hook", "reserved"),
    ],
)
def test_a_url_into_a_private_network_is_refused(url, why):
    sender = WebhookSender(lambda d: (url, SECRET))
    with pytest.raises(PermanentError, match=f"{why} address") as caught:
        sender.send(delivery(b"{}"))
    assert "webhook.allow_private" in str(caught.value)  # says how to allow it


@pytest.mark.parametrize(
    "url", ["ftp://example.org/hook", "file:///etc/passwd", "not a url", "https:///path"]
)
def test_a_url_that_is_not_http_is_refused(url):
    with pytest.raises(PermanentError):
        WebhookSender(lambda d: (url, None)).send(delivery(b"{}"))


def fake_dns(monkeypatch, answers: dict[str, list[list[str]]]) -> None:
    """Make `socket.getaddrinfo` answer for some names: each call takes the next list of addresses."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        addresses = answers[host].pop(0) if len(answers[host]) > 1 else answers[host][0]
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_every_address_of_a_name_is_checked(monkeypatch):
    fake_dns(monkeypatch, {"hooks.example.org": [["93.184.215.14", "10.0.0.7"]]})
    with pytest.raises(PermanentError, match=r"hooks.example.org resolves to a private address \(10.0.0.7\)"):
        WebhookSender(lambda d: ("https://hooks.example.org/x", None)).send(delivery(b"{}"))


def test_a_name_that_turns_private_between_check_and_connect_is_refused(monkeypatch, httpserver, hook_url):
    # DNS rebinding: public when checked, then 127.0.0.1 (where the server is) when connecting.
    port = httpserver.port
    fake_dns(monkeypatch, {"rebind.example": [["93.184.215.14"], ["127.0.0.1"]]})
    with pytest.raises(PermanentError, match="loopback"):
        WebhookSender(lambda d: (f"http://rebind.example:{port}/hooks/paperbot", None)).send(delivery(b"{}"))
    assert httpserver.log == []

    # Allowed, the same answers reach the server: the connection goes to the address checked.
    fake_dns(monkeypatch, {"rebind.example": [["93.184.215.14"], ["127.0.0.1"]]})
    sender = WebhookSender(
        lambda d: (f"http://rebind.example:{port}/hooks/paperbot", None), allow_private=True
    )
    sender.send(delivery(b"{}"))
    ((request, _),) = httpserver.log
    assert request.headers["Host"] == f"rebind.example:{port}"


def test_public_addresses_are_not_refused():
    for address in ("93.184.215.14", "1.1.1.1", "2606:4700:4700::1111", "8.8.8.8"):
        assert refused_address(address) is None


def test_a_poster_follows_no_redirect(httpserver):
    httpserver.expect_request("/a", method="POST").respond_with_response(
        Response("", 307, headers={"Location": httpserver.url_for("/b")})
    )
    with Poster(allow_private=True) as poster:
        reply = poster.post(httpserver.url_for("/a"), b"{}", {})
    assert reply.status == 307 and len(httpserver.log) == 1
