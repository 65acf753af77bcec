"""One run of paperbot, end to end, over injected parts (client, store, senders, clock).

run_once: poll (or read the bundled capture) ─> plan digests ─> reserve + render ─> send, a batch
at a time; in a big run, a forked helper process renders the batches ahead (see _rendered_batches).
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import ipaddress
import json
import logging
import multiprocessing
import os
import re
import secrets
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from email.utils import parseaddr
from functools import cache
from importlib import resources
from time import monotonic
from urllib.parse import urlsplit

from bot.alerts import check_alerts
from bot.captures import read_capture
from bot.channels import Sender
from bot.config import Settings
from bot.deliver import (
    DigestPlan,
    Outcome,
    RetryPolicy,
    Sending,
    Skip,
    close_period,
    email_recipient,
    expand_target,
    finish_interrupted,
    join_parts,
    plan_digests,
    release,
    reserve_digest,
    send_due,
    settle,
)
from bot.errors import BotError, PermanentError, SettingsError, SourceError, StoreError, TransientError
from bot.fetch import Listing, fetch_listing, fetch_with_fallback
from bot.match import Match, WatchIndex, match_papers
from bot.message import MessageSettings, digest_links, email_data, message_id
from bot.models import Digest, FetchResult, Subscriber
from bot.render import CardKey, RenderedDigest, card_key, keep_cards, made_cards, prepare_cards, render_digest
from bot.store import Delivery, PackedMessage, SaveStats, Store, pack_message
from bot.transport import HttpClient

__all__ = [
    "DayMatches",
    "Made",
    "PollOutcome",
    "RunReport",
    "message_settings",
    "preview_digest",
    "render_plan",
    "retry_policy",
    "run_once",
    "search_text",
    "backtest",
    "bundled_capture",
    "import_files",
    "make_client",
    "make_senders",
    "match_days",
    "poll",
]

log = logging.getLogger(__name__)

BUNDLED_CAPTURE = "hf_daily_papers_2026-06-12.json"
RESERVE_BATCH = 64  # digests reserved and rendered to a ledger commit (see run_once)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """What one poll of one listing did."""

    result: FetchResult
    stats: SaveStats


def make_client(settings: Settings, **overrides) -> HttpClient:
    """An HttpClient configured from settings."""
    options = dict(
        timeout=settings["hf.timeout"],
        retries=settings["hf.retries"],
        backoff=settings["hf.backoff"],
        max_wait=settings["hf.max_wait"],
        token=settings["hf.token"],
    )
    options.update(overrides)
    return HttpClient(**options)


def poll(
    store: Store,
    client: HttpClient,
    settings: Settings,
    listing: Listing,
    *,
    source: str = "api",
    fallback: bool = True,
    clock: Callable[[], datetime] = _now,
) -> PollOutcome:
    """Fetch one listing and store it. A failure is recorded and raised; papers stay untouched."""
    base_url = str(settings["hf.base_url"]).rstrip("/")
    api_url, _ = (listing.api_request if source == "api" else listing.page_request)(base_url)
    started = clock()

    def record_failure(failed_source: str, key: str, error: SourceError) -> None:
        store.record_fetch(
            url=error.url or api_url,
            source=failed_source,
            listing=key,
            started_at=started,
            status="error",
            error=str(error),
        )

    etag, modified = store.validators(source, listing.key)
    options = dict(clock=clock, etag=etag, last_modified=modified)
    if source == "api":
        options.update(page_size=settings["hf.page_size"])
    if fallback:
        result = fetch_with_fallback(
            client, base_url, listing, source=source, on_failure=record_failure, **options
        )
    else:
        try:
            result = fetch_listing(client, base_url, listing, source, **options)
        except SourceError as error:
            record_failure(source, listing.key, error)
            raise
    stats = store.save_fetch(result)
    if result.not_modified:
        log.info("%s %s: not modified since the last poll", result.source, listing.key)
    elif not result.papers:
        weekday = listing.day.strftime("%A") if listing.day else None
        log.info(
            "%s %s: no papers listed%s", result.source, listing.key, f" (a {weekday})" if weekday else ""
        )
    else:
        log.info(
            "fetched %d papers from %s %s, %d new", len(result.papers), result.source, listing.key, stats.new
        )
    return PollOutcome(result, stats)


def import_files(store: Store, paths: list[str]) -> tuple[int, SaveStats]:
    """Import local captures: every file is read and checked before anything is stored."""
    captures = [capture for path in paths for capture in read_capture(path)]
    totals = [0, 0, 0, 0]
    for capture in captures:
        stats = store.save_papers(capture.papers, capture.seen_at, capture.source)
        for index, value in enumerate((stats.seen, stats.new, stats.updated, stats.sightings)):
            totals[index] += value
    return len(captures), SaveStats(*totals)


def bundled_capture() -> str:
    """The path of the real capture shipped with the package, for --offline runs."""
    return str(resources.files("bot") / "data" / BUNDLED_CAPTURE)


@dataclass(frozen=True, slots=True)
class DayMatches:
    """The matches among the papers of one UTC day (and the papers that rose on it)."""

    day: date
    papers: int  # papers first seen that day
    matches: tuple[Match, ...]


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def match_days(store: Store, subscribers: list[Subscriber], since: date, until: date) -> list[DayMatches]:
    """Match every stored day from `since` to `until` (UTC days, inclusive) one day at a time,
    as daily polls would have: rising watches compare a day's counts with the days before."""
    index = WatchIndex(subscribers)
    days = []
    day = since
    while day <= until:
        window = store.window(_midnight(day), _midnight(day + timedelta(days=1)))
        found = match_papers(window.papers, index, window.upvotes_before, window.risers)
        days.append(DayMatches(day, len(window.papers), tuple(found)))
        day += timedelta(days=1)
    return days


def backtest(store: Store, subscriber: Subscriber, days: int, until: date | None = None) -> list[DayMatches]:
    """What `subscriber`'s watches would have matched on each of the last `days` stored days."""
    until = until or store.latest_day()
    if until is None:
        return []
    return match_days(
        store, [dataclasses.replace(subscriber, paused=False)], until - timedelta(days=days - 1), until
    )


# -- one run: poll, plan, reserve, render, send ------------------------------------------------


def message_settings(settings: Settings, store: Store) -> MessageSettings:
    """What digests need from the settings. Without web.secret, a random key is made once and
    kept in the database, so links signed today still verify tomorrow."""
    secret = settings["web.secret"] or store.set_meta_once("web.secret", secrets.token_urlsafe(32))
    return MessageSettings(
        sender=settings["mail.from"],
        base_url=settings["web.base_url"],
        secret=tuple(part.strip() for part in secret.split(",")) if "," in secret else secret,
        unsubscribe_to=settings["mail.unsubscribe_to"],
        list_id=settings["mail.list_id"],
    )


def retry_policy(settings: Settings) -> RetryPolicy:
    """The retry and suppression rules from the settings."""
    return RetryPolicy(
        max_attempts=settings["delivery.max_attempts"],
        first_wait=timedelta(minutes=settings["delivery.retry_minutes"]),
        suppress_after=settings["delivery.suppress_after"],
        lease=timedelta(seconds=settings["delivery.lease_seconds"]),
    )


def search_text(node) -> str:
    """What to ask Hugging Face's search for a watch's query: its wanted words and phrases in
    the paper's text (not names, not excluded words), once each."""
    from bot.query import And, Or, Phrase, Term

    words: list[str] = []

    def walk(item) -> None:
        if isinstance(item, Term) and item.field in (None, "title", "abstract", "keyword"):
            words.append(item.word)
        elif isinstance(item, Phrase) and item.field in (None, "title", "abstract", "keyword"):
            words.extend(item.words)
        elif isinstance(item, And | Or):
            for child in item.children:
                walk(child)

    if node is not None:
        walk(node)
    return " ".join(dict.fromkeys(words))


def resolve_channels(subscribers: list[Subscriber]) -> Callable[[Delivery], tuple[str, str | None]]:
    """For a ledger row, its channel's URL (or address) and signing secret, from the environment.

    Secrets are never stored: the ledger keeps the `${VAR}` reference, expanded only here."""
    channels = {(s.id, c.name): c for s in subscribers for c in s.channels}

    def target(delivery: Delivery) -> tuple[str, str | None]:
        channel = channels.get((delivery.subscriber_id, delivery.channel))
        if channel is None:
            raise PermanentError(f"{delivery.subscriber_id} has no channel {delivery.channel!r} any more")
        try:
            secret = expand_target(channel.secret) if channel.secret else None
            return expand_target(channel.target), secret
        except SettingsError as error:  # the operator can fix it: keep the message, try later
            raise TransientError(str(error)) from None

    return target


def make_email_sender(settings: Settings) -> Sender:
    """The mail transport of `mail.transport`: SMTP with the smtp.* settings, or the local outbox."""
    from bot.channels.email import OutboxSender, SmtpSender

    if settings["mail.transport"] == "smtp":
        _warn_about_links(settings["web.base_url"])
        return SmtpSender(
            host=settings["smtp.host"],
            port=settings["smtp.port"],
            sender=parseaddr(settings["mail.from"])[1],
            security=settings["smtp.security"],
            username=settings["smtp.username"],
            password=settings["smtp.password"],
            timeout=settings["smtp.timeout"],
            rate=settings["smtp.rate"],
        )
    return OutboxSender(settings["mail.outbox"])


def link_warning(base_url: str) -> str | None:
    """What is wrong with sending real mail whose links start with `base_url`: a mail program
    offers one-click unsubscribing only over https (RFC 8058), and a local address reaches
    nobody's unsubscribe page but the operator's."""
    host = (urlsplit(base_url).hostname or "").lower()
    local = host in ("localhost", "") or host.endswith(".localhost") or _loopback(host)
    if not local and base_url.startswith("https://"):
        return None
    why = "a local address, which its readers cannot reach" if local else "not https"
    return (
        f"web.base_url is {base_url}, {why}: the unsubscribe and manage links in the mail go nowhere"
        " (and one-click unsubscribing needs https); set PAPERBOT_WEB_BASE_URL to where"
        " `paperbot serve` is reached, e.g. https://papers.example.org"
    )


@cache
def _warn_about_links(base_url: str) -> None:
    """Log link_warning's warning, once in a process (the daemon makes senders every run)."""
    warning = link_warning(base_url)
    if warning:
        log.warning("%s", warning)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_senders(settings: Settings, subscribers: list[Subscriber]) -> dict[str, Sender]:
    """A sender for every kind of channel: email (the outbox or SMTP), Slack and webhooks."""
    from bot.channels.slack import SlackSender
    from bot.channels.webhook import WebhookSender

    email = make_email_sender(settings)
    target = resolve_channels(subscribers)
    timeout = settings["webhook.timeout"]
    senders: dict[str, Sender] = {}
    if any(c.kind == "apprise" for s in subscribers for c in s.channels):
        from bot.channels.apprise import AppriseSender

        senders["apprise"] = AppriseSender(lambda d: target(d)[0])
    return senders | {
        "email": email,
        "slack": SlackSender(
            lambda d: target(d)[0], timeout=timeout, allow_private=settings["webhook.allow_private"]
        ),
        "webhook": WebhookSender(target, allow_private=settings["webhook.allow_private"], timeout=timeout),
    }


def make_digest(plan: DigestPlan, shown: tuple, total: int, mail: MessageSettings) -> Digest:
    """A planned digest with its signed links, ready to render for any channel."""
    generated = plan.window_end
    links = digest_links(mail, plan.subscriber.id, plan.period.key, now=generated)
    return Digest(
        subscriber=plan.subscriber,
        channel=plan.channel.name,
        period=plan.period.key,
        label=plan.period.label,
        generated_at=generated,
        matches=shown,
        total=total,
        list_url=links.list_url,
        unsubscribe_url=links.unsubscribe_url,
        manage_url=links.manage_url,
    )


def render_plan(
    plan: DigestPlan, shown: tuple, total: int, mail: MessageSettings
) -> tuple[Digest, RenderedDigest, bytes]:
    """A planned digest as the subscriber will read it, and the bytes of its email."""
    digest = make_digest(plan, shown, total, mail)
    rendered = render_digest(digest)
    return digest, rendered, email_data(digest, rendered, mail, to=email_recipient(plan.channel.target))


@dataclass(frozen=True, slots=True)
class Made:
    """A digest made (or, in a dry run, that would be): what the run reports about it."""

    plan: DigestPlan
    subject: str
    shown: int  # papers in it


def render_message(
    plan: DigestPlan, shown: tuple, total: int, mail: MessageSettings
) -> tuple[bytes, str, Made]:
    """The bytes the ledger stores for a planned digest on its channel's kind, its id, and a
    summary: an email; numbered Slack messages; a signed webhook's JSON body."""
    if plan.channel.kind == "email":
        _, rendered, data = render_plan(plan, shown, total, mail)
        return data, _message_id(data), Made(plan, rendered.subject, rendered.shown)
    from bot import chat  # Slack and webhook formats

    digest = make_digest(plan, shown, total, mail)
    identity = message_id(digest.identity, mail.domain)
    if plan.channel.kind == "slack":
        parts = [
            json.dumps(m.payload, ensure_ascii=False).encode("utf-8") for m in chat.slack_messages(digest)
        ]
        data = join_parts(parts)
    elif plan.channel.kind == "apprise":
        rendered = render_digest(digest)
        return rendered.text.encode("utf-8"), identity, Made(plan, rendered.subject, rendered.shown)
    elif plan.channel.kind == "webhook":
        data = json.dumps(chat.webhook_payload(digest), ensure_ascii=False).encode("utf-8")
        identity = "msg_" + identity[1:].split("@", 1)[0].replace("paperbot.", "")
    else:
        raise SettingsError(f"{plan.channel.kind} channels are not supported by this paperbot")
    count = len(shown)
    summary = f"{count} paper{'' if count == 1 else 's'} · {plan.period.label}"
    return data, identity, Made(plan, summary, count)


@dataclass(frozen=True, slots=True)
class RunReport:
    """What one run did: the poll, the digests made (or that would be, in a dry run), the sends."""

    fetched: str  # one line about the poll
    planned: tuple[Made, ...]
    skipped: tuple[Skip, ...]
    outcomes: tuple[Outcome, ...]
    errors: tuple[str, ...]  # subscribers whose digest could not be made, and why
    source_error: SourceError | None = None

    @property
    def troubled(self) -> bool:
        """Whether a digest could not be made, or a send failed, must be retried, or could not go."""
        return bool(self.errors) or any(o.status in ("failed", "retry", "down") for o in self.outcomes)


def run_once(
    store: Store,
    settings: Settings,
    subscribers: list[Subscriber],
    *,
    fetch: Callable[[], str],
    senders: dict[str, Sender],
    clock: Callable[[], datetime] = _now,
    dry_run: bool = False,
    backfill_days: int = 1,
    should_stop: Callable[[], bool] = lambda: False,
    subscription_errors: tuple = (),
    everyone: list[Subscriber] | None = None,
    tell: Callable[[str | Skip | Made | Outcome], None] = lambda event: None,
) -> RunReport:
    """Fetch, match, render and deliver every digest that is due, once.

    A failed fetch sends no new digests (a changed page must not look like a quiet day),
    but retries of earlier ones still go. A dry run writes nothing and sends nothing.
    `everyone`: all the subscribers, when the run plans digests for some of them only
    (a digest left unrendered by an earlier run is finished for whoever it is).
    `tell`: called with each thing the report will hold as it happens (the poll's line,
    each Skip, Made and Outcome), so a run cut short has said what it did.
    """
    source_error = None
    try:
        fetched = fetch()
    except SourceError as error:
        log.error("fetch failed, no new digests this run: %s", error)
        fetched, source_error = f"fetch failed: {error}", error
    tell(fetched)
    mail = message_settings(settings, store)
    planned, errors = [], []
    plans: list[DigestPlan] = []
    skipped: list[Skip] = []
    if source_error is None:
        grace = timedelta(hours=settings["schedule.grace_hours"])
        plans, skipped = plan_digests(
            store, subscribers, clock(), kinds=senders.keys(), backfill_days=backfill_days, grace=grace
        )
        for skip in skipped:
            log.info("%s/%s: nothing to send: %s", skip.subscriber_id, skip.channel, skip.reason)
            if skip.closes is not None and not dry_run:
                close_period(store, skip, clock())
        # Instant alerts: the instant watches' matches since the last alert, right after the poll.
        instants, _ = plan_digests(store, subscribers, clock(), kinds=senders.keys(), instant=True)
        alerts, overlaps = _left_to_alerts(plans, instants)
        for skip in overlaps:
            log.info("%s/%s: no instant alert: %s", skip.subscriber_id, skip.channel, skip.reason)
        plans += alerts
        skipped += overlaps
    for skip in skipped:
        tell(skip)
    outcomes: list[Outcome] = []
    policy = retry_policy(settings)
    sending = Sending()  # each delivery tried once in a run, and a transport down stays down
    if not dry_run:
        people = subscribers if everyone is None else everyone
        finish_interrupted(store, people, _composer(mail, []), clock(), errors)
    # RESERVE_BATCH digests reserved and rendered to a commit, then sent: nothing is sent before
    # it is committed, a crash before that loses only work, which the next run does again, and
    # the first digests leave while the later ones are made (by a helper process in a big run).
    with frozen_objects():  # the plans, their papers, the modules: left out of the collector's passes
        try:
            for batch, ahead in _rendered_batches(plans, mail, settings["run.helper_from"]):
                made_here = len(planned)
                with nullcontext() if dry_run else store.batch():
                    for plan, ready in zip(batch, ahead, strict=True):
                        made = _make_one(store, plan, mail, clock, dry_run, errors, ready, sending.stored)
                        if made is not None:
                            planned.append(made)
                for made in planned[made_here:]:  # once committed: a run killed before made none of them
                    tell(made)
                if not dry_run:
                    outcomes += send_due(
                        store, senders, clock, policy, should_stop, sending=sending, on_outcome=tell
                    )
                if should_stop():
                    break
            if dry_run:
                return RunReport(fetched, tuple(planned), tuple(skipped), (), tuple(errors), source_error)

            def send_and_judge() -> list[Outcome]:  # what is due, then the refusals judged
                sent = send_due(store, senders, clock, policy, should_stop, sending=sending, on_outcome=tell)
                return sent + settle(store, sending, clock, policy, tell, stopped=should_stop())

            outcomes += send_and_judge()  # retries that are due, when there was nothing new to send
            # After sending, so a channel disabled just now is told now; the alert mails go at once.
            down, unknown = sending.transport_problems(senders.keys(), outcomes)
            if check_alerts(store, settings, subscription_errors, clock(), also=down, unknown=unknown):
                outcomes += send_and_judge()
            sending.sync(store)  # the records of its sends are on disk by the run's end
        except BaseException:  # Ctrl-C, a locked database: no digest stays held for a judgement
            release(store, sending, clock)
            with suppress(OSError):  # the exception that ends the run is the one to tell
                sending.sync(store)
            raise

    return RunReport(fetched, tuple(planned), tuple(skipped), tuple(outcomes), tuple(errors), source_error)


@contextmanager
def frozen_objects() -> Iterator[None]:
    """Leave every object that exists now out of the cycle collector's passes until the block
    ends (what is made meanwhile is collected as usual). A run does so once it has planned: the
    full passes that its many new objects set off went over the whole heap each time, some 5%
    of a big run (bench/render_send.py), and a forked helper inherits them frozen, so its passes
    neither read nor copy them. Not when a caller froze objects already (gc.freeze): theirs."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _left_to_alerts(
    digests: list[DigestPlan], alerts: list[DigestPlan]
) -> tuple[list[DigestPlan], list[Skip]]:
    """The instant alerts without the papers that a digest of the same run shows on the same
    channel (the digest is made first, and a paper reaches a channel once); an alert left with
    no paper is not sent, and its papers wait for no later alert (they are in the digest)."""
    shown: dict[tuple[str, str], set[str]] = {}
    for plan in digests:
        key = (plan.subscriber.id, plan.channel.name)
        shown.setdefault(key, set()).update(m.paper.id for m in plan.matches[: plan.subscriber.max_papers])
    kept, skips = [], []
    for alert in alerts:
        taken = shown.get((alert.subscriber.id, alert.channel.name), ())
        matches = tuple(m for m in alert.matches if m.paper.id not in taken)
        if matches:
            kept.append(
                alert if len(matches) == len(alert.matches) else dataclasses.replace(alert, matches=matches)
            )
        else:
            skips.append(Skip(alert.subscriber.id, alert.channel.name, "its papers are in this run's digest"))
    return kept, skips


def _make_one(
    store: Store,
    plan: DigestPlan,
    mail: MessageSettings,
    clock: Callable[[], datetime],
    dry_run: bool,
    errors: list[str],
    ready: _Ready | None = None,
    stored: dict[int, Delivery] | None = None,
) -> Made | None:
    """Reserve and render one planned digest (in a dry run, only render it); None, with the
    error noted, when it cannot be made. `ready`: its message, if a helper made it already.
    `stored`: where to keep the digest as the ledger now holds it, by id, for sending."""
    made: list[Made] = []
    shown = plan.matches[: plan.subscriber.max_papers]
    packed = ready.message(shown, len(plan.matches)) if ready is not None else None
    compose = _composer(mail, made, ready, packed)
    try:
        if dry_run:
            compose(plan, shown, len(plan.matches))
        else:
            rendered = None if packed is None else (packed.data, ready.identity, ready.subject)
            delivery = reserve_digest(store, plan, compose, clock(), rendered, packed)
            if rendered is not None and delivery.message is rendered[0]:  # stored with its papers
                made.append(Made(plan, ready.subject, ready.shown))
            if stored is not None and delivery.state == "pending" and delivery.message is not None:
                stored[delivery.id] = delivery
    except (BotError, ValueError) as error:
        errors.append(f"{plan.subscriber.id}/{plan.channel.name}: {error}")
        log.error("cannot make the digest of %s/%s: %s", plan.subscriber.id, plan.channel.name, error)
        return None
    return made[-1] if made else None


# -- a helper process that renders ahead -------------------------------------------------------
#
# Rendering takes more CPU than anything else in a run, and a run of thousands of digests can
# render on a second core while this process reserves and sends. The helper is forked, so it
# has the plans without their being copied (pickling them cost a third of rendering them); it
# renders batch after batch, a few ahead, and returns the messages packed. The cards, shared by many
# digests and most of the first batches' work, are made partly here and partly there at the start
# (a card pickles in a tenth of the time it takes to make). Only where forking is safe:
# on Linux, from a process with one thread (`paperbot run --once`; the daemon's runs are on a
# scheduler thread and render in-process), and with two CPUs or more. Should the helper die,
# the run renders the rest itself; a digest the helper could not make is made here again, to
# report why. Should the run die, the helper is killed with it (_die_with_parent).


@dataclass(frozen=True, slots=True)
class _Ready:
    """A digest's message made by the helper: good for exactly these papers and this total.
    Packed as the ledger stores it (bot.store.pack_message): the helper hands over a fifth of
    the bytes, which the run stores as they are; it unpacks each once, to send it."""

    paper_ids: tuple[str, ...]
    total: int
    packed: bytes
    identity: str
    subject: str
    shown: int

    def fits(self, matches: Sequence[Match], total: int) -> bool:
        """Whether it was made to show exactly these matches' papers, of this total."""
        return self.total == total and self.paper_ids == tuple(m.paper.id for m in matches)

    def message(self, matches: Sequence[Match], total: int) -> PackedMessage | None:
        """The message, if made to show exactly these matches' papers, of this total, and it
        came whole (else the run renders the digest itself)."""
        if not self.fits(matches, total):
            return None
        try:
            return PackedMessage(self.packed)
        except StoreError as error:
            log.warning("a digest the helper rendered came damaged (%s): rendering it here", error)
            return None


# A digest of the first batch, rendered cold, takes about as long as making this many cards
# (bench/render_send.py: 1 ms and 0.11 ms).
_FIRST_DIGEST_IN_CARDS = 9
HELPER_AHEAD = 4  # batches the helper may render ahead of the sending: bounds the memory held
HELPER_PATIENCE = 120.0  # seconds to wait for a batch (it takes well under one) before killing it
# What a forked helper inherits: the plans, the mail settings, and the plans' cards (their keys).
_helper_work: tuple[list[DigestPlan], MessageSettings, list[CardKey]] | None = None


def _rendered_batches(
    plans: list[DigestPlan], mail: MessageSettings, helper_from: int
) -> Iterator[tuple[list[DigestPlan], list[_Ready | None]]]:
    """`plans` in batches of RESERVE_BATCH, each with the messages a helper rendered for it
    (None for each, rendered by the caller, when there is no helper)."""
    batches = [plans[start : start + RESERVE_BATCH] for start in range(0, len(plans), RESERVE_BATCH)]
    big = helper_from and len(plans) >= helper_from
    # The distinct cards, in order of first showing: worked out before the fork, once for both.
    keys, needs = _cards_of_batches(batches) if big else ([], [])
    started = _start_helper(plans, mail, keys) if big else None
    if started is None:
        _prepare_cards_of(plans)
        for batch in batches:
            yield batch, [None] * len(batch)
        return
    helper, pid = started
    # Making the cards is most of the first batches' rendering: the helper makes the first ones
    # (and renders the batches that show only those) while this process makes the others and
    # hands them over, rather than waiting. It would wait still for the first batch, which the
    # helper renders after its cards: so the helper makes fewer, by what that batch costs,
    # but all the first batch shows. Where that is more than half, it makes half, and
    # renders the first batch once it has this process's.
    half = len(keys) // 2
    fewer = (len(keys) - len(batches[0]) * _FIRST_DIGEST_IN_CARDS) // 2
    share = max(needs[0], fewer) if needs[0] <= half else half
    log.info(
        "rendering %d digests in a helper process (it makes %d of their %d cards)",
        len(plans),
        share,
        len(keys),
    )
    waited = 0.0
    futures: deque = deque()
    submitted = 0

    def submit_batches(upto: int) -> None:
        nonlocal submitted
        while len(futures) < HELPER_AHEAD and submitted < upto:
            at = submitted * RESERVE_BATCH
            futures.append(helper.submit(_render_batch, at, at + RESERVE_BATCH))
            submitted += 1

    def rest_here(number: int, error: object) -> Iterator[tuple[list[DigestPlan], list[_Ready | None]]]:
        log.warning("the helper process failed (%s): rendering the rest here", error)
        _prepare_cards_of([p for batch in batches[number:] for p in batch])
        for batch in batches[number:]:
            yield batch, [None] * len(batch)

    try:
        try:
            sharing = [helper.submit(_make_cards, share)]
            submit_batches(sum(1 for need in needs if need <= share))
            cards = made_cards(keys[share:])  # its errors are this process's: they end the run
            sharing.append(helper.submit(_take_cards, share, cards))
        except BrokenProcessPool as error:  # died already (killed for memory, say)
            yield from rest_here(0, error)
            return
        for number in range(len(batches)):
            try:
                submit_batches(len(batches))
                clock_start = monotonic()
                ready = futures.popleft().result(timeout=HELPER_PATIENCE)
                waited += monotonic() - clock_start
            except Exception as error:  # a dead helper (BrokenProcessPool), a stuck one, a bug
                if isinstance(error, TimeoutError):  # stuck: killed, so the shutdown need not wait
                    error = f"it rendered nothing for {HELPER_PATIENCE:g} s"
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                yield from rest_here(number, error)
                return
            yield batches[number], ready
        for shared in sharing:  # a failure here cost time only: the helper made those cards itself
            if shared.done() and not shared.cancelled() and shared.exception() is not None:
                log.debug("sharing the cards with the helper failed: %r", shared.exception())
    finally:
        helper.shutdown(wait=True, cancel_futures=True)
        log.debug("waited %.2f s for the helper's rendering", waited)


def _cards_of_batches(batches: list[list[DigestPlan]]) -> tuple[list[CardKey], list[int]]:
    """The distinct cards `batches` show (bot.render's keys), in order of first showing, and for
    each batch how many of them the batches up to it show: it can be rendered from those."""
    seen: dict[CardKey, None] = {}
    needs = []
    for batch in batches:
        seen.update((card_key(m), None) for plan in batch for m in plan.matches[: plan.subscriber.max_papers])
        needs.append(len(seen))
    return list(seen), needs


def _prepare_cards_of(plans: list[DigestPlan]) -> None:
    """Make at once the cards of the papers `plans` show (see bot.render.prepare_cards)."""
    prepare_cards(m for plan in plans for m in plan.matches[: plan.subscriber.max_papers])


def _start_helper(
    plans: list[DigestPlan], mail: MessageSettings, keys: list[CardKey]
) -> tuple[ProcessPoolExecutor, int] | None:
    """A forked helper holding `plans` (and the `keys` of their cards), and its process id;
    None where forking is not safe (or fails)."""
    global _helper_work
    if not sys.platform.startswith("linux") or threading.active_count() != 1 or _cpus() < 2:
        return None
    _helper_work = (plans, mail, keys)
    try:
        pool = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        )
        pid = pool.submit(os.getpid).result()  # forks now, while this process has one thread
    except (OSError, BrokenProcessPool) as error:
        log.warning("cannot start a helper process (%s): rendering here", error)
        return None
    finally:
        _helper_work = None  # the helper has its copy
    return pool, pid


def _die_with_parent(parent: int) -> None:
    """In the helper, first: be killed with the run that forked it (a `kill -9` of paperbot,
    say), rather than live on, orphaned, holding its log and database open."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux after all: the helper ends with its work
        return
    if os.getppid() != parent:  # the run died before the line above: nobody to render for
        os._exit(1)


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _make_cards(stop: int) -> None:
    """In the helper, first: make the first `stop` cards of the plans (see _rendered_batches)."""
    assert _helper_work is not None, "a helper renders only what it inherited"
    made_cards(_helper_work[2][:stop])


def _take_cards(start: int, cards: list) -> None:  # cards: made_cards's, pickled
    """In the helper: take the cards the run made, those of the plans' card keys from `start` on."""
    assert _helper_work is not None, "a helper renders only what it inherited"
    keep_cards(_helper_work[2][start:], cards)


def _render_batch(start: int, stop: int) -> list[_Ready | None]:
    """In the helper: the messages of plans[start:stop] (None for one that cannot be made)."""
    assert _helper_work is not None, "a helper renders only what it inherited"
    plans, mail, _ = _helper_work
    batch = plans[start:stop]
    _prepare_cards_of(batch)
    ready: list[_Ready | None] = []
    for plan in batch:
        shown = plan.matches[: plan.subscriber.max_papers]
        try:
            data, identity, made = render_message(plan, shown, len(plan.matches), mail)
        except Exception:  # the run makes this one again itself, and reports why it failed
            ready.append(None)
            continue
        ready.append(
            _Ready(
                tuple(m.paper.id for m in shown),
                len(plan.matches),
                pack_message(data),
                identity,
                made.subject,
                made.shown,
            )
        )
    return ready


def preview_digest(
    store: Store, settings: Settings, subscriber: Subscriber, now: datetime
) -> tuple[str, str, str]:
    """The HTML, text and subject of the digest `subscriber` would get now; nothing is written
    but the link-signing key, made once if the settings have none."""
    email = [c for c in subscriber.channels if c.kind == "email"]
    if not email:
        raise SettingsError(
            f"{subscriber.id} has no email channel to preview: add email = true to [channels]"
        )
    person = dataclasses.replace(subscriber, paused=False, send_empty=True, channels=tuple(email[:1]))
    plans, skips = plan_digests(store, [person], now, preview=True)
    latest = store.latest_day()
    if not plans and latest:
        # Nothing new since the last digest: show the latest stored day's, so there is a preview.
        log.warning("nothing new for %s since the last digest: previewing the latest day's", subscriber.id)
        start = datetime.combine(latest, time(0), tzinfo=UTC)
        plans, skips = plan_digests(store, [person], now, preview=True, since=start)
    if not plans:
        raise SettingsError(
            f"nothing to preview for {subscriber.id}: {skips[0].reason if skips else 'no digest'}"
        )
    plan = plans[0]
    shown = plan.matches[: person.max_papers]
    _, rendered, _ = render_plan(plan, shown, len(plan.matches), message_settings(settings, store))
    return rendered.html, rendered.text, rendered.subject


def _composer(
    mail: MessageSettings, made: list[Made], ready: _Ready | None = None, packed: PackedMessage | None = None
):
    """A Compose function for the ledger that also keeps what it made (for the report); with
    `ready`, a helper's digest, its message `packed` (as ready.message gave it) when the papers
    asked for are those it was made for."""

    def compose(plan: DigestPlan, shown: tuple, total: int) -> tuple[bytes, str, str]:
        if ready is not None and packed is not None and ready.fits(shown, total):
            made.append(Made(plan, ready.subject, ready.shown))
            return packed.data, ready.identity, ready.subject
        data, identity, summary = render_message(plan, shown, total, mail)
        made.append(summary)
        return data, identity, summary.subject

    return compose


def _message_id(data: bytes) -> str:
    found = re.search(rb"^Message-ID: (<[^>]+>)", data, re.M | re.I)
    return found.group(1).decode() if found else ""
