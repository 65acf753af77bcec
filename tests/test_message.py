"""The digest as an email: headers a real parser reads back, SMTP-safe bytes, signed links."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
import textwrap
from datetime import UTC, datetime, timedelta
from email.header import decode_header, make_header
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import unquote

import pytest

from bot.captures import read_capture
from bot.errors import SettingsError
from bot.match import Match, WatchIndex, match_papers
from bot.message import MessageSettings, digest_links, email_bytes, email_data, message_id
from bot.models import Paper
from bot.render import build_digest, digest_period, render_digest
from bot.subscriptions import read_subscription
from bot.tokens import (
    UNSUBSCRIBE_MAX_AGE,
    TokenError,
    TokenExpired,
    make_token,
    read_token,
)
from conftest import check_golden

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = Path(__file__).parent / "fixtures" / "hf" / "api_daily_papers_2026-06-12.json"
NOW = datetime(2026, 6, 12, 6, 0, tzinfo=UTC)
SECRET = "test-secret-not-for-production"
SETTINGS = MessageSettings(
    sender="paperbot <digest@paperbot.example.org>", base_url="https://paperbot.example.org/", secret=SECRET
)


def papers() -> list[Paper]:
    return [paper for capture in read_capture(CAPTURE) for paper in capture.papers]


def digest_for(subscriber, matches, now=NOW, channel="email"):
    period, label = digest_period(subscriber, now)
    links = digest_links(SETTINGS, subscriber.id, period, now=now)
    return build_digest(subscriber, matches, generated_at=now, links=links, channel=channel, period=period)


def alice_digest(now=NOW):
    alice = read_subscription(ROOT / "subscriptions" / "example-alice.toml")
    return digest_for(alice, match_papers(papers(), WatchIndex([alice])), now)


def bob(tmp_path, **top):
    lines = ['name = "Bob Example"', 'email = "bob@example.org"', 'timezone = "Asia/Tokyo"']
    lines += [f"{key} = {value}" for key, value in top.items()]
    lines += ["[[watch]]", 'name = "all"', 'query = "the"']
    path = tmp_path / "bob.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return read_subscription(path)


def sent(digest, **options) -> tuple[bytes, email.message.EmailMessage]:
    """The bytes handed to SMTP, and what a receiving mail program parses out of them."""
    data = email_data(digest, render_digest(digest), SETTINGS, **options)
    return data, email.message_from_bytes(data, policy=email.policy.default)


def summary(message: email.message.EmailMessage) -> str:
    """A message as a reader's mail program sees it: headers decoded and unfolded, then the parts.

    The MIME boundary, the one value a mail library may choose as it likes, is normalised.
    """
    boundary = message.get_boundary()
    lines = [f"{name}: {value}".replace(boundary, "BOUNDARY") for name, value in message.items()]
    for part in message.walk():
        encoding = part["Content-Transfer-Encoding"]
        lines.append(f"part: {part.get_content_type()}; charset={part.get_content_charset()}; {encoding}")
    return "\n".join(lines) + "\n"


# -- the message -----------------------------------------------------------------------------


def test_example_alice_message_matches_its_golden_file():
    _, message = sent(alice_digest())
    check_golden("example-alice_2026-06-12.headers.txt", summary(message))


def test_headers_read_back_by_the_stdlib_parser():
    digest = alice_digest()
    rendered = render_digest(digest)
    data, message = sent(digest)

    assert message["From"].addresses[0].addr_spec == "digest@paperbot.example.org"
    assert str(message["To"]) == "Alice Example <alice@example.org>"
    assert message["Subject"] == rendered.subject
    assert parsedate_to_datetime(message["Date"]) == NOW
    assert re.fullmatch(r"<paperbot\.[0-9a-f]{32}@paperbot\.example\.org>", message["Message-ID"])
    assert message["List-Id"] == "paperbot digests <digests.paperbot.example.org>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "multipart/alternative"
    plain, html = message.iter_parts()
    assert (plain.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    assert plain.get_content().replace("\r\n", "\n") == rendered.text
    assert html.get_content().replace("\r\n", "\n") == rendered.html
    assert b"=?utf-8?" not in data.split(b"List-Unsubscribe:")[1].split(b"List-Unsubscribe-Post")[0]


def test_list_unsubscribe_carries_a_mailto_and_an_https_url_with_the_subscribers_token():
    _, message = sent(alice_digest())
    mailto, https = re.fullmatch(r"<(mailto:[^>]+)>, <(https://[^>]+)>", message["List-Unsubscribe"]).groups()

    assert mailto.startswith("mailto:unsubscribe@paperbot.example.org?subject=unsubscribe%20")
    mail_token = unquote(mailto.split("?subject=", 1)[1]).removeprefix("unsubscribe ")
    assert https.startswith("https://paperbot.example.org/unsubscribe/")
    web_token = https.rsplit("/", 1)[1]
    for token in (mail_token, web_token):
        assert read_token(SECRET, "unsubscribe", token, UNSUBSCRIBE_MAX_AGE, now=NOW) == "example-alice"
    # The body's unsubscribe link is the same one-click URL.
    assert https in render_digest(alice_digest()).html


def test_a_retried_send_is_the_same_message_with_the_same_id():
    first, _ = sent(alice_digest())
    second, _ = sent(alice_digest())
    assert first == second


def test_message_id_follows_the_digest_identity(tmp_path):
    base = alice_digest()
    same = message_id(base.identity, "paperbot.example.org")
    assert same == message_id(("example-alice", "email", "2026-06-12"), "paperbot.example.org")
    assert message_id(("example-alice", "email", "2026-06-13"), "paperbot.example.org") != same
    assert message_id(("example-alice", "work-email", "2026-06-12"), "paperbot.example.org") != same
    assert message_id(("bob", "email", "2026-06-12"), "paperbot.example.org") != same
    # A later run for the same day (say, a retry an hour on) keeps the id.
    _, later = sent(alice_digest(NOW + timedelta(hours=1)))
    assert later["Message-ID"] == same


def test_the_date_is_the_digests_time_on_either_side_of_a_dst_fold():
    """02:30 in Berlin on 25 Oct 2026 happens twice; each digest says its own UTC time (the
    two are equal as keys, which a cache of Date headers must not confuse)."""
    from zoneinfo import ZoneInfo

    first = datetime(2026, 10, 25, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    _, before = sent(alice_digest(first))
    _, after = sent(alice_digest(first.replace(fold=1)))
    assert before["Date"] == "Sun, 25 Oct 2026 00:30:00 +0000"
    assert after["Date"] == "Sun, 25 Oct 2026 01:30:00 +0000"


def test_bytes_have_crlf_line_ends_and_no_line_over_998(tmp_path):
    subscriber = bob(tmp_path, max_papers=200)
    long_word = "Supercalifragilistic" * 60  # 1,200 letters with no space to fold at
    paper = Paper(id="2606.00009", title=f"A {long_word} title", abstract=long_word, ai_summary=long_word)
    matches = [Match(subscriber.id, paper, ("all",), 99.0, ())]
    matches += [Match(subscriber.id, p, ("all",), 1.0, ()) for p in papers()]
    data, message = sent(digest_for(subscriber, matches))

    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert long_word in message.get_body(("plain",)).get_content()


def test_email_bytes_refuses_a_line_a_server_would_refuse():
    message = email.message_from_string("Subject: x\n\n" + "y" * 1200 + "\n", policy=email.policy.default)
    with pytest.raises(ValueError, match="998"):
        email_bytes(message)


def test_a_line_of_998_characters_passes_and_one_of_999_is_refused():
    from bot.message import _check_lines

    for data in (b"x" * 998, b"x" * 998 + b"\r\n", b"To: a\r\n" + b"x" * 998 + b"\r\n"):
        _check_lines(data)
    for data in (b"x" * 999, b"To: a\r\n" + b"x" * 999 + b"\r\n", b"To: a\r\n" + b"x" * 999):
        with pytest.raises(ValueError, match="a line of 999 characters"):
            _check_lines(data)


# -- no header injection -----------------------------------------------------------------------


def test_a_line_break_in_a_title_does_not_add_headers(tmp_path):
    subscriber = bob(tmp_path)
    paper = Paper(
        id="2606.00010", title="Attention\r\nBcc: victim@example.org\r\n\r\n<b>body</b>", abstract="a"
    )
    data, message = sent(digest_for(subscriber, [Match(subscriber.id, paper, ("all",), 1.0, ())]))

    assert message["Bcc"] is None
    assert len(message.get_all("Subject")) == 1
    assert message["Subject"].endswith("Attention Bcc: victim@example.org <b>body</b>")
    assert not re.search(rb"^Bcc:", data, re.M)


def test_a_hostile_subscriber_name_stays_in_the_to_header(tmp_path):
    subscriber = dataclasses.replace(bob(tmp_path), name='Eve\n"Bcc: x@y" <z@w>')
    _, message = sent(digest_for(subscriber, []))
    assert message["Bcc"] is None
    assert [a.addr_spec for a in message["To"].addresses] == ["bob@example.org"]


@pytest.mark.parametrize(
    "name",
    ["Zhang Wěi 张伟 " * 4, "Ada " + "Lovelace " * 150, 'Dr. "Q" O\'Brien, PhD', "李" * 300],
)
def test_any_subscriber_name_reads_back_whole_in_short_lines(tmp_path, name):
    """Long and non-ASCII names become RFC 2047 encoded words of at most 75 characters,
    folded; a digest is never refused for its recipient's name."""
    subscriber = dataclasses.replace(bob(tmp_path), name=name)
    data, message = sent(digest_for(subscriber, []))
    assert message["To"].addresses[0].addr_spec == "bob@example.org"
    # Decoded as RFC 2047 says (adjacent encoded words join with nothing between); the
    # stdlib's address parser would put a space between them.
    raw = re.search(rb"^To: (.*?) <bob@example\.org>\r\n", data, re.M | re.S).group(1).decode("ascii")
    shown = str(make_header(decode_header(raw))) if "=?" in raw else email.utils.parseaddr(raw + " <x@y>")[0]
    assert shown == " ".join(name.split())
    to_lines = re.search(rb"^To: .*?>\r\n", data, re.M | re.S).group(0).split(b"\r\n")
    assert max(len(line) for line in to_lines) <= 78
    assert all(len(word) <= 75 for word in re.findall(rb"=\?utf-8\?b\?[^?]*\?=", b"".join(to_lines)))


@pytest.mark.parametrize(
    "name", ["Bob", "Bob Smith", "Dr. Bob", 'Bob "B" Smith', "Smith, Bob", "a\\b", "Bob (lab)"]
)
def test_a_short_ascii_name_is_written_as_the_stdlib_writes_it(name):
    """The To header writes a plain name as it is and quotes one holding a special, as
    email.utils.formataddr does (which paperbot skips where it may: it took 2 µs a digest)."""
    from bot.message import _address

    assert _address(name, "bob@example.org") == email.utils.formataddr((name, "bob@example.org"))


def test_the_list_id_stays_readable_whatever_its_length():
    """RFC 2919: filters match the raw <id>; only its phrase may be encoded."""
    long_domain = "digests." + "very-long-department-name." * 2 + "example.org"
    settings = dataclasses.replace(SETTINGS, list_id=f"Papers für das Labor <{long_domain}>")
    digest = alice_digest()
    data = email_data(digest, render_digest(digest), settings)
    assert f"<{long_domain}>".encode() in data
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert message["List-Id"] == f"Papers für das Labor <{long_domain}>"


def test_a_recipient_that_is_not_one_plain_address_is_refused(tmp_path):
    digest = digest_for(bob(tmp_path), [])
    for address in ("victim,attacker@evil.example", "a@b.example\r\nBcc: c@d.example", '"x"@y.example'):
        with pytest.raises(ValueError, match="not one plain mail address"):
            email_data(digest, render_digest(digest), SETTINGS, to=address)


def test_an_email_encoded_piece_by_piece_is_the_email_encoded_whole(tmp_path):
    """Digests share their cards; email_data encodes each shared piece once. The bytes must be
    those of encoding each part whole, for every digest (here: every paper of the capture, in
    digests of 1, 5 and all papers, and alice's)."""
    reader = bob(tmp_path, max_papers=50)
    found = match_papers(papers(), WatchIndex([reader]))
    digests = [alice_digest(), *(digest_for(reader, found[:size]) for size in (1, 5, len(found)))]
    for digest in digests:
        rendered = render_digest(digest)
        assert sum(shared for _, shared in rendered.html_parts) > rendered.shown  # the cards, the head
        assert sum(shared for _, shared in rendered.text_parts) >= rendered.shown
        whole = dataclasses.replace(
            rendered, html_parts=((rendered.html, False),), text_parts=((rendered.text, False),)
        )
        assert email_data(digest, rendered, SETTINGS) == email_data(digest, whole, SETTINGS)


# Kept for a process's life whatever it renders: its template environments, the CSS inliner, what
# it has read of its templates, a pattern per wrapping width, the run's From and each time zone's
# local time of the run. Every other cache or table that rendering a digest fills holds work a
# fresh run does again.
_SETUP_CACHES = {
    "bot.render": {
        "_default_environment",
        "_recording_environment",
        "_unrecorded_modules",
        "_globals_of",
        "_inliner",
        "_fillable",
        "_line_of",
        "_prints_cards_as_they_are",
        "_local_moment",
    },
    "bot.message": {"_parsed"},
}
# Tables that hold the same whatever was rendered (made when the module is imported).
_CONSTANT_TABLES = {"bot.render": {"_CONTROLS_TO_SPACES"}, "bot.message": {"_PART_HEADERS"}}


def test_a_cold_start_forgets_all_that_rendering_keeps(tmp_path):
    """bench/render_send.py starts each run cold, as a fresh `paperbot run --once`: no card made,
    no piece encoded. It calls bot.render.forget_cards and bot.message.forget_encodings, which
    name what they clear one by one: a cache added later and left out of them would survive into
    the next run and flatter the figures. Every cache and table that rendering and encoding
    digests fill must be empty after those two calls, but the setup caches and constant tables
    named above."""
    import functools

    import bot.message
    import bot.render

    modules = {module.__name__: module for module in (bot.render, bot.message)}

    def filled() -> set[tuple[str, str]]:
        """The caches and tables of the two modules that hold something, but the setup caches
        and the constant tables (not what was added since some moment: what earlier tests left
        in a table nothing clears would go unseen)."""
        return {
            (module_name, name)
            for module_name, module in modules.items()
            for name, value in vars(module).items()
            if not name.startswith("__")
            and name not in _SETUP_CACHES[module_name] | _CONSTANT_TABLES[module_name]
            and (
                (isinstance(value, functools._lru_cache_wrapper) and value.cache_info().currsize)
                or (value.__class__ is dict and value)
            )
        }

    bot.render.forget_cards()
    bot.message.forget_encodings()
    assert filled() == set()
    reader = bob(tmp_path, max_papers=50)
    found = match_papers(papers(), WatchIndex([reader]))
    keys = [bot.render.card_key(match) for match in found[:3]]
    bot.render.keep_cards(keys, bot.render.made_cards(keys))  # as a run's helper takes cards
    bot.render.prepare_cards(found)  # as a run makes its cards, many to a page
    for digest in (alice_digest(), digest_for(reader, found[:3]), digest_for(reader, found)):
        email_data(digest, render_digest(digest), SETTINGS)

    kept = filled()
    assert {("bot.render", name) for name in ("_card_parts", "_LAYOUTS", "_PREPARED", "_KEPT")} <= kept
    assert ("bot.message", "_encoded_shared") in kept
    bot.render.forget_cards()
    bot.message.forget_encodings()
    assert filled() == set()


@pytest.mark.parametrize(
    "lines",
    [
        "From the lab\nFrom here\n",
        ".hidden\n..\n.\n",
        "." + "a" * 200 + "\n",  # a 76-character encoded line, longer once its "." is =2E
        "From " + "b" * 74 + ".\n",
        ".é" + "é" * 40 + "\n",  # a cut that must not split an =C3=A9
        ("x" * 75 + ".") * 3 + "\n",  # soft line breaks before a "."
    ],
    ids=["From", "dots", "long dot", "long From", "escapes", "soft breaks"],
)
def test_a_body_line_starting_with_from_or_a_dot_is_encoded(lines):
    """mbox-storing mailers rewrite a line starting "From " as ">From ", and SMTP doubles a
    leading "." (a pass over every byte of every message): their first character goes as =46
    or =2E, every encoded line still at most 76 characters, and the text reads as it was."""
    digest = alice_digest()
    rendered = render_digest(digest)
    rendered = dataclasses.replace(rendered, text_parts=((lines, False), *rendered.text_parts))
    data = email_data(digest, rendered, SETTINGS)
    body = data.split(b"\r\n\r\n", 1)[1]
    assert not re.search(rb"^(From |\.)", body, re.M)  # the HTML's style sheet has ".head{" lines too
    assert max(len(line) for line in body.split(b"\r\n")) <= 76
    message = email.message_from_bytes(data, policy=email.policy.default)
    text = message.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text.startswith(lines)
    assert message.get_body(("html",)).get_content().replace("\r\n", "\n") == rendered.html


# -- recipient and settings ------------------------------------------------------------------


def test_the_recipient_comes_from_the_digest_channel_or_is_given(tmp_path):
    toml = """
        name = "Carol"
        email = "carol@example.org"
        [channels]
        email = true
        work = { kind = "email", to = "${CAROL_WORK_EMAIL}" }
        [[watch]]
        name = "all"
        query = "the"
    """
    path = tmp_path / "carol.toml"
    path.write_text(textwrap.dedent(toml), encoding="utf-8")
    carol = read_subscription(path)

    _, message = sent(digest_for(carol, []))
    assert message["To"].addresses[0].addr_spec == "carol@example.org"
    work = digest_for(carol, [], channel="work")
    with pytest.raises(ValueError, match="CAROL_WORK_EMAIL"):
        sent(work)
    _, message = sent(work, to="carol@work.example.com")
    assert message["To"].addresses[0].addr_spec == "carol@work.example.com"


def test_settings_name_the_key_to_fix():
    with pytest.raises(SettingsError, match="mail.from"):
        email_data(
            alice_digest(),
            render_digest(alice_digest()),
            MessageSettings("paperbot", "https://x.example", "s"),
        )
    with pytest.raises(SettingsError, match="web.base_url"):
        digest_links(
            MessageSettings(sender="a@b.example", base_url="paperbot.example", secret="s"),
            "x",
            "2026-06-12",
            now=NOW,
        )


def test_digest_links_are_signed_for_their_own_purpose():
    links = digest_links(SETTINGS, "alice", "2026-06-12", now=NOW)
    unsubscribe = links.unsubscribe_url.rsplit("/", 1)[1]
    manage = links.manage_url.rsplit("/", 1)[1]
    assert links.list_url.startswith("https://paperbot.example.org/digest/2026-06-12/")
    listing = links.list_url.rsplit("/", 1)[1]

    assert read_token(SECRET, "unsubscribe", unsubscribe, now=NOW) == "alice"
    assert read_token(SECRET, "manage", manage, now=NOW) == "alice"
    assert read_token(SECRET, "digest", listing, extra="2026-06-12", now=NOW) == "alice"
    with pytest.raises(TokenError):
        read_token(SECRET, "unsubscribe", manage, now=NOW)  # a manage link cannot unsubscribe
    with pytest.raises(TokenError):
        read_token(SECRET, "digest", listing, extra="2026-06-13", now=NOW)  # nor open another day


# -- tokens ----------------------------------------------------------------------------------


def test_a_token_reads_back_as_its_subscriber():
    token = make_token(SECRET, "unsubscribe", "example-alice", now=NOW)
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", token)  # safe in a URL path and a mail subject
    assert (
        read_token(SECRET, "unsubscribe", token, timedelta(days=1), now=NOW + timedelta(hours=23))
        == "example-alice"
    )


# Not the very last character: its low bits are base64 padding, which decode to the same signature.
@pytest.mark.parametrize("position", [0, 10, 30, -5])
def test_an_altered_token_is_refused(position):
    token = make_token(SECRET, "unsubscribe", "example-alice", now=NOW)
    index = position % len(token)
    altered = token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]
    with pytest.raises(TokenError) as raised:
        read_token(SECRET, "unsubscribe", altered, now=NOW)
    assert not isinstance(raised.value, TokenExpired)
    assert "not valid" in str(raised.value)


def test_a_token_whose_payload_names_someone_else_is_refused():
    alice = make_token(SECRET, "unsubscribe", "example-alice", now=NOW)
    bob = make_token(SECRET, "unsubscribe", "bob", now=NOW)
    forged = bob.split(".", 1)[0] + "." + alice.split(".", 1)[1]  # bob's payload, alice's signature
    with pytest.raises(TokenError):
        read_token(SECRET, "unsubscribe", forged, now=NOW)


def test_a_token_past_its_age_is_refused_as_expired():
    token = make_token(SECRET, "manage", "example-alice", now=NOW)
    with pytest.raises(TokenExpired, match="expired"):
        read_token(SECRET, "manage", token, timedelta(days=60), now=NOW + timedelta(days=61))
    assert (
        read_token(SECRET, "manage", token, timedelta(days=60), now=NOW + timedelta(days=59))
        == "example-alice"
    )


def test_another_secret_or_purpose_or_garbage_is_refused():
    token = make_token(SECRET, "unsubscribe", "example-alice", now=NOW)
    for secret, purpose, text in (
        ("another-secret", "unsubscribe", token),
        (SECRET, "manage", token),
        (SECRET, "unsubscribe", "not-a-token"),
        (SECRET, "unsubscribe", ""),
    ):
        with pytest.raises(TokenError):
            read_token(secret, purpose, text, now=NOW)
    for missing in ("", None, []):
        with pytest.raises(SettingsError, match="web.secret"):
            make_token(missing, "unsubscribe", "example-alice")
        with pytest.raises(SettingsError, match="web.secret"):  # as a run makes them
            make_token(missing, "unsubscribe", "example-alice", now=NOW)


def test_secrets_rotate_oldest_first():
    old_token = make_token("old", "unsubscribe", "example-alice", now=NOW)
    new_token = make_token(["old", "new"], "unsubscribe", "example-alice", now=NOW)
    assert read_token(["old", "new"], "unsubscribe", old_token, now=NOW) == "example-alice"
    assert read_token("new", "unsubscribe", new_token, now=NOW) == "example-alice"
    with pytest.raises(TokenError):
        read_token("new", "unsubscribe", old_token, now=NOW)


@pytest.mark.parametrize("secret", [SECRET, ["old", SECRET]])
@pytest.mark.parametrize(
    ("subscriber_id", "extra"),
    [
        ("example-alice", None),
        ("bøb ✓", "daily 2026-04-01"),
        ('a"b\\c\n', "é"),
        ("tab\there\x00\x1f\x7f\u2028/</", "😀"),
        ("lab-" + "a" * 300, None),
    ],
)
def test_a_run_makes_the_very_token_itsdangerous_makes(secret, subscriber_id, extra):
    """A run's tokens are made without itsdangerous's per-token work (bot.tokens._stamped_maker),
    but must be its tokens to the byte: what it signs, it reads."""
    from itsdangerous import URLSafeTimedSerializer

    from bot.tokens import _serializer, _signer_at

    payload = [subscriber_id] if extra is None else [subscriber_id, extra]
    token = make_token(secret, "digest", subscriber_id, extra, now=NOW)
    assert token == _serializer(secret, "digest", NOW).dumps(payload)  # itsdangerous's own dumps
    if "a" * 300 not in subscriber_id:  # itsdangerous would compress that one; paperbot does not
        stamped = _signer_at(int(NOW.timestamp()))
        assert token == URLSafeTimedSerializer(secret, salt="paperbot.digest", signer=stamped).dumps(payload)
    assert read_token(secret, "digest", token, extra=extra, now=NOW) == subscriber_id


def test_tokens_made_an_hour_apart_in_a_dst_change_carry_their_own_times():
    """02:30 in Berlin on 25 Oct 2026 happens twice; the two are equal datetimes, an hour apart.
    A run's token maker is kept per time: each must be stamped with its own."""
    from zoneinfo import ZoneInfo

    from bot.tokens import _serializer

    first, second = (datetime(2026, 10, 25, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"), fold=f) for f in (0, 1))
    assert first == second and second.timestamp() - first.timestamp() == 3600
    tokens = [make_token(SECRET, "digest", "bob", "p", now=moment) for moment in (first, second)]
    assert tokens == [_serializer(SECRET, "digest", moment).dumps(["bob", "p"]) for moment in (first, second)]
    assert tokens[0] != tokens[1]


def test_a_token_with_a_long_repetitive_id_reads_back_and_a_compressed_one_still_reads():
    """Tokens are not compressed (too short to gain), but one made compressed, as itsdangerous
    does by default when it is shorter, is read as well."""
    from itsdangerous import URLSafeTimedSerializer

    long_id = "lab-" + "a" * 300
    token = make_token(SECRET, "manage", long_id, now=NOW)
    assert not token.startswith(".") and len(token) > 400  # not compressed
    assert read_token(SECRET, "manage", token, now=NOW) == long_id
    compressed = URLSafeTimedSerializer(SECRET, salt="paperbot.manage").dumps([long_id])
    assert compressed.startswith(".") and len(compressed) < 100
    assert read_token(SECRET, "manage", compressed) == long_id
