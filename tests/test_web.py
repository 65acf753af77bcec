"""`paperbot serve` against the real server: uvicorn on 127.0.0.1, httpx as the visitor, a real
SMTP server (aiosmtpd) catching the mail, a real SQLite file holding the real 2026-06-12 listing.

What a visitor notices: they sign up, get one mail, and are subscribed only once they confirm;
a mail program's one-click unsubscribe works at once, and opening the link does not; a link
that was altered or is too old does nothing; their watches can be previewed and edited; the
feed reads in a feed reader. What an attacker notices: nothing says whether an address is
subscribed, and a form posted from another site does nothing.
"""

from __future__ import annotations

import email
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path

import feedparser
import httpx
import pytest
import uvicorn

from bot import signup
from bot.config import load_settings
from bot.errors import SubscriptionError
from bot.message import digest_links
from bot.pipeline import import_files, message_settings
from bot.store import open_store
from bot.subscriptions import read_subscription
from bot.tokens import make_token
from bot.web import RateLimiter, create_app, feed_url
from conftest import HF, free_port

DAY = HF / "api_daily_papers_2026-06-12.json"  # 30 papers, featured on Friday 2026-06-12
SECRET = "a-test-secret-that-is-long-enough-0123456789"
FORM = {
    "email": "Alice.Example@Example.org",
    "query": "attention",
    "frequency": "weekly",
    "day": "friday",
    "time": "07:30",
    "timezone": "Europe/Berlin",
}


@dataclass
class Site:
    """A running paperbot web app and everything around it."""

    url: str
    folder: Path
    db: Path
    settings: object
    smtp: object  # the aiosmtpd controller: .handler.messages
    server: uvicorn.Server

    def client(self, **options) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **options)

    def store(self):
        return open_store(self.db)

    def mails(self) -> list[email.message.EmailMessage]:
        return [
            email.message_from_bytes(data, policy=policy.default) for _, _, data in self.smtp.handler.messages
        ]

    def subscribe_file(self, sid: str, query: str = "attention", extra: str = "") -> Path:
        path = self.folder / f"{sid}.toml"
        path.write_text(
            "# Bob wrote this comment; it must survive the web app's edits.\n"
            f'email = "{sid}@example.org"\ntimezone = "Europe/Berlin"\nschedule = "daily 08:00"\n{extra}\n'
            f'[[watch]]\nname = "attn"  # my first watch\nquery = "{query}"\n',
            encoding="utf-8",
        )
        return path


def start_server(app) -> tuple[uvicorn.Server, threading.Thread]:
    port = app.state.port
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return server, thread


@pytest.fixture
def make_site(tmp_path, smtp_server):
    """Start a paperbot web app on a free port of 127.0.0.1 (options: rate limiters); stop it after."""
    running = []

    def build(**options) -> Site:
        folder = tmp_path / "subscriptions"
        folder.mkdir(exist_ok=True)
        db = tmp_path / "paperbot.db"
        with open_store(db) as store:
            import_files(store, [str(DAY)])
        port = free_port()
        settings = load_settings(
            None,
            environ={
                "PAPERBOT_WEB_BASE_URL": f"http://127.0.0.1:{port}",
                "PAPERBOT_WEB_SECRET": SECRET,
                "PAPERBOT_MAIL_FROM": "paperbot <papers@example.org>",
                "PAPERBOT_MAIL_TRANSPORT": "smtp",
                "PAPERBOT_SMTP_HOST": "127.0.0.1",
                "PAPERBOT_SMTP_PORT": str(smtp_server.port),
                "PAPERBOT_SMTP_SECURITY": "none",
                "PAPERBOT_SMTP_TIMEOUT": "10",
            },
        )
        app = create_app(settings, db, folder, **options)
        app.state.port = port
        server, thread = start_server(app)
        running.append((server, thread))
        return Site(f"http://127.0.0.1:{port}", folder, db, settings, smtp_server, server)

    yield build
    for server, thread in running:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def site(make_site) -> Site:
    return make_site()


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, "the page has no form token"
    return found.group(1)


def post_form(client: httpx.Client, page_path: str, action: str, data: dict, **headers) -> httpx.Response:
    """What a browser does: load the page (getting its cookie), then post its form from our origin."""
    page = client.get(page_path)
    assert page.status_code == 200, page.text
    headers = {"Origin": str(client.base_url).rstrip("/"), **headers}
    return client.post(action, data={**data, "csrf": csrf_of(page)}, headers=headers)


def link_in(message, path: str) -> str:
    found = re.search(rf"http://127\.0\.0\.1:\d+/{path}/\S+", message.get_content())
    assert found, f"no /{path}/ link in:\n{message.get_content()}"
    return found.group(0)


def subscribe(site: Site, client: httpx.Client, **changes) -> httpx.Response:
    return post_form(client, "/", "/subscribe", {**FORM, **changes})


def confirm(site: Site, client: httpx.Client, url: str) -> httpx.Response:
    return post_form(client, url, url, {})


# -- double opt-in ------------------------------------------------------------------------------


def test_double_opt_in_subscribes_only_after_the_confirmation(site):
    with site.client() as visitor:
        sent = subscribe(site, visitor)
        assert sent.status_code == 200
        assert "Check your inbox" in sent.text
        assert "alice.example@example.org" in sent.text.lower()
        assert list(site.folder.glob("*.toml")) == []  # nothing is kept for an unconfirmed address

        [mail] = site.mails()
        assert mail["To"] == "Alice.Example@example.org"
        assert mail["Subject"] == "Confirm your paperbot subscription"
        assert mail["Auto-Submitted"] == "auto-generated"
        assert "attention" in mail.get_content()
        url = link_in(mail, "confirm")

        # Opening the link (as a mail scanner does) shows what would be confirmed, and does nothing.
        page = visitor.get(url)
        assert page.status_code == 200 and "Confirm" in page.text and "attention" in page.text
        assert list(site.folder.glob("*.toml")) == []

        done = confirm(site, visitor, url)
        assert done.status_code == 200, done.text
        assert "You are subscribed" in done.text

    [path] = site.folder.glob("*.toml")
    assert re.fullmatch(r"alice-example-[0-9a-f]{8}\.toml", path.name)
    subscriber = read_subscription(path)
    assert subscriber.email == "Alice.Example@example.org"
    assert subscriber.timezone == "Europe/Berlin"
    assert subscriber.schedule.text == "weekly friday 07:30"
    assert [w.query_text for w in subscriber.watches] == ["(attention)"]
    assert len(site.mails()) == 1  # the one mail an unconfirmed address gets; none after confirming
    assert not list(site.folder.glob(".*"))  # no temporary file left behind

    # The page links to a working manage page.
    manage = re.search(r'href="(http://127\.0\.0\.1:\d+/manage/[^"]+)"', done.text).group(1)
    assert httpx.get(manage).status_code == 200

    # Confirming again changes nothing.
    with site.client() as again:
        assert confirm(site, again, url).status_code == 200
    assert len(list(site.folder.glob("*.toml"))) == 1
    assert len(read_subscription(path).watches) == 1


def test_a_second_sign_up_of_a_subscribed_address_looks_the_same(site):
    site.subscribe_file("bob")
    with site.client() as visitor:
        new = subscribe(site, visitor, email="carol@example.org")
        known = subscribe(site, visitor, email="bob@example.org")
    assert new.status_code == known.status_code == 200
    strip = re.compile(r'nonce="[^"]*"|carol@example\.org|bob@example\.org')
    assert strip.sub("", new.text) == strip.sub("", known.text)
    assert new.headers.keys() == known.headers.keys()

    carol, bob = site.mails()
    assert carol["Subject"] == "Confirm your paperbot subscription"
    assert bob["Subject"] == "Your paperbot subscription"  # only the address's owner learns it
    assert "subscribed already" in bob.get_content()
    assert httpx.get(link_in(bob, "manage")).status_code == 200
    assert sorted(p.name for p in site.folder.glob("*.toml")) == ["bob.toml"]


def test_a_sign_up_finds_the_subscriber_whose_file_writes_the_domain_in_other_letters(site):
    """Ann's file says ann@bücher.example; on the web she types it so too: the same person,
    not a second subscriber with a second digest."""
    (site.folder / "ann.toml").write_text(
        'email = "ann@bücher.example"\n[[watch]]\nname = "w"\nquery = "attention"\n', encoding="utf-8"
    )
    with site.client() as visitor:
        subscribe(site, visitor, email="ann@bücher.example")
    (mail,) = site.mails()
    assert mail["Subject"] == "Your paperbot subscription" and "subscribed already" in mail.get_content()
    assert mail["To"] == "ann@xn--bcher-kva.example"
    assert sorted(p.name for p in site.folder.glob("*.toml")) == ["ann.toml"]


def test_confirming_for_a_subscribed_address_adds_the_watch_and_keeps_the_file(site):
    path = site.subscribe_file("bob")
    with site.client() as visitor:
        subscribe(site, visitor, email="bob@example.org", query='"world model"')
        confirm(site, visitor, link_in(site.mails()[0], "confirm"))
    text = path.read_text()
    assert "# Bob wrote this comment" in text and "# my first watch" in text
    assert [w.name for w in read_subscription(path).watches] == ["attn", '"world model"']


def test_resubscribing_after_an_unsubscribe_lifts_it_through_the_confirmation(site):
    site.subscribe_file("bob")
    with site.store() as store:
        store.suppress(
            "bob", "*", "bob@example.org", "unsubscribed on 2026-06-01 via the link", datetime.now(UTC)
        )
    with site.client() as visitor:
        subscribe(site, visitor, email="bob@example.org")
        [mail] = site.mails()
        assert mail["Subject"] == "Confirm your paperbot subscription"  # not "already subscribed"
        with site.store() as store:
            assert store.suppression("bob", "*")  # not before the confirmation
        confirm(site, visitor, link_in(mail, "confirm"))
    with site.store() as store:
        assert store.suppression("bob", "*") is None


def test_the_form_says_what_is_wrong_and_sends_nothing(site):
    with site.client() as visitor:
        page = subscribe(site, visitor, email="not an address", query="(diffusion", timezone="Mars/Olympus")
    assert page.status_code == 400
    assert "(diffusion" in page.text and "this ( is never closed" in page.text
    assert "Time zone" in page.text and 'aria-invalid="true"' in page.text
    assert site.mails() == []


def test_the_form_shows_what_it_was_given_as_text(site):
    with site.client() as visitor:
        page = subscribe(site, visitor, email='"><script>alert(1)</script>', query="<b>x</b> OR")
    assert page.status_code == 400
    assert "<script>alert(1)" not in page.text and "<b>x</b>" not in page.text
    assert "&lt;b&gt;x&lt;/b&gt;" in page.text


def test_the_live_query_check(site):
    with site.client() as visitor:
        good = visitor.get("/check-query", params={"q": "diffusion -survey"}).json()
        bad = visitor.get("/check-query", params={"q": "a OR"}).json()
    assert good == {"ok": True, "understood": "diffusion -survey"}
    assert bad["ok"] is False and bad["position"] == 2 and "nothing follows OR" in bad["reason"]


# -- cross-site posts and rate limits -------------------------------------------------------------


def test_a_form_posted_from_another_site_does_nothing(site):
    with site.client() as visitor:
        evil = post_form(visitor, "/", "/subscribe", FORM, Origin="https://evil.example")
        assert evil.status_code == 403
    with site.client() as stranger:  # no cookie: the form's token alone is not enough
        page = stranger.get("/")
        token = csrf_of(page)
    with site.client() as attacker:
        bare = attacker.post("/subscribe", data={**FORM, "csrf": token})
        assert bare.status_code == 403
    with site.client() as visitor:
        visitor.get("/")
        forged = visitor.post("/subscribe", data={**FORM, "csrf": make_token(SECRET, "csrf", "x")})
        assert forged.status_code == 403
    assert site.mails() == []


def test_sign_ups_are_limited_per_address_without_telling(site):
    with site.client() as visitor:
        pages = [subscribe(site, visitor) for _ in range(4)]
    assert {p.status_code for p in pages} == {200}
    assert all("Check your inbox" in p.text for p in pages)
    assert len(site.mails()) == 3  # the fourth was not sent


def test_sign_ups_are_limited_per_client(make_site):
    site = make_site(client_limit=RateLimiter(2, timedelta(hours=1)))
    with site.client() as visitor:
        codes = [subscribe(site, visitor, email=f"u{n}@example.org").status_code for n in range(3)]
    assert codes == [200, 200, 429]
    assert len(site.mails()) == 2


# -- unsubscribe ---------------------------------------------------------------------------------


def digest_unsubscribe_url(site: Site, sid: str, now=None) -> str:
    """The https link a digest's List-Unsubscribe header carries."""
    with site.store() as store:
        mail = message_settings(site.settings, store)
    return digest_links(mail, sid, "2026-06-12", now=now or datetime.now(UTC)).unsubscribe_url


def test_one_click_post_unsubscribes_at_once_without_cookies(site):
    site.subscribe_file("bob")
    url = digest_unsubscribe_url(site, "bob")
    # What a mail program sends (RFC 8058): no cookie, no Origin, just this body.
    response = httpx.post(url, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert "You are unsubscribed" in response.text
    with site.store() as store:
        reason = store.suppression("bob", "*")
        [row] = store.suppressions()
    assert reason.startswith("unsubscribed on ") and reason.endswith(" via the link")
    assert row["recipient"] == "bob@example.org"
    assert httpx.post(url, data={"List-Unsubscribe": "One-Click"}).status_code == 200  # twice is fine


def test_get_never_unsubscribes(site):
    site.subscribe_file("bob")
    url = digest_unsubscribe_url(site, "bob")
    page = httpx.get(url)
    assert page.status_code == 200
    assert httpx.head(url).status_code == 200
    assert 'name="List-Unsubscribe" value="One-Click"' in page.text  # one button, posting the same
    with site.store() as store:
        assert store.suppression("bob", "*") is None
    assert httpx.post(url, data={}).status_code == 400  # a POST must say One-Click
    with site.store() as store:
        assert store.suppression("bob", "*") is None


# -- tokens ----------------------------------------------------------------------------------------


def tampered(token: str) -> str:
    payload, _, signature = token.rpartition(".")
    return f"{payload}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"


def test_tampered_and_expired_tokens_are_refused(site):
    site.subscribe_file("bob")
    url = digest_unsubscribe_url(site, "bob")
    token = url.rsplit("/", 1)[1]

    assert (
        httpx.post(
            f"{site.url}/unsubscribe/{tampered(token)}", data={"List-Unsubscribe": "One-Click"}
        ).status_code
        == 400
    )
    other = make_token(SECRET, "unsubscribe", "bob")
    forged = other.replace(other.split(".")[0], make_token(SECRET, "unsubscribe", "carol").split(".")[0])
    assert (
        httpx.post(f"{site.url}/unsubscribe/{forged}", data={"List-Unsubscribe": "One-Click"}).status_code
        == 400
    )
    manage_token = make_token(SECRET, "manage", "bob")  # the right subscriber, the wrong purpose
    assert (
        httpx.post(
            f"{site.url}/unsubscribe/{manage_token}", data={"List-Unsubscribe": "One-Click"}
        ).status_code
        == 400
    )
    old = datetime.now(UTC) - timedelta(days=400)
    expired = httpx.post(digest_unsubscribe_url(site, "bob", now=old), data={"List-Unsubscribe": "One-Click"})
    assert expired.status_code == 410 and "expired" in expired.text
    with site.store() as store:
        assert store.suppression("bob", "*") is None

    assert httpx.get(f"{site.url}/manage/{tampered(manage_token)}").status_code == 400
    stale = make_token(SECRET, "manage", "bob", now=datetime.now(UTC) - timedelta(days=61))
    assert httpx.get(f"{site.url}/manage/{stale}").status_code == 410
    assert httpx.get(f"{site.url}/manage/{make_token('another-secret', 'manage', 'bob')}").status_code == 400

    request = signup.SignupRequest("eve@example.org", "attention", "daily 08:00", "UTC")
    with site.client() as visitor:
        bad = tampered(signup.make_confirm_token(SECRET, request))
        assert visitor.get(f"/confirm/{bad}").status_code == 400
        late = signup.make_confirm_token(SECRET, request, now=datetime.now(UTC) - timedelta(hours=49))
        assert visitor.get(f"/confirm/{late}").status_code == 410
        page = visitor.get("/")
        refused = visitor.post(f"/confirm/{late}", data={"csrf": csrf_of(page)}, headers={"Origin": site.url})
        assert refused.status_code == 410
    assert not (site.folder / "eve.toml").exists() and list(site.folder.glob("eve*")) == []


# -- manage --------------------------------------------------------------------------------------


def manage_path(sid: str) -> str:
    return f"/manage/{make_token(SECRET, 'manage', sid)}"


def test_manage_previews_edits_and_saves_a_watch(site):
    path = site.subscribe_file("bob")
    before = path.read_text()
    page_path = manage_path("bob")
    with site.client() as visitor:
        page = visitor.get(page_path)
        assert page.status_code == 200
        assert (
            "Over the last 30 days" in page.text and "on 1 of the 1 day that brought new papers" in page.text
        )

        watch = {"index": "0", "original": "attn", "name": "attn", "query": "sparse attention"}
        preview = post_form(visitor, page_path, f"{page_path}/watch", {**watch, "action": "preview"})
        assert preview.status_code == 200
        assert "not saved yet" in preview.text and "papers/2606.13392" in preview.text
        assert path.read_text() == before  # a preview writes nothing

        broken = post_form(
            visitor, page_path, f"{page_path}/watch", {**watch, "query": "(sparse", "action": "save"}
        )
        assert broken.status_code == 400 and "this ( is never closed" in broken.text
        assert path.read_text() == before

        saved = post_form(visitor, page_path, f"{page_path}/watch", {**watch, "action": "save"})
        assert saved.status_code == 303
        assert visitor.get(saved.headers["location"]).text.count("Your watch is saved.") == 1
    text = path.read_text()
    assert "# Bob wrote this comment" in text and 'query = "sparse attention"' in text
    assert read_subscription(path).watches[0].query_text == "(sparse attention)"


def test_manage_adds_and_deletes_watches_with_the_file_rules(site):
    path = site.subscribe_file("bob")
    page_path = manage_path("bob")
    new = {"index": "new", "original": "", "name": "agents", "query": "agent*", "min_upvotes": "5"}
    with site.client() as visitor:
        added = post_form(visitor, page_path, f"{page_path}/watch", {**new, "action": "save"})
        assert added.status_code == 303
        assert [w.name for w in read_subscription(path).watches] == ["attn", "agents"]
        assert read_subscription(path).watches[1].min_upvotes == 5

        twin = post_form(visitor, page_path, f"{page_path}/watch", {**new, "action": "save"})
        assert twin.status_code == 400 and "two watches are named" in twin.text

        gone = post_form(
            visitor, page_path, f"{page_path}/watch", {"index": "0", "original": "attn", "action": "delete"}
        )
        assert gone.status_code == 303
        assert [w.name for w in read_subscription(path).watches] == ["agents"]

        last = post_form(
            visitor, page_path, f"{page_path}/watch", {"index": "0", "original": "agents", "action": "delete"}
        )
        assert last.status_code == 400 and "add at least one [[watch]]" in last.text
        stale = post_form(
            visitor, page_path, f"{page_path}/watch", {"index": "0", "original": "attn", "action": "delete"}
        )
        assert stale.status_code == 400 and "changed meanwhile" in stale.text
    assert [w.name for w in read_subscription(path).watches] == ["agents"]


def test_manage_changes_the_schedule_and_pauses(site):
    path = site.subscribe_file("bob")
    page_path = manage_path("bob")
    delivery = {"frequency": "weekly", "day": "monday", "time": "09:15", "timezone": "America/New_York"}
    with site.client() as visitor:
        wrong = post_form(
            visitor, page_path, f"{page_path}/delivery", {**delivery, "timezone": "Europe/Berln"}
        )
        assert wrong.status_code == 400 and "did you mean &#39;Europe/Berlin&#39;?" in wrong.text
        saved = post_form(visitor, page_path, f"{page_path}/delivery", {**delivery, "paused": "yes"})
        assert saved.status_code == 303
    subscriber = read_subscription(path)
    assert (subscriber.schedule.text, subscriber.timezone, subscriber.paused) == (
        "weekly monday 09:15",
        "America/New_York",
        True,
    )
    assert "# Bob wrote this comment" in path.read_text()


# -- the full list of one digest, and feeds ------------------------------------------------------


def test_the_digest_page_lists_every_match_of_the_period(site):
    site.subscribe_file("bob")
    url = f"/digest/2026-06-12/{make_token(SECRET, 'digest', 'bob', '2026-06-12')}"
    with site.client() as visitor:
        page = visitor.get(url)
        assert page.status_code == 200
        assert "Every paper of your digest 2026-06-12" in page.text and "<mark>" in page.text
        wrong_period = visitor.get(f"/digest/2026-06-13/{make_token(SECRET, 'digest', 'bob', '2026-06-12')}")
        assert wrong_period.status_code == 400


def test_the_digest_page_follows_the_ledger_window(site):
    site.subscribe_file("bob", query="sparse attention")
    friday = datetime(2026, 6, 12, tzinfo=UTC)
    periods = {
        "instant 2026-06-12T09:00:00Z": friday,
        "instant 2026-06-13T09:00:00Z": friday + timedelta(days=1),
    }
    with site.store() as store:
        for period, start in periods.items():
            store.reserve_delivery(
                subscriber_id="bob",
                channel="email",
                kind="email",
                period=period,
                recipient="bob@example.org",
                paper_ids=[],
                window_start=start,
                window_end=start + timedelta(days=1),
                now=start,
            )
        mail = message_settings(site.settings, store)
    with site.client() as visitor:
        found, empty = (
            visitor.get(digest_links(mail, "bob", period, now=datetime.now(UTC)).list_url)
            for period in periods
        )
    assert found.status_code == 200 and "papers/2606.13392" in found.text
    assert empty.status_code == 200 and "No paper matched" in empty.text


def test_each_watch_has_a_secret_atom_feed(site):
    site.subscribe_file("bob")
    url = feed_url(site.url, SECRET, "bob", "attn")
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/atom+xml")
    feed = feedparser.parse(response.content)
    assert feed.bozo == 0, feed.bozo_exception
    assert feed.version == "atom10"
    assert feed.feed.title == "paperbot: attn"
    assert feed.entries and all(e.link.startswith("https://huggingface.co/papers/") for e in feed.entries)
    assert all(e.title and e.id and e.updated_parsed for e in feed.entries)

    token = url.split("/feed/")[1].split("/")[0]
    assert httpx.get(f"{site.url}/feed/{token}/other").status_code == 400  # bound to its watch
    assert httpx.get(f"{site.url}/feed/{tampered(token)}/attn").status_code == 400
    httpx.post(digest_unsubscribe_url(site, "bob"), data={"List-Unsubscribe": "One-Click"})
    assert httpx.get(url).status_code == 410


def test_pages_carry_security_headers(site):
    page = httpx.get(site.url + "/")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "same-origin"  # tokens in URLs never leave the site
    assert page.headers["x-frame-options"] == "DENY"
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


# -- the pure parts ------------------------------------------------------------------------------


def test_subscriber_ids_are_safe_and_unique(tmp_path):
    first = signup.subscriber_id_for(tmp_path, "../../Etc/Passwd@example.org")
    assert re.fullmatch(r"etc-passwd-[0-9a-f]{8}", first)
    (tmp_path / f"{first}.toml").write_text("")
    second = signup.subscriber_id_for(tmp_path, "../../Etc/Passwd@example.org")
    assert second != first and len(second) > len(first)
    assert signup.subscriber_id_for(tmp_path, "+++@example.org").startswith("subscriber-")
    with pytest.raises(ValueError):
        signup.subscription_path(tmp_path, "../evil")


def test_a_broken_edit_is_never_written(tmp_path):
    path = tmp_path / "bob.toml"
    path.write_text('email = "bob@example.org"\n\n[[watch]]\nname = "a"\nquery = "attention"\n')
    before = path.read_text()

    def typo(document):
        document["watch"][0]["min_upvote"] = 3

    with pytest.raises(SubscriptionError) as caught:
        signup.update_subscription(tmp_path, "bob", typo)
    assert "did you mean 'min_upvotes'?" in signup.error_text(caught.value)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bob.toml"]


def test_the_sign_up_mail_goes_through_the_outbox_by_default(tmp_path):
    settings = load_settings(None, environ={"PAPERBOT_MAIL_OUTBOX": str(tmp_path / "outbox")})
    request = signup.SignupRequest("erin@example.org", "attention", "daily 08:00", "UTC")
    now = datetime(2026, 6, 12, 8, 0, tzinfo=UTC)
    signup.send_email(
        settings, signup.confirmation_email(settings, request, "https://x.example/c/1", now), now
    )
    [path] = (tmp_path / "outbox").glob("*.eml")
    mail = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    assert mail["To"] == "erin@example.org" and "https://x.example/c/1" in mail.get_content()
