"""Slack: posts a rendered message (Block Kit JSON, made by `bot.chat.slack_messages`) to an
incoming webhook.

One POST per `send`, no retry loop: the ledger retries on later runs. Slack's answers are
sorted so the ledger does the right thing:

- 2xx: taken.
- 429 (rate limited): TransientError, with the Retry-After seconds.
- 5xx, a timeout, a connection refused or lost: TransientError.
- 404 or 410, or an error naming a channel or webhook that no longer exists (`no_service`,
  `channel_not_found`, `channel_is_archived`...): ChannelGone, and the channel is disabled.
- any other 4xx (`invalid_payload`, `action_prohibited`...), or a redirect: PermanentError.

A webhook URL is a secret (its path is the token): errors and logs show only its host.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bot.errors import ChannelGone, PermanentError, TransientError
from bot.store import Delivery
from bot.transport import Poster, Response, masked_url, parse_retry_after

__all__ = ["GONE_ERRORS", "SlackSender", "classify_slack_reply"]

log = logging.getLogger(__name__)

# Slack's incoming-webhook errors that mean the webhook or its channel is gone for good.
GONE_ERRORS = frozenset(
    {"no_service", "no_team", "team_disabled", "invalid_token", "channel_not_found", "channel_is_archived"}
)


def _reason(reply: Response) -> str:
    text = reply.body[:200].decode("utf-8", "replace").strip()
    return f"{reply.status} {text}".strip()


def classify_slack_reply(reply: Response) -> None:
    """Return if Slack took the message; else raise the error the ledger should act on."""
    status = reply.status
    if 200 <= status < 300:
        return
    where = reply.url
    error = reply.body[:200].decode("utf-8", "replace").strip()
    if status == 429:
        raise TransientError(
            f"Slack is rate-limiting {where}: {_reason(reply)}",
            retry_after=parse_retry_after(reply.headers.get("retry-after")),
        )
    if status >= 500:
        raise TransientError(f"Slack answered {_reason(reply)} ({where})")
    if status in (404, 410) or error in GONE_ERRORS:
        raise ChannelGone(
            f"the Slack webhook {where} is gone ({_reason(reply)}): make a new incoming webhook "
            "and update the subscription"
        )
    if 300 <= status < 400:
        raise PermanentError(
            f"the Slack webhook {where} redirects ({status}); paperbot does not follow redirects: "
            "use the final URL"
        )
    raise PermanentError(f"Slack refused the message: {_reason(reply)} ({where})")


class SlackSender:
    """Posts each delivery's stored Block Kit JSON to the subscriber's Slack incoming webhook.

    `url_for` gives a delivery's webhook URL, already expanded from the environment.
    """

    def __init__(
        self,
        url_for: Callable[[Delivery], str],
        timeout: float = 10.0,
        client: Poster | None = None,
        *,
        allow_private: bool = False,
    ):
        self.url_for = url_for
        self._client = client or Poster(timeout=timeout, allow_private=allow_private)

    def send(self, delivery: Delivery) -> None:
        """POST the delivery's message once; raise TransientError, ChannelGone or PermanentError."""
        if not delivery.message:
            raise PermanentError(f"delivery {delivery.id} has no rendered message")
        url = self.url_for(delivery)
        reply = self._client.post(url, delivery.message, {"Content-Type": "application/json; charset=utf-8"})
        classify_slack_reply(reply)
        log.debug("posted delivery %s to %s", delivery.id, masked_url(url))

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()
