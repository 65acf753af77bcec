"""Apprise: a digest as plain text to any of the services Apprise reaches (Discord, Telegram,
Matrix, ntfy, Teams...), addressed by an Apprise URL such as "tgram://bot-token/chat-id".

Needs the optional `apprise` package (`pip install 'paperbot[apprise]'`). The stored message
is the digest's plain text, the delivery's subject its title. Each service has its own size
limits; Apprise splits a longer text into several messages that fit them (overflow "split"),
so nothing is cut. Apprise answers only "sent" or "not sent", so a failure is transient and
retried by the ledger; a URL Apprise cannot read is permanent. Apprise makes its own HTTP
requests: the private-address guard of Slack and webhooks does not apply, so Apprise URLs
should come from the operator, not from strangers. A retry of a text that was split resends
every part, also those that went out before the failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bot.errors import PermanentError, SettingsError, TransientError
from bot.store import Delivery

try:
    import apprise
except ImportError:  # an optional extra
    apprise = None

__all__ = ["AppriseSender"]

log = logging.getLogger(__name__)


class AppriseSender:
    """Sends each delivery's stored text through Apprise to the URL `url_for` gives (expanded
    from the environment), split to fit the service's limits."""

    def __init__(self, url_for: Callable[[Delivery], str]):
        if apprise is None:
            raise SettingsError(
                "an apprise channel needs the apprise package: pip install 'paperbot[apprise]'"
            )
        self.url_for = url_for

    def send(self, delivery: Delivery) -> None:
        """Notify once; raise TransientError when Apprise did not deliver, PermanentError for a bad URL."""
        if not delivery.message:
            raise PermanentError(f"delivery {delivery.id} has no rendered message")
        notifier = apprise.Apprise()
        if not notifier.add(self.url_for(delivery)):
            raise PermanentError(
                f"Apprise cannot read the URL of {delivery.subscriber_id}'s {delivery.channel} channel: "
                "check it against Apprise's list of services"
            )
        services = list(notifier)
        shown = ", ".join(service.url(privacy=True) for service in services)
        for service in services:
            service.overflow_mode = apprise.OverflowMode.SPLIT
        sent = notifier.notify(
            body=delivery.message.decode("utf-8"),
            title=delivery.subject or "",
            body_format=apprise.NotifyFormat.TEXT,
        )
        if not sent:
            raise TransientError(f"Apprise could not deliver to {shown} (its log says why)")
        log.debug("sent delivery %s through Apprise to %s", delivery.id, shown)

    def close(self) -> None:
        """Nothing to close: Apprise opens a connection per notification."""
