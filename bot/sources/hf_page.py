"""Hugging Face's papers pages (/papers/date/<d>, /papers/trending, /papers?q=...), read with bs4.

A page carries its papers twice: as JSON in the `data-props` of the `DailyPapers`
hydrater, which holds the same items as the API, and as DOM cards (`article` with an
`h3 > a[href^="/papers/"]` title and an upvote count). The props are read first; the
cards when the props are missing. A page with neither is a changed layout, and says so.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date

from bs4 import BeautifulSoup

from bot.errors import SourceError
from bot.models import Paper
from bot.sources.hf_api import canonical_id, normalize_space, parse_items, parse_time

__all__ = ["PageListing", "parse_page", "parse_page_cards", "parse_page_props"]

_PAPER_HREF = re.compile(r"^/papers/([^/?#]+)$")
_NUMBER = re.compile(r"^\d[\d,]*$")


@dataclass(frozen=True, slots=True)
class PageListing:
    """The papers of one page, and how they were read from it."""

    papers: tuple[Paper, ...]
    method: str  # "props" or "cards"
    day: date | None  # the day the page lists, when it says


def _soup(body: bytes | str) -> BeautifulSoup:
    # html.parser is in the standard library and tolerant enough for these pages; lxml
    # would be faster, but one page a poll does not need it.
    return BeautifulSoup(body, "html.parser")


def _check_complete(body: bytes | str, url: str | None) -> None:
    tail = body[-2048:]
    tail = tail.decode("utf-8", "replace") if isinstance(tail, bytes) else tail
    if "</html>" not in tail.lower():
        raise SourceError("the page ends before </html>: the body was cut short", url)


def _props(soup: BeautifulSoup, url: str | None) -> dict | None:
    node = soup.select_one('[data-target="DailyPapers"][data-props]')
    if node is None:
        return None
    try:
        props = json.loads(node["data-props"])
    except (json.JSONDecodeError, RecursionError):
        raise SourceError("the DailyPapers data-props is not valid JSON", url) from None
    if not isinstance(props, dict):
        raise SourceError("the DailyPapers data-props is not a JSON object", url)
    return props


def _props_day(props: dict) -> date | None:
    for key in ("date", "dateString"):
        when = parse_time(props.get(key))
        if when:
            return when.date()
        value = props.get(key)
        if isinstance(value, str):
            try:
                return date.fromisoformat(value[:10])
            except ValueError:
                pass
    return None


def parse_page_props(
    body: bytes | str, url: str | None = None, day: date | None = None
) -> list[Paper] | None:
    """Papers from the hydrater's embedded JSON, or None when the page has no such JSON."""
    props = _props(_soup(body), url)
    if props is None:
        return None
    return _papers_from_props(props, url, day)


def _papers_from_props(props: dict, url: str | None, day: date | None) -> list[Paper]:
    if "dailyPapers" not in props:
        raise SourceError("the DailyPapers data-props has no 'dailyPapers' list", url)
    return parse_items(props["dailyPapers"], url, _props_day(props) or day)


def _card_count(article, selector: str) -> int | None:
    for node in article.select(selector):
        text = node.get_text(strip=True)
        if _NUMBER.match(text):
            return int(text.replace(",", ""))
    return None


def _cards(soup: BeautifulSoup, url: str | None, day: date | None) -> list[Paper]:
    papers: list[Paper] = []
    seen: set[str] = set()
    for index, article in enumerate(soup.find_all("article")):
        link = article.select_one('h3 a[href^="/papers/"]')
        if link is None:
            continue
        match = _PAPER_HREF.match(link.get("href", ""))
        title = normalize_space(link.get_text(" "))
        if not match or not title:
            raise SourceError(f"card {index} has a paper link without an id or a title", url)
        paper_id = canonical_id(match.group(1))
        if paper_id in seen:
            continue
        seen.add(paper_id)
        thumb = article.select_one("img[src*='thumbnails']")
        papers.append(
            Paper(
                id=paper_id,
                title=title,
                featured_on=day,
                # The upvote box is the number in a .leading-none element of the card.
                upvotes=_card_count(article, ".leading-none"),
                num_comments=_card_count(article, 'a[href$="#community"]'),
                thumbnail=thumb.get("src") if thumb else None,
            )
        )
    return papers


def parse_page_cards(body: bytes | str, url: str | None = None, day: date | None = None) -> list[Paper]:
    """Papers from the DOM cards alone (title, id, upvotes, comments, thumbnail)."""
    return _cards(_soup(body), url, day)


def parse_page(body: bytes | str, url: str | None = None, day: date | None = None) -> PageListing:
    """Read a papers page: the embedded JSON first, the cards when it is missing.

    Raises SourceError for a cut-off body or a page with neither (a changed layout).
    A page whose JSON lists no papers is a valid empty day.
    """
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise SourceError("the page is not UTF-8 text", url) from None
    _check_complete(body, url)
    soup = _soup(body)
    props = _props(soup, url)
    if props is not None:
        return PageListing(tuple(_papers_from_props(props, url, day)), "props", _props_day(props) or day)
    papers = _cards(soup, url, day)
    if not papers:
        raise SourceError(
            "the page has neither the DailyPapers data-props nor paper cards: "
            "the layout changed; use --source api or report it",
            url,
        )
    return PageListing(tuple(papers), "cards", day)
