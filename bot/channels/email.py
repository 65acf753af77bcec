"""Email senders: SMTP (one connection reused for a batch, rate-limited) and a local outbox.

The only module that imports smtplib. SMTP replies are sorted the way RFC 5321 means them:
4xx is "try again later" (TransientError), 5xx is "do not" (PermanentError); a connection
lost or timed out mid-message is transient, since the server did not say 250. A server that
cannot be reached, refuses the login or the sender is TransportDown: nobody's mail can go.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import smtplib
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from bot.errors import DeliveryError, PermanentError, SettingsError, TransientError, TransportDown
from bot.store import Delivery

__all__ = ["OutboxSender", "SmtpSender"]

log = logging.getLogger(__name__)

SECURITY = ("starttls", "tls", "none")
_LEADING_DOT = re.compile(rb"^\.", re.M)
# A line but the first starting with ".", found in half the time of `b"\n." in data` (Python's
# search for a short string of bytes goes byte by byte): some 20 µs less a message.
_DOT_LINE = re.compile(rb"\n\.")
# An address of plain dot-atoms (RFC 5322 3.2.3), as nearly all are: smtplib.quoteaddr puts
# it in angle brackets as it is, after a parse that took 7 µs (twice a message).
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)


# Replies that refuse paperbot itself, whoever the message is for: its login or its sender
# address, or relaying through this server at all. Servers say so at MAIL FROM, or (Postfix,
# by default) only at RCPT TO, in words like these: "530 5.7.0 Authentication required",
# "554 5.7.1 <x>: Relay access denied", "550 5.7.54 Unable to relay recipient", "553 5.7.1
# <p@x>: Sender address rejected: not owned by user", "550 5.7.57 Client not authenticated".
_REFUSES_PAPERBOT = re.compile(
    r"relay(?:ing)? (?:access )?(?:denied|not permitted|not allowed|prohibited)|unable to relay"
    r"|authentication required|not authenticated|must authenticate|authenticate first"
    r"|sender address rejected|client host rejected|not owned by user",
    re.I,
)
_CHECK_SETUP = "check mail.from and the SMTP login (PAPERBOT_SMTP_USERNAME, PAPERBOT_SMTP_PASSWORD)"


def _reply_error(code: int, text: bytes | str, what: str) -> DeliveryError:
    """The error of an SMTP reply: transient (4xx) or permanent (5xx) for this message, or
    TransportDown when it refuses paperbot itself (its login, its sender, relaying), which no
    other message would get past either."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    message = f"{what}: {code} {text}".strip()
    plain = TransientError(message) if 400 <= code < 500 else PermanentError(message)
    if code == 530 or _REFUSES_PAPERBOT.search(text):
        return TransportDown(f"{message}; {_CHECK_SETUP}", per_message=plain)
    return plain


class SmtpSender:
    """Sends over SMTP: STARTTLS, implicit TLS or plain; login when a user is set."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        security: str = "starttls",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        rate: float = 0.0,
        tls_context: ssl.SSLContext | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        if security not in SECURITY:
            raise SettingsError(f"smtp.security = {security!r}: write one of {', '.join(SECURITY)}")
        self.host, self.port, self.sender = host, port, sender
        self.security, self.username, self.password = security, username, password
        self.timeout = timeout
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.tls_context = tls_context or ssl.create_default_context()
        self._sleep, self._clock = sleep, clock
        self._smtp: smtplib.SMTP | None = None
        self._last_send: float | None = None
        self._following: Delivery | None = None  # see expect
        # (delivery id, recipient) of the envelope sent after the last message, its replies unread
        self._ahead: tuple[int, str] | None = None

    def _connect(self) -> smtplib.SMTP:
        try:
            if self.security == "tls":
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self.tls_context)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
                if self.security == "starttls":
                    smtp.starttls(context=self.tls_context)
            if self.username:
                smtp.login(self.username, self.password or "")
        except smtplib.SMTPAuthenticationError as error:
            # The operator's settings, not the subscriber: retry once they are fixed.
            raise TransportDown(
                f"SMTP login to {self.host} failed ({error.smtp_code}): check PAPERBOT_SMTP_USERNAME "
                "and PAPERBOT_SMTP_PASSWORD"
            ) from None
        except smtplib.SMTPNotSupportedError:
            raise TransportDown(
                f'{self.host}:{self.port} does not offer STARTTLS: set smtp.security to "tls" or "none"'
            ) from None
        except (OSError, smtplib.SMTPException) as error:
            raise TransportDown(f"cannot reach the SMTP server {self.host}:{self.port}: {error}") from None
        log.debug("connected to %s:%d (%s)", self.host, self.port, self.security)
        return smtp

    def _wait_for_rate(self) -> None:
        if self.interval and self._last_send is not None:
            wait = self._last_send + self.interval - self._clock()
            if wait > 0:
                self._sleep(wait)
        self._last_send = self._clock()

    def expect(self, delivery: Delivery) -> None:
        """Say which delivery the next `send` will most likely be: its envelope (MAIL FROM, RCPT
        TO, DATA) goes out with the end of the message sent now, and the server's replies to it
        come with its reply to that message (RFC 2920 lets a group of commands begin with the
        end of a message): one wait for the server a message, not two. Its content goes only
        once it is sent, after the ledger has claimed it; should another delivery come next
        instead, the connection is closed, which ends the envelope with nothing delivered.
        Only for a plain address and a message at hand, and not under a rate limit."""
        plain = _PLAIN_ADDRESS.fullmatch(delivery.recipient)
        self._following = delivery if plain and delivery.message and not self.interval else None

    def send(self, delivery: Delivery) -> None:
        """Send the delivery's stored bytes to its recipient, reusing the open connection."""
        following, self._following = self._following, None
        if not delivery.message:
            raise PermanentError(f"delivery {delivery.id} has no rendered message")
        self._wait_for_rate()
        opened = self._ahead is not None and self._ahead == (delivery.id, delivery.recipient)
        if self._ahead is not None and not opened:
            # The server may be waiting for that message's content: only the connection's end
            # closes that envelope without delivering anything.
            self._drop()
        self._ahead = None
        if self._smtp is None:
            self._smtp = self._connect()
        try:
            refused = self._transact(self._smtp, delivery.recipient, delivery.message, opened, following)
        except smtplib.SMTPRecipientsRefused as error:
            self._reset()
            code, text = next(iter(error.recipients.values()))
            raise _reply_error(code, text, f"the server refused {delivery.recipient}") from None
        except smtplib.SMTPHeloError as error:  # paperbot itself refused, before any message
            self._drop()
            found = _reply_error(error.smtp_code, error.smtp_error, "the server refused paperbot's greeting")
            raise TransportDown(str(found)) from None
        except smtplib.SMTPSenderRefused as error:
            # At MAIL FROM, before any recipient: a refusal of paperbot is one of everybody's
            # mail (down at once), else this message's (552: too big for it).
            self._reset()
            found = _reply_error(
                error.smtp_code, error.smtp_error, f"the server refused the sender {self.sender}"
            )
            raise (TransportDown(str(found)) if isinstance(found, TransportDown) else found) from None
        except smtplib.SMTPDataError as error:
            self._reset()
            raise _reply_error(error.smtp_code, error.smtp_error, "the server refused the message") from None
        except (smtplib.SMTPServerDisconnected, OSError) as error:
            # Lost before the final 250: the server has not taken it. Retry on a new connection.
            self._drop()
            raise TransientError(
                f"the connection to {self.host} was lost: {error or 'disconnected'}"
            ) from None
        except smtplib.SMTPResponseException as error:
            self._reset()
            raise _reply_error(error.smtp_code, error.smtp_error, "the server answered") from None
        if refused:  # only some recipients refused; we send to one, so this is that one
            code, text = next(iter(refused.values()))
            raise _reply_error(code, text, f"the server refused {delivery.recipient}")

    def _transact(
        self,
        smtp: smtplib.SMTP,
        recipient: str,
        data: bytes,
        opened: bool = False,
        following: Delivery | None = None,
    ) -> dict:
        """One message: MAIL, RCPT, DATA. When the server offers PIPELINING (RFC 2920; Postfix,
        Exim and the big providers do), the three commands go out in one write and their replies
        are read together: two round trips a message instead of smtplib's four, and none of its
        per-line rewriting of bytes that are already CRLF; one, when they went out `opened`
        with the previous message's end, and those of `following` go with this one's (expect).
        Replies raise what smtplib.sendmail raises, so both paths end the same way."""
        if "\r" in recipient or "\n" in recipient:  # smtplib refuses these too; here before any write
            raise PermanentError(f"{recipient!r} is not one address: it holds a line break")
        smtp.ehlo_or_helo_if_needed()
        if not smtp.has_extn("pipelining"):
            return smtp.sendmail(self.sender, [recipient], data)
        if not opened:
            smtp.send(self._envelope(smtp, recipient, data))
        mail, rcpt, go = smtp.getreply(), smtp.getreply(), smtp.getreply()
        if go[0] == 354 and (mail[0] != 250 or rcpt[0] not in (250, 251)):
            # A server that says 354 without a recipient gets an empty message. What it does
            # then (even closing the connection) changes nothing: the refusal below decides.
            try:
                smtp.send(b".\r\n")
                smtp.getreply()
            except (smtplib.SMTPServerDisconnected, OSError):
                smtp.close()
        if mail[0] != 250:
            raise smtplib.SMTPSenderRefused(mail[0], mail[1], self.sender)
        if rcpt[0] not in (250, 251):
            raise smtplib.SMTPRecipientsRefused({recipient: rcpt})
        if go[0] != 354:
            raise smtplib.SMTPDataError(*go)
        if data.startswith(b".") or _DOT_LINE.search(data):
            data = _LEADING_DOT.sub(b"..", data)  # dot-stuffing (RFC 5321 4.5.2)
        end = b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"
        if following is not None and following.message:
            end += self._envelope(smtp, following.recipient, following.message)
            self._ahead = (following.id, following.recipient)
        smtp.send(data + end)
        code, text = smtp.getreply()
        if code != 250:
            raise smtplib.SMTPDataError(code, text)
        return {}

    def _envelope(self, smtp: smtplib.SMTP, recipient: str, data: bytes) -> bytes:
        """MAIL FROM, RCPT TO and DATA for one message, to go out in one write."""
        size = f" SIZE={len(data)}" if smtp.has_extn("size") else ""
        sender, to = _bracketed(self.sender), _bracketed(recipient)
        return f"MAIL FROM:{sender}{size}\r\nRCPT TO:{to}\r\nDATA\r\n".encode("ascii")

    def _reset(self) -> None:
        if self._ahead is not None:  # the server may be waiting for the next message's content
            self._drop()
            return
        try:
            if self._smtp is not None:
                self._smtp.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()

    def _drop(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.close()
            except OSError:
                pass
        self._smtp, self._ahead = None, None

    def close(self) -> None:
        """Say QUIT and close the connection, if one is open (only close it while an envelope
        sent ahead waits: a QUIT would be taken for that message's content)."""
        if self._smtp is not None and self._ahead is None:
            try:
                self._smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass
        self._drop()


def _bracketed(address: str) -> str:
    """The address as MAIL FROM and RCPT TO take it: smtplib.quoteaddr's, quicker for a plain one."""
    return f"<{address}>" if _PLAIN_ADDRESS.fullmatch(address) else smtplib.quoteaddr(address)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_LONGEST_NAME = 200  # characters of an outbox file's name, before .eml (and .part)


class OutboxSender:
    """Writes each message as an .eml file into a folder: the default, needing no mail server.

    The file is named by the digest's identity, written to a temporary name and renamed, so a
    retry rewrites the same file and a crash never leaves half a message.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path_for(self, delivery: Delivery) -> Path:
        """Where this delivery's message is written."""
        name = "-".join(
            _UNSAFE.sub("_", part) for part in (delivery.period, delivery.subscriber_id, delivery.channel)
        )
        if len(name) > _LONGEST_NAME:  # file systems take 255 bytes: keep it unique, and short
            name = f"{name[: _LONGEST_NAME - 17]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
        return self.folder / f"{name}.eml"

    def send(self, delivery: Delivery) -> None:
        """Write the message file (atomically)."""
        if not delivery.message:
            raise PermanentError(f"delivery {delivery.id} has no rendered message")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            final = self.path_for(delivery)
            partial = final.with_suffix(".eml.part")
            partial.write_bytes(delivery.message)
            os.replace(partial, final)
        except OSError as error:
            raise TransportDown(f"cannot write to the outbox {self.folder}: {error.strerror}") from None

    def close(self) -> None:
        """Nothing to close."""
