"""One run of paperbot, end to end, over injected parts (client, store, clock).

For now: poll Hugging Face (or read a bundled capture) and store what it lists.
Matching, rendering and delivery join here as they are built.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from importlib import resources

from bot.captures import read_capture
from bot.config import Settings
from bot.errors import SourceError
from bot.fetch import Listing, fetch_listing, fetch_with_fallback
from bot.match import Match, WatchIndex, match_papers
from bot.models import FetchResult, Subscriber
from bot.store import SaveStats, Store
from bot.transport import HttpClient

__all__ = [
    "DayMatches",
    "PollOutcome",
    "backtest",
    "bundled_capture",
    "import_files",
    "make_client",
    "match_days",
    "poll",
]

log = logging.getLogger(__name__)

BUNDLED_CAPTURE = "hf_daily_papers_2026-06-12.json"


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
