"""Compose a digest into an email: multipart/alternative (plain text, then HTML), ready for SMTP.

    links = digest_links(settings, subscriber.id, period, now=now)
    digest = build_digest(subscriber, matches, generated_at=now, links=links, period=period)
    smtp.sendmail(sender, [recipient], email_data(digest, render_digest(digest), settings))

Headers: From, To, Subject, Date (when the digest was made, so a retry sends the same
bytes), a Message-ID derived from the digest's identity (subscriber, channel, period: a
retried send carries the same id, and a receiving server may drop the duplicate),
List-Id, List-Unsubscribe with a mailto: and an https: URL carrying a signed per-subscriber
token, List-Unsubscribe-Post for one-click unsubscribe (RFC 8058: the https URL receives a
POST; the mail must be DKIM-signed over both headers by the sending server), and
Auto-Submitted so vacation replies stay away.

The web app (a later piece) serves the links; their paths are a contract with it:

    {base_url}/unsubscribe/{token}       GET: a confirm page; POST: unsubscribe (one click)
    {base_url}/manage/{token}            the subscriber's watches
    {base_url}/digest/{period}/{token}   every match of one digest (the "and N more" link)

tokens made by `bot.tokens.make_token` for the purposes "unsubscribe", "manage" and
"digest" (the last bound to the period); the mailto: asks for the same unsubscribe token in
its subject.
"""

from __future__ import annotations

import binascii
import email
import email.policy
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr
from functools import lru_cache
from urllib.parse import quote

from bot.errors import SettingsError
from bot.models import Digest
from bot.render import DigestLinks, RenderedDigest
from bot.tokens import make_token

__all__ = [
    "MAX_LINE",
    "POLICY",
    "MessageSettings",
    "digest_links",
    "email_bytes",
    "email_data",
    "forget_encodings",
    "message_id",
]

MAX_LINE = 998  # RFC 5322: a line longer than this (without its CRLF) is refused by real servers
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')  # email.utils' specialsre: a name holding one is quoted
_ADDRESS = re.compile(r'[^@\s<>,;:"()\[\]\\]+@[^@\s<>,;:"()\[\]\\]+')
# A body line starting "From " is rewritten ">From " by mailers that store mbox files, and one
# starting "." must be doubled on the wire (SMTP's dot-stuffing, a pass over every byte): the
# quoted-printable encoder writes their first character as =46 or =2E, so neither occurs.
_GUARDED_START = re.compile(rb"^(?:From |\.)", re.M)
# A line but the first starting so, found in one pass: two `in` searches took 2.5 times as long
# (Python's search for a short string of bytes goes byte by byte).
_GUARDED_AFTER = re.compile(rb"\n(?:\.|From )")
_QP_LINE = 76  # RFC 2045 6.7: an encoded line is at most 76 characters
_QP_TOKEN = re.compile(rb"=[0-9A-F]{2}|.", re.S)
_WORD_BYTES = 42  # "=?utf-8?b?" + base64 of 42 bytes (56) + "?=": 68 characters (RFC 2047: 75)


# For the other mails paperbot writes with EmailMessage (sign-up, operator alerts): CRLF,
# lines folded at 78. Digests are written by email_data.
POLICY = email.policy.SMTP


@dataclass(frozen=True, slots=True)
class MessageSettings:
    """What a digest email needs from paperbot's settings (see the keys in each comment)."""

    sender: str  # mail.from: "paperbot <digest@paperbot.example.org>"
    base_url: str  # web.base_url: "https://paperbot.example.org", where the links lead
    secret: str | tuple[str, ...]  # web.secret (environment only): signs the links' tokens
    unsubscribe_to: str | None = None  # mail.unsubscribe_to; default unsubscribe@<From's domain>
    list_id: str | None = None  # mail.list_id; default "paperbot digests <digests.<From's domain>>"

    @property
    def sender_address(self) -> str:
        address = _parsed(self.sender)[1]
        if "@" not in address or not address.rpartition("@")[2]:
            raise SettingsError(
                f"mail.from: {self.sender!r} is not an address: write e.g. 'paperbot <digest@example.org>'"
            )
        return address

    @property
    def domain(self) -> str:
        return self.sender_address.rpartition("@")[2].lower()

    @property
    def unsubscribe_address(self) -> str:
        return self.unsubscribe_to or f"unsubscribe@{self.domain}"

    @property
    def list_header(self) -> str:
        return self.list_id or f"paperbot digests <digests.{self.domain}>"

    @property
    def site(self) -> str:
        if not re.match(r"^https?://[\x21-\x7e]+$", self.base_url):
            raise SettingsError(
                f"web.base_url: {self.base_url!r} is not a URL: write e.g. https://paperbot.example.org"
            )
        return self.base_url.rstrip("/")


@lru_cache(maxsize=16)
def _parsed(sender: str) -> tuple[str, str]:
    """(name, address) of mail.from, parsed once: every digest asks several times."""
    return parseaddr(sender)


def digest_links(settings: MessageSettings, subscriber_id: str, period: str, *, now: datetime) -> DigestLinks:
    """The signed links of one digest, stamped `now` (the digest's time: the same digest, the same links)."""

    def token(purpose: str, extra: str | None = None) -> str:
        return make_token(settings.secret, purpose, subscriber_id, extra, now=now)

    site = settings.site
    return DigestLinks(
        list_url=f"{site}/digest/{quote(period, safe='')}/{token('digest', period)}",
        unsubscribe_url=f"{site}/unsubscribe/{token('unsubscribe')}",
        manage_url=f"{site}/manage/{token('manage')}",
    )


def message_id(identity: tuple[str, ...], domain: str) -> str:
    """`<paperbot.{hash of identity}@{domain}>`: the same digest always gets the same Message-ID."""
    digest = hashlib.sha256("\x1f".join(identity).encode("utf-8")).hexdigest()[:32]
    return f"<paperbot.{digest}@{domain}>"


def _recipient(digest: Digest, to: str | None) -> str:
    if to:
        return to
    for channel in digest.subscriber.channels:
        if channel.name == digest.channel:
            if channel.kind != "email":
                raise ValueError(
                    f"channel {channel.name!r} of {digest.subscriber.id} is not an email channel"
                )
            if "${" in channel.target:
                raise ValueError(f"expand {channel.target} before composing: pass to=the address")
            return channel.target
    if digest.subscriber.email:
        return digest.subscriber.email
    raise ValueError(f"{digest.subscriber.id} has no email channel named {digest.channel!r}")


def email_data(
    digest: Digest, rendered: RenderedDigest, settings: MessageSettings, *, to: str | None = None
) -> bytes:
    """The digest's email as the bytes handed to SMTP: multipart/alternative (plain text, then
    HTML), both quoted-printable (every line short, the HTML still readable in the raw
    message), CRLF line ends, no line over 998 characters.

    Written out here rather than through EmailMessage, whose header objects and generator took
    three quarters of the time of making a digest (bench/render_send.py). The stdlib still
    does the parts that need care: addresses (`formataddr`), RFC 2047 encoded words
    (`Header`), quoted-printable (`binascii.b2a_qp`). Every value is one line (a title or a
    name with a line break cannot add a header); tests read the result back with the stdlib
    parser.
    """
    subscriber = digest.subscriber
    # The token of the https link (bot.message.digest_links made it): the same in both.
    unsubscribe_token = digest.unsubscribe_url.rpartition("/")[2]
    mailto = f"mailto:{settings.unsubscribe_address}?subject=unsubscribe%20{quote(unsubscribe_token)}"
    identity = message_id(digest.identity, settings.domain)
    # A boundary from the identity, not random: a retried send is the same bytes. "=_" never
    # occurs in quoted-printable text, so the boundary cannot collide with a body line.
    boundary = "=_" + identity[1:].split("@", 1)[0]
    sender, list_id = _run_headers(settings.sender, settings.list_header)
    headers = [
        sender,
        _header("To", _address(subscriber.name, _recipient(digest, to))),
        _header("Subject", _text(rendered.subject, "Subject")),
        _date_header(digest.generated_at.astimezone(UTC)),
        _header("Message-ID", identity),
        list_id,
        # Folded only between its URLs: an encoded word or a break inside a URL is read by no client.
        _header("List-Unsubscribe", f"<{mailto}>,\r\n <{digest.unsubscribe_url}>"),
        _FIXED_HEADERS,
        _header("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
    ]
    delimiter = f"--{boundary}\r\n".encode("ascii")
    head = "".join(headers).encode("ascii")
    _check_lines(head)
    pieces = [head, b"\r\n", delimiter]  # the message's bytes, joined once
    _add_text_part(pieces, "plain", rendered.text_parts)
    pieces.append(b"\r\n" + delimiter)
    _add_text_part(pieces, "html", rendered.html_parts)
    pieces.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    return b"".join(pieces)


# The same in every digest: one-click unsubscribe (RFC 8058), not an autoresponder's target (RFC 3834).
_FIXED_HEADERS = (
    "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    "Auto-Submitted: auto-generated\r\n"
    "MIME-Version: 1.0\r\n"
)


@lru_cache(maxsize=16)
def _run_headers(sender: str, list_header: str) -> tuple[str, str]:
    """The From and List-Id headers: the same in every digest of a run, made once."""
    return _header("From", _address(*_parsed(sender))), _header("List-Id", _list_id(list_header))


@lru_cache(maxsize=64)
def _date_header(moment: datetime) -> str:
    """The Date header of a UTC time: a run's digests mostly share theirs (the end of their
    window). UTC, as a local time's two sides of a DST fold are equal keys an hour apart."""
    return _header("Date", format_datetime(moment))


def _header(name: str, value: str) -> str:
    unfolded = value.replace("\r\n ", " ")
    if "\r" in unfolded or "\n" in unfolded or not value.isascii():
        raise ValueError(f"the {name} header must be ASCII, one line but for folds: {value!r}")
    return f"{name}: {value}\r\n"


def _address(name: str, address: str) -> str:
    """`Name <address>`: the name quoted where it must be, or in RFC 2047 encoded words when it
    is not ASCII or too long for one line; the address one plain addr-spec."""
    if not _ADDRESS.fullmatch(address):
        raise ValueError(f"not one plain mail address: {address!r}: write e.g. alice@example.org")
    name = " ".join(name.split())
    if not name:
        return address
    if name.isascii() and len(name) <= 60:
        if address.isascii() and _SPECIALS.search(name) is None:
            return f"{name} <{address}>"  # as formataddr writes a name it need not quote, 10 times faster
        return formataddr((name, address))
    return f"{_encoded_words(name)}\r\n <{address}>"


def _list_id(value: str) -> str:
    """The List-Id: its `<id>` never encoded (RFC 2919: filters read it raw), its phrase as any text."""
    found = re.fullmatch(r"(.*?)\s*(<[^<>\s]+>)", value.strip())
    if found is None:
        return _text(value, "List-Id")
    phrase, ident = found.groups()
    if phrase.isascii() and len("List-Id: ") + len(phrase) + 1 + len(ident) <= 78:
        return f"{phrase} {ident}".strip()
    return f"{_text(phrase, 'List-Id')}\r\n {ident}"


@lru_cache(maxsize=1024)
def _text(value: str, name: str) -> str:
    """An unstructured header value: as it is when ASCII and short, else RFC 2047 encoded words.
    (Kept: a run's digests share a third of their subjects, the same count, day and top paper.)"""
    value = " ".join(value.split())
    if value.isascii() and len(name) + 2 + len(value) <= 78:
        return value
    return _encoded_words(value)


def _encoded_words(value: str) -> str:
    """RFC 2047 encoded words (base64, at most 68 characters each), one per line, each ending
    after a space where there is one: readers join adjacent encoded words with nothing between.

    email.header.Header does this too, but its folding measured every candidate line again
    and again: a third of the time of a whole message."""
    data = value.encode("utf-8")
    words = []
    start = 0
    while len(data) - start > _WORD_BYTES:
        end = start + _WORD_BYTES
        while data[end] & 0xC0 == 0x80:  # never cut a character: end before its first byte
            end -= 1
        space = data.rfind(b" ", start, end)
        end = space + 1 if space >= 0 else end
        words.append(data[start:end])
        start = end
    words.append(data[start:])
    return "\r\n ".join(
        f"=?utf-8?b?{binascii.b2a_base64(word, newline=False).decode('ascii')}?=" for word in words
    )


def _add_text_part(encoded: list[bytes], subtype: str, parts: tuple[tuple[str, bool], ...]) -> None:
    """One quoted-printable part from its pieces, (piece, shared), added to `encoded`, the bytes of
    the message. Quoted-printable works line by line, so text cut at line ends encodes piece by
    piece to the same bytes; the pieces other digests share (bot.render's cards) are encoded once."""
    encoded.append(_PART_HEADERS[subtype])
    add, from_cache = encoded.append, _encoded_shared  # a digest's parts number dozens
    run: list[str] = []
    shared = True
    for piece, piece_shared in parts:
        if not run and piece.endswith("\n"):  # whole lines on their own: most pieces
            if piece_shared:
                add(from_cache(piece))
            else:
                add(_encoded_recent(piece) if len(piece) <= _RECENT_CHARS else _encoded(piece))
            continue
        if not piece:
            continue  # else it would join the shared piece after it, encoded anew in every digest
        run.append(piece)
        shared = shared and piece_shared
        if piece.endswith("\n"):  # ends the pieces joined since one that did not end a line
            text = "".join(run)
            add(from_cache(text) if shared else _encoded(text))
            run, shared = [], True
    if run:
        add(_encoded("".join(run)))


_PART_HEADERS = {
    subtype: (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode("ascii")
    for subtype in ("plain", "html")
}


def _encoded(text: str) -> bytes:
    """Quoted-printable with CRLF line ends, by construction: with every CR gone first, b2a_qp
    ends each line it writes in LF alone. Its lines are at most 76 characters (77 where it
    encodes a space ending a full line as =20: far under SMTP's 998)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    encoded = binascii.b2a_qp(text.encode("utf-8"), istext=True)
    if encoded.startswith((b".", b"From ")) or _GUARDED_AFTER.search(encoded):
        encoded = b"\n".join([_guarded(line) for line in encoded.split(b"\n")])
    return encoded.replace(b"\n", b"\r\n")


def _guarded(line: bytes) -> bytes:
    """An encoded line whose first character is written =2E (".") or =46 ("From "), cut with a
    soft line break where that makes it longer than 76 characters (its rest guarded too)."""
    if not _GUARDED_START.match(line):
        return line
    line = b"=%02X" % line[0] + line[1:]
    if len(line) <= _QP_LINE:
        return line
    # Cut after the last whole character (a literal, or an =XX escape) that leaves room for "=".
    cut = 0
    for token in _QP_TOKEN.finditer(line):
        if token.end() > _QP_LINE - 1:
            break
        cut = token.end()
    return line[:cut] + b"=\n" + _guarded(line[cut:])


@lru_cache(maxsize=8192)
def _encoded_shared(text: str) -> bytes:
    return _encoded(text)


# A digest's own short lines (its heading, its subject in <title>, the text's first lines) are
# mostly those of other digests of the day, with the same count: kept by their text a while.
# Longer ones (the footer with the address and links) are each digest's alone.
_RECENT_CHARS = 256
_encoded_recent = lru_cache(maxsize=1024)(_encoded)


def forget_encodings() -> None:
    """Drop every piece kept encoded and every header kept made, as in a fresh process (a
    benchmark of a cold start calls this, with bot.render.forget_cards)."""
    for cache in (_encoded_shared, _encoded_recent, _text, _date_header, _run_headers):
        cache.cache_clear()


def _check_lines(data: bytes) -> None:
    """CRLF line ends only, and no line over 998 characters: else a bug, which a server would refuse."""
    if data.count(b"\r") != data.count(b"\n") or data.count(b"\r\n") != data.count(b"\n"):
        raise ValueError("a bare CR or LF in the message: every line must end in CRLF")
    if len(data) <= MAX_LINE:  # no line can be longer: the headers of most messages
        return
    longest = max(map(len, data.split(b"\r\n")))
    if longest > MAX_LINE:
        raise ValueError(f"a line of {longest} characters in the message: SMTP allows {MAX_LINE}")


def email_bytes(message: EmailMessage) -> bytes:
    """The message as SMTP wants it: CRLF line ends, no line over 998 characters (else a bug: raises)."""
    data = message.as_bytes(policy=POLICY)
    _check_lines(data)
    return data
