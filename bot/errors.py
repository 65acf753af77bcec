"""The errors paperbot reports to its user.

Every error a user can cause or fix derives from ``BotError``; the CLI turns each
into one clear line and an exit code. Any other exception is a bug and shows its
traceback.

    BotError
    ├── SettingsError        a setting in paperbot.toml or the environment is wrong
    ├── SourceError          Hugging Face answered something paperbot cannot read
    │   └── FetchError       the request itself failed (network, timeout, HTTP status)
    ├── StoreError           the database cannot be used as it is
    ├── QueryError           a watch query is malformed (shows a caret under the problem)
    ├── SubscriptionError    a subscription file is wrong (names the file, key and fix)
    └── DeliveryError        a channel did not take a message
        ├── TransientError   try again later (4xx, connection lost, timeout, 429)
        └── PermanentError   do not retry this message (5xx from SMTP, 4xx from a webhook)
            └── ChannelGone  the channel itself is gone (Slack 404/410): disable it
"""

from __future__ import annotations

__all__ = [
    "BotError",
    "ChannelGone",
    "DeliveryError",
    "PermanentError",
    "TransientError",
    "FetchError",
    "QueryError",
    "SettingsError",
    "SourceError",
    "StoreError",
    "SubscriptionError",
]


class BotError(Exception):
    """Base of every error that paperbot explains to its user."""

    exit_code = 1


class SettingsError(BotError):
    """A setting is missing or wrong; the message names the key and the fix."""

    exit_code = 2


class SourceError(BotError):
    """An upstream response could not be read as papers (changed layout, cut-off body...)."""

    exit_code = 3

    def __init__(self, message: str, url: str | None = None):
        self.url = url
        super().__init__(f"{message} ({url})" if url else message)


class FetchError(SourceError):
    """The request failed: connection, timeout, or an HTTP error status after retries."""


class StoreError(BotError):
    """The SQLite database cannot be opened or migrated."""

    exit_code = 4


class QueryError(BotError):
    """A watch query is malformed; ``position`` is the 0-based offset of the problem."""

    exit_code = 2

    def __init__(self, message: str, query: str, position: int):
        self.reason = message
        self.query = query
        self.position = position
        caret = " " * position + "^"
        super().__init__(f"{message}\n  {query}\n  {caret}")


class SubscriptionError(BotError):
    """A subscription file is wrong; the message names the file, the key and the fix."""

    exit_code = 2

    def __init__(self, path: str, key: str | None, message: str, line: int | None = None):
        self.path = path
        self.key = key
        self.line = line
        where = path + (f":{line}" if line else "")
        what = f" key '{key}':" if key else ""
        super().__init__(f"{where}:{what} {message}")


class DeliveryError(BotError):
    """A channel did not take a message. ``retry_after`` is the seconds the receiver asked
    to wait (Retry-After), when it said."""

    exit_code = 5

    def __init__(self, message: str, retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(message)


class TransientError(DeliveryError):
    """Worth trying again later: a 4xx SMTP reply, a dropped connection, a timeout, a 429."""


class TransportDown(TransientError):
    """Nothing of this kind can be sent now, whoever it is for: the mail server cannot be
    reached, refuses paperbot's login or its sender address, the outbox cannot be written.
    The operator's to fix and never the recipient's fault: the attempt does not count against
    the digest, and the operator is alerted.

    `per_message`: for a server's reply that reads so ("Relay access denied") but may concern
    this message alone, what it is if it does (bot.deliver decides, by whether others go)."""

    def __init__(self, message: str, per_message: DeliveryError | None = None):
        super().__init__(message)
        self.per_message = per_message


class PermanentError(DeliveryError):
    """Trying again will not help: a 5xx SMTP reply, a webhook's 4xx, a channel gone."""


class ChannelGone(PermanentError):
    """The channel no longer exists (a Slack webhook answering 404/410, `no_service`): paperbot
    disables it for that subscriber at once, with this reason, for the operator to see."""
