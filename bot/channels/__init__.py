"""Where messages go: one module per kind of channel, each behind the small `Sender` protocol.

A sender takes one ledger row (`bot.store.Delivery`: the rendered message, the recipient)
and either returns (the receiver took it) or raises `TransientError` (try again later) or
`PermanentError` (do not). The ledger, not the sender, decides what happens next.
"""

from __future__ import annotations

from typing import Protocol

from bot.store import Delivery

__all__ = ["Sender"]


class Sender(Protocol):
    """Sends rendered deliveries of one kind (email, slack, webhook). A sender may also have
    `expect(delivery)`, told the delivery likely to be sent next (bot.channels.email's SMTP
    sends its envelope ahead); bot.deliver calls it where it exists."""

    def send(self, delivery: Delivery) -> None:
        """Hand over one message; raise TransientError or PermanentError when it is not taken."""

    def close(self) -> None:
        """Let go of connections."""
