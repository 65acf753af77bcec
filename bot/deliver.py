"""Delivery: decide which digests are due, reserve their papers in the ledger, send them.

The ledger (bot.store) is what makes it safe. A digest is one row per (subscriber, channel,
period), created together with the reservation of its papers in one transaction, so a paper
is never put in two digests of the same subscriber and channel. Its rendered bytes are
stored before the first attempt, so a retry sends the same message with the same
Message-ID. Sending claims the row (a lease, so two processes never send it at once), hands
the bytes to the channel, and records "sent" right after the server's 250: that gap is the
only place a duplicate can come from (see the README).

    plan_digests ──> reserve_digests ──> send_due
     (read-only)     (ledger rows, bytes)  (claim, send, record)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from time import monotonic
from zoneinfo import ZoneInfo

from bot.channels import Sender
from bot.errors import (
    BotError,
    ChannelGone,
    DeliveryError,
    PermanentError,
    SettingsError,
    StoreError,
    TransientError,
    TransportDown,
)
from bot.match import Match, WatchIndex, match_papers
from bot.models import Channel, Subscriber
from bot.schedule import Period, due_period, forget_schedules
from bot.store import Delivery, PackedMessage, Store
from bot.subscriptions import ENV_REF, mail_address
from bot.words import forget_folds

__all__ = [
    "DigestPlan",
    "Outcome",
    "RetryPolicy",
    "Sending",
    "Skip",
    "email_recipient",
    "expand_target",
    "forget_planning",
    "plan_digests",
    "rank_matches",
    "reserve_digest",
    "release",
    "send_due",
    "settle",
]

log = logging.getLogger(__name__)

SYNC_EVERY = 0.1  # seconds of sending between two waits for the disk (see send_due)


@dataclass(frozen=True, slots=True)
class DigestPlan:
    """A digest that is due: for whom, where, which period, which window, which matches."""

    subscriber: Subscriber
    channel: Channel
    period: Period
    window_start: datetime
    window_end: datetime
    matches: tuple[Match, ...]  # ranked, papers already delivered left out, not yet cut
    papers_in_window: int


@dataclass(frozen=True, slots=True)
class Skip:
    """A subscriber's channel with nothing to send this run, and why (for the log).

    With `closes`, the period came and had nothing to send: the run records it as skipped,
    so it is not sent later, at some odd hour, when papers arrive (they wait for the next)."""

    subscriber_id: str
    channel: str
    reason: str
    closes: DigestPlan | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one delivery in this run."""

    delivery: Delivery
    status: str  # sent, retry, failed, suppressed, busy (another process has it), down (the transport)
    detail: str = ""
    error: DeliveryError | None = None  # what failed, if anything


class Sending:
    """What one run's sending did so far: the deliveries it tried (each is tried once a run),
    the kinds whose transport is down (kind: why), which it sends no more of, and the
    refusals it has yet to judge; `owner`, its claims' name in the ledger; `ahead`, the digest
    claimed with the last "sent" (Store.mark_sent), to go next: its id, when, and the ledger's
    version then (Store.version).

    A server's refusal of paperbot itself at RCPT or DATA ("Relay access denied",
    "Authentication required") may concern one recipient alone. Such a refusal is judged by
    what follows: a message of that kind that goes after it makes it that message's own
    failure, recorded as any is; refusals that nothing follows until the sending ends
    (`settle`) mean the transport is down. Until judged, the digest stays claimed."""

    def __init__(self) -> None:
        self.owner = _owner()
        self.tried: set[int] = set()
        self.down: dict[str, str] = {}
        self.refused: dict[str, list[tuple[Delivery, TransportDown, int]]] = {}
        # Digests this run stored in the ledger (and committed) moments before sending them, as
        # written, messages and all: sent from here rather than read back. Each is taken once,
        # and all are let go when a send_due call ends: memory holds a batch at most.
        self.stored: dict[int, Delivery] = {}
        self.synced = monotonic()  # when the records of its sends last waited for the disk
        self.unsynced = False  # whether some were made since
        self.syncing = False  # whether the store may still be at that last time's
        self.ahead: tuple[int, datetime, int] | None = None  # claimed with the last "sent"

    def sync(self, store: Store, every: float | None = None) -> None:
        """Have the records of the sends so far reach the disk: at once, and wait for it; or,
        `every` seconds after the last time, by a thread of the store's while sending goes on
        (see send_due)."""
        if every is None and (self.unsynced or self.syncing):
            store.sync()  # and one started before is done too
            self.synced, self.unsynced, self.syncing = monotonic(), False, False
        elif self.unsynced and every is not None and monotonic() - self.synced >= every:
            store.sync(wait=False)
            self.synced, self.unsynced, self.syncing = monotonic(), False, True

    def transport_problems(
        self, kinds: Iterable[str], outcomes: Iterable[Outcome]
    ) -> tuple[dict[str, str], set[str]]:
        """The operator's alerts about transports, by key: those down in this run, and those
        it cannot tell about (a kind is up again only once something of it went)."""
        down = {f"transport {kind}": f"paperbot cannot send {kind}: {why}" for kind, why in self.down.items()}
        sent = {o.delivery.kind for o in outcomes if o.status == "sent"}
        unknown = {f"transport {kind}" for kind in kinds if kind not in self.down and kind not in sent}
        return down, unknown


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try a failed send again, and when to give up on an address."""

    max_attempts: int = 8
    first_wait: timedelta = timedelta(minutes=5)  # doubles after each attempt
    suppress_after: int = 3  # permanent failures in a row
    lease: timedelta = timedelta(minutes=5)  # how long a claim holds before a crash frees it

    def next_attempt(self, attempts: int, now: datetime, retry_after: float | None) -> datetime:
        wait = self.first_wait * (2 ** max(attempts - 1, 0))
        if retry_after:
            wait = max(wait, timedelta(seconds=retry_after))
        return now + wait


def rank_matches(matches: Iterable[Match]) -> list[Match]:
    """Best first: score, then upvotes, then id (stable, so a re-run ranks the same)."""
    return sorted(matches, key=lambda m: (-m.score, -(m.paper.upvotes or 0), m.paper.id))


def _routed(
    matches: list[Match], subscriber: Subscriber, channel: Channel, instant: bool = False
) -> list[Match]:
    """The matches as this channel's digest (or instant alert) sees them: only the watches routed
    to it, and only the matches left with one."""
    mode = "instant" if instant else "digest"
    routed = {
        watch.name
        for watch in subscriber.watches
        if watch.delivery == mode and (not watch.channels or channel.name in watch.channels)
    }
    if len(routed) == len(subscriber.watches):  # every watch (their names differ): as they are
        return matches
    kept = []
    for match in matches:
        names = tuple(name for name in match.watches if name in routed)
        if names == match.watches:
            kept.append(match)
        elif names:
            kept.append(dataclasses.replace(match, watches=names))
    return kept


def plan_digests(
    store: Store,
    subscribers: Iterable[Subscriber],
    now: datetime,
    *,
    kinds: Iterable[str] = ("email",),
    backfill_days: int = 1,
    preview: bool = False,
    since: datetime | None = None,
    instant: bool = False,
    grace: timedelta | None = None,
) -> tuple[list[DigestPlan], list[Skip]]:
    """The digests due at `now`, read from the store; nothing is written.

    A digest covers the papers first seen since the previous digest of that subscriber and
    channel. The first one covers only the latest stored day (`backfill_days` for more), so
    a new subscriber or a freshly imported history is not a flood. With `preview`, a digest
    is planned even when this period's is already made or the schedule sends none; `since`
    overrides where the window starts. With `instant`, the alerts of the `instant` watches
    are planned instead: due at every run, covering what came since the last alert. With
    `grace`, a period that fired longer ago than that is left out (paperbot was down); its
    papers go in the next digest, so nothing is lost.
    """
    kinds = set(kinds)
    latest = store.latest_day()
    due: list[tuple[Subscriber, Channel, Period, datetime]] = []
    skips: list[Skip] = []
    for subscriber in subscribers:
        if subscriber.paused:
            skips.append(Skip(subscriber.id, "*", "paused"))
            continue
        period = due_period(subscriber.schedule, subscriber.timezone, now)
        if instant:
            if not any(w.delivery == "instant" for w in subscriber.watches):
                continue
            local = now.astimezone(ZoneInfo(subscriber.timezone))
            period = Period(
                f"instant {now:%Y-%m-%dT%H:%M:%SZ}", f"{local:%a} {local.day} {local:%b %Y %H:%M}", local
            )
        if preview:
            local = now.astimezone(ZoneInfo(subscriber.timezone))
            period = Period("preview", f"{local:%a} {local.day} {local:%b %Y}", local)
        for channel in subscriber.channels:
            if channel.kind not in kinds:
                continue
            unset = [
                name
                for name in ENV_REF.findall(f"{channel.target} {channel.secret or ''}")
                if not os.environ.get(name)
            ]
            if unset:  # not set up on this machine (e.g. the example's Slack): say so, send the rest
                skips.append(
                    Skip(
                        subscriber.id,
                        channel.name,
                        f"{', '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set in the environment",
                    )
                )
                continue
            marks = store.digest_marks(
                subscriber.id, channel.name, None if preview or period is None else period.key, instant
            )
            if marks.suppressed:
                skips.append(Skip(subscriber.id, channel.name, f"suppressed: {marks.suppressed}"))
                continue
            if period is None:
                skips.append(Skip(subscriber.id, channel.name, "no digest schedule"))
                continue
            if grace is not None and not instant and not preview and now - period.fired_at > grace:
                late = f"{(now - period.fired_at).total_seconds() / 3600:.0f} h"
                skips.append(
                    Skip(
                        subscriber.id,
                        channel.name,
                        f"the {period.key} digest is {late} late, past the grace window",
                    )
                )
                continue
            if marks.state is not None:  # send_due takes care of it if it is not sent yet
                skips.append(
                    Skip(subscriber.id, channel.name, f"the {period.key} digest is {marks.state} already")
                )
                continue
            start = since or marks.last_window_end
            if start is None:
                if latest is None:
                    skips.append(Skip(subscriber.id, channel.name, "no papers stored yet"))
                    continue
                start = datetime.combine(latest, time(0), tzinfo=UTC) - timedelta(days=backfill_days - 1)
            due.append((subscriber, channel, period, start))

    plans: list[DigestPlan] = []
    by_start: dict[datetime, list[tuple[Subscriber, Channel, Period]]] = {}
    for subscriber, channel, period, start in due:
        by_start.setdefault(start, []).append((subscriber, channel, period))
    # Subscribers whose last digest ended at the same time share one window and one index.
    for start, group in by_start.items():
        window = store.window(start, now)
        people = list({s.id: s for s, _, _ in group}.values())
        found: dict[str, list[Match]] = {}
        for match in match_papers(window.papers, WatchIndex(people), window.upvotes_before, window.risers):
            found.setdefault(match.subscriber_id, []).append(match)
        for subscriber, channel, period in group:
            empty = DigestPlan(subscriber, channel, period, start, now, (), len(window.papers))
            closes = None if (instant or preview) else empty
            if not window.papers and not window.risers:
                quiet = f"no new papers upstream since {start:%Y-%m-%d %H:%M} UTC"
                skips.append(Skip(subscriber.id, channel.name, quiet, closes))
                continue
            routed = _routed(found.get(subscriber.id, []), subscriber, channel, instant)
            # A preview shows what the watches find, sent before or not.
            ids = [m.paper.id for m in routed]
            already = set() if preview else store.delivered_papers(subscriber.id, channel.name, ids)
            fresh = rank_matches(m for m in routed if m.paper.id not in already)
            if not fresh and (instant or not subscriber.send_empty):
                skips.append(Skip(subscriber.id, channel.name, "nothing new matched", closes))
                continue
            plans.append(
                DigestPlan(subscriber, channel, period, start, now, tuple(fresh), len(window.papers))
            )
    return plans, skips


def forget_planning() -> None:
    """Drop all that planning keeps (each schedule's trigger and due period, the words it
    folded), as in a fresh `paperbot run --once`: a benchmark of a cold start calls this (a test
    holds it to every cache planning fills)."""
    forget_schedules()
    forget_folds()


Compose = Callable[[DigestPlan, tuple[Match, ...], int], tuple[bytes, str, str]]
"""Renders a plan's shown matches (and the total before the cut) to (bytes, message id, subject)."""


def reserve_digest(
    store: Store,
    plan: DigestPlan,
    compose: Compose,
    now: datetime,
    rendered: tuple[bytes, str, str] | None = None,
    packed: PackedMessage | None = None,
) -> Delivery:
    """Put a planned digest in the ledger with its papers, then its rendered message.
    `rendered`: what `compose` gives for the papers the plan shows, made already (by a helper
    process): stored with the papers when the ledger reserves them all, and the delivery
    returned then holds those very bytes; else `compose` renders what the ledger reserved.
    `packed`: those bytes as the helper handed them over packed (see Store.reserve_delivery)."""
    shown = plan.matches[: plan.subscriber.max_papers]
    delivery = _reserve(store, plan, [m.paper.id for m in shown], now, rendered, packed)
    if delivery.state != "new":
        return delivery  # stored with `rendered`, or another process made it first
    # Render exactly the papers the ledger reserved (a racing digest may have taken some).
    reserved = set(delivery.paper_ids)
    shown = tuple(m for m in shown if m.paper.id in reserved)
    total = len(plan.matches) - (len(plan.matches[: plan.subscriber.max_papers]) - len(shown))
    alert = plan.period.key.startswith("instant ")
    if not shown and plan.matches and (alert or not plan.subscriber.send_empty):
        # Another process's digest took every paper it would show since it was planned: an
        # alert with no paper, or an empty digest nobody asked for, is not sent.
        reason = "its papers went out in another digest on this channel first"
        log.info("%s/%s: nothing to send: %s", plan.subscriber.id, plan.channel.name, reason)
        store.mark_skipped(delivery.id, reason)
        return dataclasses.replace(delivery, state="skipped", last_error=reason)
    try:
        message, message_id, subject = compose(plan, shown, total)
    except (BotError, ValueError) as error:  # the papers stay reserved: each run tries again
        store.note_render_error(delivery.id, f"cannot render it: {error}")
        raise
    if not store.attach_message(delivery.id, message=message, message_id=message_id, subject=subject):
        return store.get_delivery(delivery.id)  # another process attached its own first
    return dataclasses.replace(
        delivery, state="pending", message=message, message_id=message_id, subject=subject
    )


def expand_target(target: str, environ: Mapping[str, str] | None = None) -> str:
    """A channel's address or URL with its ${VARS} filled from the environment."""
    environ = os.environ if environ is None else environ

    def value(found: re.Match) -> str:
        name = found.group(1)
        if not environ.get(name):
            raise SettingsError(
                f"the environment variable {name} is not set: set it to the channel's address"
            )
        return environ[name]

    return ENV_REF.sub(value, target)


def email_recipient(target: str) -> str:
    """An email channel's address as mail servers take it: its ${VARS} filled from the
    environment, its domain in ASCII (see mail_address). Raises SettingsError saying what to fix.
    (An address written in a subscription file was made so as the file was read.)"""
    if "${" not in target:
        return target
    address = expand_target(target)
    try:
        return mail_address(address)
    except ValueError as error:
        raise SettingsError(f"{target} is {address!r}, not an address mail can go to: {error}") from None


def _expanded(recipient: str) -> str:
    try:
        return email_recipient(recipient)
    except SettingsError as error:  # the operator can fix it: keep the message, try later
        raise TransientError(str(error)) from None


def _reserve(
    store: Store,
    plan: DigestPlan,
    paper_ids: list[str],
    now: datetime,
    message: tuple[bytes, str, str] | None = None,
    packed: PackedMessage | None = None,
) -> Delivery:
    """The ledger row of a planned digest, with `paper_ids` reserved (or the row already there),
    and `message` (`packed` already, maybe) if it is for all of them (see Store.reserve_delivery).
    An email's recipient is kept as it is sent to (a webhook's URL stays a ${VAR}: a secret)."""
    email = plan.channel.kind == "email"
    return store.reserve_delivery(
        subscriber_id=plan.subscriber.id,
        channel=plan.channel.name,
        kind=plan.channel.kind,
        period=plan.period.key,
        recipient=email_recipient(plan.channel.target) if email else plan.channel.target,
        paper_ids=paper_ids,
        window_start=plan.window_start,
        window_end=plan.window_end,
        now=now,
        message=message,
        packed=packed,
    )


def close_period(store: Store, skip: Skip, now: datetime) -> None:
    """Record a period that had nothing to send as skipped (see `Skip`)."""
    plan = skip.closes
    delivery = _reserve(store, plan, [], now)
    store.mark_skipped(delivery.id, skip.reason)


def finish_interrupted(
    store: Store,
    subscribers: Iterable[Subscriber],
    compose: Compose,
    now: datetime,
    errors: list[str] | None = None,
) -> list[Delivery]:
    """Render the digests whose papers were reserved by a run that died before storing the
    message, or that could not be rendered then: the same papers, matched again for their
    watches and highlights. One that still cannot be rendered is added to `errors`."""
    people = {s.id: s for s in subscribers}
    finished = []
    for delivery in store.deliveries_to_render():
        subscriber = people.get(delivery.subscriber_id)
        channel = (
            next((c for c in subscriber.channels if c.name == delivery.channel), None) if subscriber else None
        )
        if channel is None:
            store.mark_failed(delivery.id, "the subscriber or channel no longer exists")
            continue
        papers = [p for p in (store.get_paper(pid) for pid in delivery.paper_ids) if p]
        matched = {m.paper.id: m for m in match_papers(papers, WatchIndex([subscriber]))}
        shown = tuple(matched.get(p.id) or Match(subscriber.id, p, (), 0.0, ()) for p in papers)
        plan = DigestPlan(
            subscriber,
            channel,
            Period(delivery.period, delivery.period, now),
            delivery.window_start or now,
            delivery.window_end or now,
            shown,
            len(papers),
        )
        try:
            message, message_id, subject = compose(plan, shown, len(shown))
        except (BotError, ValueError) as error:  # e.g. an address's ${VAR} unset: fixable, keep it
            log.error("cannot render the digest %s of %s yet: %s", delivery.period, subscriber.id, error)
            store.note_render_error(delivery.id, f"cannot render it: {error}")
            if errors is not None:
                errors.append(f"{subscriber.id}/{channel.name} {delivery.period}: cannot render it: {error}")
            continue
        store.attach_message(delivery.id, message=message, message_id=message_id, subject=subject)
        finished.append(store.get_delivery(delivery.id))
    return finished


MULTIPART = b"paperbot-parts\n"  # a stored message of several parts: this line, then a JSON list


def join_parts(parts: list[bytes]) -> bytes:
    """Store several messages (e.g. numbered Slack messages) as one ledger message."""
    if len(parts) == 1:
        return parts[0]
    return MULTIPART + json.dumps([part.decode("utf-8") for part in parts]).encode("utf-8")


def split_parts(message: bytes | None) -> list[bytes]:
    """The messages a stored ledger message holds (see join_parts), in order."""
    message = message or b""
    if message.startswith(MULTIPART):
        return [part.encode("utf-8") for part in json.loads(message[len(MULTIPART) :])]
    return [message]


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def send_due(
    store: Store,
    senders: Mapping[str, Sender],
    now: Callable[[], datetime],
    policy: RetryPolicy = RetryPolicy(),
    should_stop: Callable[[], bool] = lambda: False,
    sync_every: float = SYNC_EVERY,
    sending: Sending | None = None,
    on_outcome: Callable[[Outcome], None] = lambda outcome: None,
) -> list[Outcome]:
    """Send every delivery whose time has come. One failure never holds up the others, but a
    transport that is down (TransportDown) is not tried again for the others of its kind.
    `should_stop` is asked between messages (a SIGTERM finishes the one in flight).
    `sending`: what this run's earlier calls did (a run calls this once a batch), so that each
    delivery is tried once a run, its outcome told once, and a transport down stays down.
    `on_outcome` is called with each outcome as it is recorded.

    Each "sent" is committed right after the server's 250, so a crash of paperbot never sends
    a digest twice but in that instant; the records reach the disk (a power cut) together, not
    one fsync per message: between messages once `sync_every` seconds have passed (a thread
    of the store's waits for it while the next messages go), and at the end, waited for. With
    `sending`, a run's, the end of this call starts that wait, and the run's end finishes it
    (`sending.sync`)."""
    outcomes: list[Outcome] = []
    own = sending is None  # this call is the run's whole sending: it settles the refusals too
    sending = sending if sending is not None else Sending()
    try:
        due = store.deliveries_to_send(now(), sending.stored)
        for place, delivery in enumerate(due):
            if should_stop():
                break
            if sending.ahead is not None and sending.ahead[0] != delivery.id:  # a bug's guard
                _let_go_ahead(store, sending)
            sending.stored.pop(delivery.id, None)  # taken even when not sent: kept once
            if delivery.id in sending.tried or delivery.kind in sending.down:
                continue
            following = due[place + 1] if place + 1 < len(due) else None
            if following is not None and (following.kind != delivery.kind or following.id in sending.tried):
                following = None
            outcome = _send_one(store, senders, delivery, sending, now, policy, following)
            if outcome is None:
                continue
            sending.tried.add(delivery.id)
            if outcome.status == "refused":  # judged by what follows: told then (its row, no message)
                sending.refused.setdefault(delivery.kind, []).append(
                    (outcome.delivery, outcome.error, delivery.attempts + 1)
                )
                continue
            if outcome.status == "sent":  # the refusals before it were their messages' own
                judged = _judge(store, sending, delivery.kind, now, policy, "own")
                if judged:  # failures recorded since the next was claimed (an address suppressed?)
                    _let_go_ahead(store, sending)  # it is claimed again, as any is, when it goes
                outcomes += judged
                for each in judged:
                    on_outcome(each)
            elif outcome.status == "down":
                sending.down[delivery.kind] = outcome.detail  # unreachable: no message gets further
            outcomes.append(outcome)
            on_outcome(outcome)
            sending.unsynced = True  # a "sent", and the parts of one, and failures too
            sending.sync(store, sync_every)
        _let_go_ahead(store, sending)  # claimed with the last "sent", and the sending stopped
    except BaseException:
        with suppress(Exception):  # the exception that ends the sending is the one to tell
            _let_go_ahead(store, sending)
        if own:
            release(store, sending, now)
        sending.stored.clear()
        with suppress(OSError):  # the exception that ends the sending is the one to tell
            sending.sync(store)
        raise
    sending.stored.clear()  # a message not sent now is read from the ledger when it goes
    # On its own: on disk when it returns. A run's: under way (the next batch is not waited
    # for), and on disk by the run's end.
    sending.sync(store, None if own else 0.0)
    if own:
        outcomes += settle(store, sending, now, policy, on_outcome)
    return outcomes


def settle(
    store: Store,
    sending: Sending,
    now: Callable[[], datetime],
    policy: RetryPolicy = RetryPolicy(),
    on_outcome: Callable[[Outcome], None] = lambda outcome: None,
    stopped: bool = False,
) -> list[Outcome]:
    """Judge the refusals that no message followed (see Sending): the transport is down. Call
    when the run's sending is over (send_due does, when it is the whole run). `stopped` (a
    SIGTERM cut the run short): nothing can be told, so they are let go, due at once."""
    outcomes = []
    for kind in list(sending.refused):
        outcomes += _judge(store, sending, kind, now, policy, "stopped" if stopped else "down")
    for outcome in outcomes:
        on_outcome(outcome)
    return outcomes


def _judge(
    store: Store, sending: Sending, kind: str, now: Callable[[], datetime], policy: RetryPolicy, verdict: str
) -> list[Outcome]:
    """Record the refusals of `kind` met so far, by `verdict`: "down" (the transport's: no
    attempt counted, the kind sends no more this run), "own" (a message went after them: each
    its own failure) or "stopped" (the run was cut short: due again at once, uncounted)."""
    refusals = sending.refused.get(kind, [])
    outcomes = []
    while refusals:  # each let go of once written: an exception leaves the rest to `release`
        delivery, error, attempts = refusals[0]
        if verdict == "down":
            outcome = _record_failure(store, delivery, error, attempts, now(), policy, sending.owner)
        elif verdict == "own":
            outcome = _record_failure(
                store, delivery, error.per_message, attempts, now(), policy, sending.owner
            )
        elif store.mark_retry(delivery.id, str(error), now(), counted=False, owner=sending.owner):
            outcome = Outcome(delivery, "retry", f"{error} (the run stopped before it was judged)", error)
        else:
            outcome = _taken_over(delivery)
        refusals.pop(0)
        outcomes.append(outcome)
    sending.refused.pop(kind, None)
    down = [o for o in outcomes if o.status == "down"]  # not those another process took over
    if down:
        sending.down[kind] = down[0].detail
        log.error("cannot send %s now: %s; %d digests wait, pending", kind, down[0].detail, len(down))
    return outcomes


def release(store: Store, sending: Sending, now: Callable[[], datetime]) -> None:
    """Let go of the refusals not judged yet, uncounted and due at once: for a run that ends
    by an exception (Ctrl-C, a locked database), so that no digest stays claimed."""
    for kind in list(sending.refused):
        try:
            _judge(store, sending, kind, now, RetryPolicy(), "stopped")
        except Exception:  # the exception that ends the run is the one to tell
            log.exception("could not let go of the %s digests held for a judgement", kind)


def _let_go_ahead(store: Store, sending: Sending) -> None:
    """Let go of the digest claimed with the last "sent" (see Store.mark_sent): pending again,
    uncounted. When it is not sent next after all (the run stopped, its sending ended), or is
    to be claimed again before it goes (see _send_one)."""
    if sending.ahead is not None:
        ahead, sending.ahead = sending.ahead[0], None
        store.unclaim(ahead, sending.owner)


def _send_one(
    store: Store,
    senders: Mapping[str, Sender],
    delivery: Delivery,
    sending: Sending,
    now: Callable[[], datetime],
    policy: RetryPolicy,
    following: Delivery | None = None,
) -> Outcome | None:
    """Claim, send and record one delivery; None when this run does not send its kind. Its
    message is read from the ledger, unless the delivery holds it (as the ledger has it).
    `following`: the delivery likely to go next, for a sender that can prepare for it (expect);
    once this one is sent, it is claimed in the same commit (sending.ahead)."""
    sender = senders.get(delivery.kind)
    if sender is None:
        return None  # a kind this run does not send (e.g. webhooks while only email is set up)
    owner = sending.owner
    sent_as, message = delivery, delivery.message  # sent as it is when it holds its message
    if message is not None:  # its outcome keeps the row, not the bytes: a run keeps every outcome
        delivery = dataclasses.replace(delivery, message=None)
    claimed = False  # with the last one's "sent"; trusted as a claim made now, if it is one
    if sending.ahead is not None and sending.ahead[0] == delivery.id:
        _, when, version = sending.ahead
        # Nothing written to the ledger by anyone else since (an unsubscribe, another process
        # taking it over), and most of its lease ahead: else claimed again, as any is.
        if now() - when < policy.lease / 10 and store.version() == version:
            claimed, sending.ahead = True, None
        else:
            _let_go_ahead(store, sending)
    if not claimed and not store.claim_delivery(delivery.id, owner, now(), policy.lease):  # suppressed, taken
        reason = store.suppression(delivery.subscriber_id, delivery.channel)
        if reason:
            store.mark_failed(delivery.id, f"suppressed: {reason}")
            return Outcome(delivery, "suppressed", reason)
        return Outcome(delivery, "busy", "another paperbot process is sending it")
    attempts = delivery.attempts + 1
    try:  # read now (or as the run stored it moments ago), and not kept after
        stored = message if message is not None else store.stored_message(delivery.id)
    except StoreError as error:  # damaged in the database: it cannot go as it was made
        return _record_failure(store, delivery, PermanentError(str(error)), attempts, now(), policy)
    try:
        # A message in several parts (a long Slack digest) records each part as it goes,
        # so a failure after part 1 never sends part 1 again.
        parts = split_parts(stored)
        if delivery.kind == "email" and "${" in delivery.recipient:  # a row an older paperbot wrote
            delivery = sent_as = dataclasses.replace(delivery, recipient=_expanded(delivery.recipient))
        expect = getattr(sender, "expect", None)
        if expect is not None and following is not None and len(parts) == 1:
            expect(following)
        for number in range(delivery.parts_sent, len(parts)):
            part = parts[number]
            sender.send(sent_as if part is sent_as.message else dataclasses.replace(delivery, message=part))
            if len(parts) > 1:
                store.mark_part_sent(delivery.id, number + 1)
    except DeliveryError as error:
        if isinstance(error, TransportDown) and error.per_message is not None:
            return Outcome(delivery, "refused", str(error), error)  # stays claimed: see Sending
        return _record_failure(store, delivery, error, attempts, now(), policy)
    except Exception as error:  # a bug: keep it visible, and keep the others going
        log.exception("sending delivery %d to %s failed unexpectedly", delivery.id, delivery.subscriber_id)
        store.mark_retry(
            delivery.id, f"internal error: {error!r}", policy.next_attempt(attempts, now(), None)
        )
        return Outcome(delivery, "retry", repr(error))
    # The duplicate window: the server has said 250; until this line commits, a crash
    # leaves the row 'sending', and its lease running out sends it again (same Message-ID).
    # The next digest is claimed in the same commit: one commit a message, not two (in
    # bench/render_send.py the run's process took 4% less CPU, in alternating runs).
    if following is None:
        store.mark_sent(delivery.id, now())
    else:
        at = now()
        version = store.mark_sent(delivery.id, at, then_claim=(following.id, owner, policy.lease))
        if version is not None:
            sending.ahead = (following.id, at, version)
    log.info(
        "sent %s digest %s to %s: %d papers",
        delivery.kind,
        delivery.period,
        delivery.subscriber_id,
        len(delivery.paper_ids),
    )
    return Outcome(delivery, "sent")


def _taken_over(delivery: Delivery) -> Outcome:
    return Outcome(delivery, "busy", "its claim ran out, and another paperbot process took it over")


def _record_failure(
    store: Store,
    delivery: Delivery,
    error: DeliveryError,
    attempts: int,
    now: datetime,
    policy: RetryPolicy,
    owner: str | None = None,
) -> Outcome:
    """Record a failed send. `owner`: only while that claim still holds the row (a refusal
    judged later in the run: its lease may have run out, and another process sent it)."""
    if isinstance(error, TransportDown):  # nobody's fault but the setup's: no attempt counted
        when = policy.next_attempt(1, now, None)
        if not store.mark_retry(delivery.id, str(error), when, counted=False, owner=owner):
            return _taken_over(delivery)
        if error.per_message is None:  # else said once for all (_judge)
            log.error(
                "cannot send %s now: %s; the %s digests wait, pending", delivery.kind, error, delivery.kind
            )
        return Outcome(delivery, "down", str(error), error)
    permanent = isinstance(error, PermanentError)
    if not permanent and attempts >= policy.max_attempts:
        permanent = True
        error = PermanentError(f"gave up after {attempts} attempts: {error}")
    if not permanent:
        when = policy.next_attempt(attempts, now, error.retry_after)
        if not store.mark_retry(delivery.id, str(error), when, owner=owner):
            return _taken_over(delivery)
        log.warning(
            "%s digest %s to %s: %s; retrying after %s",
            delivery.kind,
            delivery.period,
            delivery.subscriber_id,
            error,
            f"{when:%Y-%m-%d %H:%M} UTC",
        )
        return Outcome(delivery, "retry", str(error))
    failures = store.mark_failed(delivery.id, str(error), owner=owner)
    if failures is None:  # another process has it now (see owner)
        return _taken_over(delivery)
    log.error("%s digest %s to %s failed: %s", delivery.kind, delivery.period, delivery.subscriber_id, error)
    if isinstance(error, ChannelGone):
        reason = f"the channel is gone: {error}"
        store.suppress(delivery.subscriber_id, delivery.channel, delivery.recipient, reason, now)
        log.error("disabled %s's %s channel: %s", delivery.subscriber_id, delivery.channel, reason)
        return Outcome(delivery, "failed", f"{error}; channel disabled")
    if failures >= policy.suppress_after:
        reason = f"{failures} permanent failures in a row, the last: {error}"
        store.suppress(delivery.subscriber_id, delivery.channel, delivery.recipient, reason, now)
        log.error("suppressed %s's %s channel: %s", delivery.subscriber_id, delivery.channel, reason)
        return Outcome(delivery, "failed", f"{error}; channel suppressed")
    return Outcome(delivery, "failed", str(error))
