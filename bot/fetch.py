"""Fetch one Hugging Face listing, from the JSON API or the page, into a FetchResult.

The API is paginated (`p`, `limit`) until a short page; the page is one document.
`fetch_with_fallback` tries the API and falls back to the page when the API fails or
answers something it cannot read, so one upstream change does not stop the poll.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from bot.errors import SourceError
from bot.models import FetchResult, Paper
from bot.sources import hf_api, hf_page
from bot.transport import HttpClient

__all__ = ["Listing", "fetch_listing", "fetch_paper", "fetch_with_fallback", "parse_listing"]

log = logging.getLogger(__name__)

MAX_PAGES = 50  # a runaway paginator (an API that ignores `p`) stops here

_WEEK = re.compile(r"^\d{4}-W\d{2}$")
_MONTH = re.compile(r"^\d{4}-\d{2}$")


@dataclass(frozen=True, slots=True)
class Listing:
    """Which list of papers to read: the latest day, a date, week, month, trending or a search."""

    kind: str  # latest | date | week | month | trending | search
    value: str | None = None

    @property
    def key(self) -> str:
        """A stable name for this listing, used in the fetches table: "date=2024-08-01"."""
        return self.kind if self.value is None else f"{self.kind}={self.value}"

    @property
    def day(self) -> date | None:
        return date.fromisoformat(self.value) if self.kind == "date" else None

    @property
    def must_have_papers(self) -> bool:
        """Whether an empty answer means something broke (a date may be an empty weekend)."""
        return self.kind in {"latest", "week", "month", "trending"}

    def api_request(self, base_url: str) -> tuple[str, dict[str, str]]:
        if self.kind == "search":
            return f"{base_url}/api/papers/search", {"q": self.value or ""}
        params = {"trending": {"sort": "trending"}, "latest": {}}.get(self.kind)
        return f"{base_url}/api/daily_papers", params if params is not None else {self.kind: self.value}

    def page_request(self, base_url: str) -> tuple[str, dict[str, str]]:
        if self.kind == "search":
            return f"{base_url}/papers", {"q": self.value or ""}
        if self.kind == "latest":
            return f"{base_url}/papers", {}
        if self.kind == "trending":
            return f"{base_url}/papers/trending", {}
        return f"{base_url}/papers/{self.kind}/{self.value}", {}


def parse_listing(
    date_: str | None = None,
    week: str | None = None,
    month: str | None = None,
    trending: bool = False,
    search: str | None = None,
) -> Listing:
    """The listing the CLI options ask for; at most one may be given. Raises ValueError."""
    given = [(k, v) for k, v in (("date", date_), ("week", week), ("month", month), ("search", search)) if v]
    if trending:
        given.append(("trending", None))
    if len(given) > 1:
        raise ValueError("give only one of --date, --week, --month, --trending, --search")
    if not given:
        return Listing("latest")
    kind, value = given[0]
    if kind == "date":
        try:
            date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"--date {value!r} is not a date: write YYYY-MM-DD") from None
    if kind == "week" and not _WEEK.match(value):
        raise ValueError(f"--week {value!r} is not an ISO week: write YYYY-Www, e.g. 2026-W21")
    if kind == "month" and not _MONTH.match(value):
        raise ValueError(f"--month {value!r} is not a month: write YYYY-MM")
    return Listing(kind, value)


def _now() -> datetime:
    return datetime.now(UTC)


def _check_not_empty(listing: Listing, papers: list[Paper], url: str) -> None:
    if not papers and listing.must_have_papers:
        raise SourceError(f"the {listing.key} listing holds no papers, which it always should", url)


def fetch_listing(
    client: HttpClient,
    base_url: str,
    listing: Listing,
    source: str = "api",
    *,
    page_size: int = 100,
    etag: str | None = None,
    last_modified: str | None = None,
    clock: Callable[[], datetime] = _now,
) -> FetchResult:
    """Read one listing from `source` ("api" or "page"). Raises SourceError / FetchError."""
    fetched_at = clock()
    if source == "page":
        url, params = listing.page_request(base_url)
        reply = client.get(url, params, etag=etag, last_modified=last_modified)
        if reply.not_modified:
            return FetchResult(reply.url, "page", listing.key, (), fetched_at, etag, last_modified, True)
        page = hf_page.parse_page(reply.body, reply.url, listing.day)
        _check_not_empty(listing, list(page.papers), reply.url)
        return FetchResult(
            reply.url,
            "page",
            listing.key,
            page.papers,
            fetched_at,
            reply.headers.get("etag"),
            reply.headers.get("last-modified"),
        )
    if source != "api":
        raise ValueError(f"unknown source {source!r}: use api or page")
    url, params = listing.api_request(base_url)
    if listing.kind == "search":
        reply = client.get(url, params)
        papers = hf_api.parse_daily_papers(reply.body, reply.url)
        return FetchResult(reply.url, "api", listing.key, tuple(papers), fetched_at)
    papers: dict[str, Paper] = {}
    first_url = first_etag = first_modified = None
    for page_number in range(MAX_PAGES):
        paged = {**params, "p": str(page_number), "limit": str(page_size)}
        conditional = page_number == 0
        reply = client.get(
            url,
            paged,
            etag=etag if conditional else None,
            last_modified=last_modified if conditional else None,
        )
        if page_number == 0:
            if reply.not_modified:
                return FetchResult(reply.url, "api", listing.key, (), fetched_at, etag, last_modified, True)
            first_url = reply.url
            first_etag = reply.headers.get("etag")
            first_modified = reply.headers.get("last-modified")
        batch = hf_api.parse_daily_papers(reply.body, reply.url, listing.day)
        new = [p for p in batch if p.id not in papers]
        papers.update((p.id, p) for p in new)
        if len(batch) < page_size or not new:
            break
    else:
        log.warning("%s: stopped after %d pages", first_url, MAX_PAGES)
    result = list(papers.values())
    _check_not_empty(listing, result, first_url or url)
    return FetchResult(
        first_url or url, "api", listing.key, tuple(result), fetched_at, first_etag, first_modified
    )


def fetch_with_fallback(
    client: HttpClient,
    base_url: str,
    listing: Listing,
    *,
    source: str = "api",
    on_failure: Callable[[str, str, SourceError], None] | None = None,
    **options,
) -> FetchResult:
    """Fetch from `source`; when it is the API and it fails, try the page before giving up.

    `on_failure(source, listing_key, error)` is told of every failed attempt, so the
    caller can record it even when the fallback succeeds.
    """
    try:
        return fetch_listing(client, base_url, listing, source, **options)
    except SourceError as error:
        if on_failure:
            on_failure(source, listing.key, error)
        if source != "api":
            raise
        log.warning("the API failed (%s); falling back to the page", error)
        page_options = {k: v for k, v in options.items() if k not in {"etag", "last_modified", "page_size"}}
        try:
            return fetch_listing(client, base_url, listing, "page", **page_options)
        except SourceError as page_error:
            if on_failure:
                on_failure("page", listing.key, page_error)
            raise SourceError(f"both sources failed. API: {error}. Page: {page_error}") from None


def fetch_paper(client: HttpClient, base_url: str, paper_id: str) -> Paper:
    """Refresh one paper from /api/papers/<id>."""
    reply = client.get(f"{base_url}/api/papers/{hf_api.canonical_id(paper_id)}")
    return hf_api.parse_single_paper(reply.body, reply.url)
