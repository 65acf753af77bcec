"""Compose a digest into an email: multipart/alternative (plain text, then HTML), ready for SMTP.

    links = digest_links(settings, subscriber.id, period, now=now)
    digest = build_digest(subscriber, matches, generated_at=now, links=links, period=period)
    message = compose_email(digest, render_digest(digest), settings)
    smtp.sendmail(sender, [recipient], email_bytes(message))

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

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime, parseaddr
from urllib.parse import quote

from bot.errors import SettingsError
from bot.models import Digest
from bot.render import DigestLinks, RenderedDigest
from bot.tokens import make_token

__all__ = [
    "MAX_LINE",
    "POLICY",
    "MessageSettings",
    "compose_email",
    "digest_links",
    "email_bytes",
    "message_id",
]

MAX_LINE = 998  # RFC 5322: a line longer than this (without its CRLF) is refused by real servers
_VERBATIM = frozenset({"list-unsubscribe"})


class _DigestPolicy(EmailPolicy):
    """policy=SMTP (CRLF, lines folded at 78), except that List-Unsubscribe is folded only between
    its URLs: the stdlib would fold a long URL into RFC 2047 encoded-words, which no client reads back."""

    def _verbatim(self, name: str, value: str) -> str:
        parts = [part.strip() for part in str(value).split(",")]
        return f"{name}: " + ("," + self.linesep + " ").join(parts) + self.linesep

    def fold(self, name, value):
        if name.lower() in _VERBATIM:
            return self._verbatim(name, value)
        return super().fold(name, value)

    def fold_binary(self, name, value):
        if name.lower() in _VERBATIM:
            return self._verbatim(name, value).encode("ascii")
        return super().fold_binary(name, value)


POLICY = _DigestPolicy(linesep="\r\n")


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
        address = parseaddr(self.sender)[1]
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


def compose_email(
    digest: Digest, rendered: RenderedDigest, settings: MessageSettings, *, to: str | None = None
) -> EmailMessage:
    """The digest as a multipart/alternative email to `to` (default: the digest channel's address)."""
    subscriber = digest.subscriber
    unsubscribe_token = make_token(settings.secret, "unsubscribe", subscriber.id, now=digest.generated_at)
    mailto = f"mailto:{settings.unsubscribe_address}?subject={quote('unsubscribe ' + unsubscribe_token)}"

    message = EmailMessage(policy=POLICY)
    message["From"] = settings.sender
    name = " ".join(subscriber.name.split())
    message["To"] = Address(display_name=name, addr_spec=_recipient(digest, to))
    message["Subject"] = rendered.subject
    message["Date"] = format_datetime(digest.generated_at.astimezone(UTC))
    identity = message_id(digest.identity, settings.domain)
    message["Message-ID"] = identity
    message["List-Id"] = settings.list_header
    message["List-Unsubscribe"] = f"<{mailto}>, <{digest.unsubscribe_url}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message["Auto-Submitted"] = "auto-generated"
    # Quoted-printable keeps every body line short (a server refuses lines over 998) and
    # the HTML still readable in the raw message.
    message.set_content(rendered.text, subtype="plain", cte="quoted-printable")
    message.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
    # A boundary from the identity, not random: a retried send is the same bytes. "=_" never
    # occurs in quoted-printable text, so the boundary cannot collide with a body line.
    message.set_boundary("=_" + identity[1:].split("@", 1)[0])
    return message


def email_bytes(message: EmailMessage) -> bytes:
    """The message as SMTP wants it: CRLF line ends, no line over 998 characters (else a bug: raises)."""
    data = message.as_bytes(policy=POLICY)
    lines = data.split(b"\r\n")
    if any(b"\n" in line or b"\r" in line for line in lines):
        raise ValueError("a bare CR or LF in the message: every line must end in CRLF")
    longest = max(len(line) for line in lines)
    if longest > MAX_LINE:
        raise ValueError(f"a line of {longest} characters in the message: SMTP allows {MAX_LINE}")
    return data
