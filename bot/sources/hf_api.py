"""Hugging Face's JSON API: /api/daily_papers, /api/papers/search and /api/papers/<id>.

Pure parsing of response bodies into `Paper` values; fetching lives in `bot.transport`
and the listing logic in `bot.fetch`. Every way a body can be unreadable ends in a
`SourceError` that says what was missing, never in a KeyError or an empty list.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime

from bot.errors import SourceError
from bot.models import Paper

__all__ = [
    "canonical_id",
    "load_json",
    "normalize_space",
    "parse_daily_papers",
    "parse_item",
    "parse_items",
    "parse_paper",
    "parse_single_paper",
    "parse_time",
]

_VERSION = re.compile(r"v\d+$")
_SPACE = re.compile(r"\s+")


def canonical_id(raw: object) -> str:
    """The arXiv id without prefix or version: "arXiv:2407.21783v2" -> "2407.21783"."""
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"not a paper id: {raw!r}")
    text = raw.strip()
    if text.lower().startswith("arxiv:"):
        text = text[6:]
    return _VERSION.sub("", text)


def normalize_space(text: object) -> str:
    """Collapse the line breaks and runs of spaces that arXiv text carries."""
    if not isinstance(text, str):
        return ""
    return _SPACE.sub(" ", text).strip()


def parse_time(value: object) -> datetime | None:
    """An ISO time such as "2026-05-29T20:00:00.000Z" as aware UTC, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _str(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _names(values: object) -> tuple[str, ...]:
    if not isinstance(values, list):
        return ()
    names = []
    for value in values:
        name = value.get("name") if isinstance(value, dict) else value
        name = normalize_space(name)
        if name:
            names.append(name)
    return tuple(names)


def _keywords(values: object) -> tuple[str, ...]:
    if not isinstance(values, list):
        return ()
    return tuple(k for k in (normalize_space(v) for v in values) if k)


def parse_paper(paper: dict, item: dict | None = None, day: date | None = None) -> Paper:
    """One paper object (as /api/papers/<id> serves it), with its listing item if any.

    Raises ValueError naming what is missing; callers turn it into a SourceError.
    """
    item = item or {}
    if not isinstance(paper, dict):
        raise ValueError("the item has no 'paper' object")
    try:
        paper_id = canonical_id(paper.get("id"))
    except ValueError:
        raise ValueError("the paper has no id") from None
    title = normalize_space(paper.get("title")) or normalize_space(item.get("title"))
    if not title:
        raise ValueError(f"paper {paper_id} has no title")
    org = paper.get("organization") or item.get("organization")
    org = org if isinstance(org, dict) else {}
    featured = parse_time(paper.get("submittedOnDailyAt"))
    return Paper(
        id=paper_id,
        title=title,
        abstract=normalize_space(paper.get("summary")) or normalize_space(item.get("summary")),
        authors=_names(paper.get("authors")),
        published_at=parse_time(paper.get("publishedAt")) or parse_time(item.get("publishedAt")),
        featured_on=featured.date() if featured else day,
        upvotes=_int(paper.get("upvotes")),
        num_comments=_int(item.get("numComments")),
        github_repo=_str(paper.get("githubRepo")),
        github_stars=_int(paper.get("githubStars")),
        project_page=_str(paper.get("projectPage")),
        ai_summary=normalize_space(paper.get("ai_summary")) or None,
        ai_keywords=_keywords(paper.get("ai_keywords")),
        organization=_str(org.get("name")),
        organization_fullname=_str(org.get("fullname")),
        thumbnail=_str(item.get("thumbnail")),
    )


def parse_item(item: object, day: date | None = None) -> Paper:
    """One listing item: {"paper": {...}, "numComments": .., "thumbnail": ..} or a bare paper."""
    if not isinstance(item, dict):
        raise ValueError(f"an item is a {type(item).__name__}, not an object")
    if "paper" in item:
        return parse_paper(item["paper"], item, day)
    return parse_paper(item, None, day)


def load_json(body: bytes | str, url: str | None = None) -> object:
    """Decode a JSON body; a cut-off or non-JSON body is a SourceError saying where it broke."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        size = len(body)
        raise SourceError(
            f"the response is not complete JSON ({error}; {size} bytes): the body was cut "
            "short or the API changed",
            url,
        ) from None
    except RecursionError:
        raise SourceError("the response nests too deeply to be papers", url) from None


def parse_items(items: object, url: str | None = None, day: date | None = None) -> list[Paper]:
    """A list of listing items; any item without id or title fails the whole list."""
    if not isinstance(items, list):
        kind = type(items).__name__
        raise SourceError(f"expected a JSON array of papers, got a {kind}: the API changed", url)
    papers: list[Paper] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        try:
            paper = parse_item(item, day)
        except ValueError as error:
            raise SourceError(f"item {index}: {error}", url) from None
        if paper.id not in seen:
            seen.add(paper.id)
            papers.append(paper)
    return papers


def parse_daily_papers(body: bytes | str, url: str | None = None, day: date | None = None) -> list[Paper]:
    """The body of /api/daily_papers or /api/papers/search: a JSON array of items.

    `day` is the requested day, used when an item does not say when it was featured.
    An empty array is a valid answer (a weekend); the caller decides if it is suspicious.
    """
    return parse_items(load_json(body, url), url, day)


def parse_single_paper(body: bytes | str, url: str | None = None) -> Paper:
    """The body of /api/papers/<id>: one paper object."""
    data = load_json(body, url)
    try:
        return parse_item(data)
    except ValueError as error:
        raise SourceError(str(error), url) from None
