"""Webhooks: POST a digest's JSON (`bot.chat.webhook_payload`, "paperbot.matches.v1"),
signed the Standard Webhooks way (https://www.standardwebhooks.com/).

Headers on every POST:

- `webhook-id`: the delivery's message id, the same on every retry, so a receiver can drop
  a duplicate;
- `webhook-timestamp`: when this attempt was sent, in Unix seconds;
- `webhook-signature` (when the channel has a secret): `v1,` then the base64 HMAC-SHA256 of
  `{webhook-id}.{webhook-timestamp}.{body}`. The key is the base64 after `whsec_` in a
  secret like `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`; a secret without that prefix is used
  as its UTF-8 bytes.

One POST per `send`, no retry loop (the ledger retries on later runs): 2xx is taken; 408,
429, 5xx, a timeout or a lost connection are transient (429 and 503 with Retry-After);
410 means the endpoint is gone for good (ChannelGone: the channel is disabled); any other
4xx, or a redirect, is permanent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable

from bot.errors import ChannelGone, PermanentError, TransientError
from bot.store import Delivery
from bot.transport import Poster, Response, masked_url, parse_retry_after

__all__ = ["SECRET_PREFIX", "WebhookSender", "classify_webhook_reply", "sign", "signing_key", "webhook_id"]

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
TRANSIENT_STATUSES = frozenset({408, 429})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret: the base64 after "whsec_", else the secret's UTF-8 bytes."""
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode("utf-8")
    encoded = secret[len(SECRET_PREFIX) :].strip()
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        # The operator's setting, not the receiver: worth retrying once it is fixed.
        raise TransientError(
            "the webhook secret starts with whsec_ but what follows is not base64: "
            "copy the secret again from the receiver"
        ) from None


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature: "v1," + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def webhook_id(delivery: Delivery) -> str:
    """The delivery's `webhook-id`: its message id, else one made of its identity (as stable)."""
    if delivery.message_id:
        return delivery.message_id
    identity = "_".join(
        _UNSAFE.sub("-", part) for part in (delivery.subscriber_id, delivery.channel, delivery.period)
    )
    return f"msg_{identity}"


def classify_webhook_reply(reply: Response) -> None:
    """Return if the receiver took the POST; else raise the error the ledger should act on."""
    status = reply.status
    if 200 <= status < 300:
        return
    text = reply.body[:200].decode("utf-8", "replace").strip()
    reason = f"{status} {text}".strip()
    if status in TRANSIENT_STATUSES or status >= 500:
        raise TransientError(
            f"the webhook {reply.url} answered {reason}",
            retry_after=parse_retry_after(reply.headers.get("retry-after")),
        )
    if status == 410:
        raise ChannelGone(f"the webhook {reply.url} is gone ({reason})")
    if 300 <= status < 400:
        raise PermanentError(
            f"the webhook {reply.url} redirects ({status}); paperbot does not follow redirects: "
            "use the final URL"
        )
    raise PermanentError(f"the webhook {reply.url} refused the message: {reason}")


class WebhookSender:
    """POSTs each delivery's stored JSON to the subscriber's webhook, signed when it has a secret.

    `target_for` gives a delivery's URL and signing secret (or None), already expanded from
    the environment; `clock` gives Unix seconds, for `webhook-timestamp`.
    """

    def __init__(
        self,
        target_for: Callable[[Delivery], tuple[str, str | None]],
        allow_private: bool = False,
        timeout: float = 10.0,
        client: Poster | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.target_for = target_for
        self.clock = clock
        self._client = client or Poster(timeout=timeout, allow_private=allow_private)

    def headers_for(self, delivery: Delivery, secret: str | None) -> dict[str, str]:
        """The headers of one attempt: content type, id, timestamp, and the signature with a secret."""
        body = delivery.message or b""
        identity = webhook_id(delivery)
        timestamp = int(self.clock())
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "webhook-id": identity,
            "webhook-timestamp": str(timestamp),
        }
        if secret:
            headers["webhook-signature"] = sign(signing_key(secret), identity, timestamp, body)
        return headers

    def send(self, delivery: Delivery) -> None:
        """POST the delivery's message once; raise TransientError, ChannelGone or PermanentError."""
        if not delivery.message:
            raise PermanentError(f"delivery {delivery.id} has no rendered message")
        url, secret = self.target_for(delivery)
        reply = self._client.post(url, delivery.message, self.headers_for(delivery, secret))
        classify_webhook_reply(reply)
        log.debug("posted delivery %s to %s", delivery.id, masked_url(url))

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()
