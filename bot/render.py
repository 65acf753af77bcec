"""Render a digest: matches -> the subject, HTML and plain text of one subscriber's mail.

`build_digest` ranks a subscriber's matches by score, best first, one paper once (the names
of every watch that matched it are shown as badges), and cuts the list at the subscriber's
`max_papers`, keeping the best; the rest are counted for "and N more". Ranked rather than
grouped by watch because a paper that several watches catch is usually the one most worth
reading: grouping would show it several times or bury it under whichever watch came first,
and the cut would have to pick per group.

`render_digest` fills the templates in `templates/` (Jinja, autoescaped, StrictUndefined:
a title like "<script>" is shown as text, and a missing value is an error, never a blank),
inlines the CSS for mail clients that drop <style>, and keeps the HTML under
`MAX_HTML_BYTES` so Gmail does not clip it, moving papers into "and N more" if need be.

It is fast because most of a digest is shared: a paper shown with the same watches and the
same highlights looks the same in every subscriber's digest. Each such card is rendered
(`card.html.j2`, `card.txt.j2`) and CSS-inlined once, alone in a page with the same style
sheet, and kept (an LRU cache); a digest renders and inlines only its frame
(`digest.html.j2`: header, footer, links) and puts its cards in. The result is the same,
byte for byte, as inlining the whole page (a test checks it on real digests).

Matched words are highlighted in the title (from the match's hits) and in the snippet (HF's
AI summary, else the opening of the abstract), where they are found again with the same
folding as the query language (`bot.words`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

import css_inline
import jinja2

from bot.match import Match
from bot.models import Digest, Paper, Subscriber
from bot.words import normalize, scan

__all__ = [
    "MAX_HTML_BYTES",
    "DigestLinks",
    "PaperCard",
    "RenderedDigest",
    "Segment",
    "build_digest",
    "digest_period",
    "forget_cards",
    "make_environment",
    "paper_card",
    "render_digest",
    "templates_dir",
]

# Gmail clips a message whose HTML passes about 102 KB, hiding the footer (and its
# unsubscribe link) behind "View entire message".
MAX_HTML_BYTES = 100_000
AUTHORS_SHOWN = 3
SNIPPET_CHARS = 300
_TEMPLATES = ("digest.html.j2", "digest.txt.j2", "subject.txt.j2", "card.html.j2", "card.txt.j2")
_CARDS_CACHED = 4096  # distinct cards kept rendered: a few days of papers x their watch combinations
# Where the frame of a digest takes its cards, and the bounds of a card inlined alone: comments,
# which the HTML parser keeps in place inside a table and the serializer writes back unchanged.
_CARDS_HERE = "<!--paperbot:cards-->"
_CARD_START, _CARD_END = "<!--paperbot:card-->", "<!--paperbot:card-end-->"
_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_ARXIV_ID = re.compile(r"^(?:\d{4}\.\d{4,5}|[a-z][a-z.-]*/\d{7})$", re.I)
_SNIPPET_FIELDS = frozenset({"title", "abstract", "keyword"})


@dataclass(frozen=True, slots=True)
class RenderedDigest:
    """What a digest looks like: one header-safe subject line, the HTML and the plain text."""

    subject: str
    html: str
    text: str
    shown: int  # papers shown; the rest of `Digest.total` are "and N more"


@dataclass(frozen=True, slots=True)
class DigestLinks:
    """The links a digest carries (see `bot.message.digest_links`, which signs them)."""

    list_url: str
    unsubscribe_url: str
    manage_url: str


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of text, highlighted or not: templates escape it and wrap marked ones."""

    text: str
    marked: bool = False


@dataclass(frozen=True, slots=True)
class PaperCard:
    """One paper as the templates show it."""

    rank: int
    title: tuple[Segment, ...]
    title_plain: str
    hf_url: str
    arxiv_url: str | None
    pdf_url: str | None
    code_url: str | None
    project_url: str | None
    authors: tuple[Segment, ...]  # "A, B, C et al.", a matched author kept in view
    organization: tuple[Segment, ...]
    stats: tuple[str, ...]  # "87 upvotes", "1,204 GitHub stars", "4 comments"
    watches: tuple[str, ...]
    reasons: tuple[str, ...]  # why now, for rising watches: "crossed 50 upvotes (from 30 to 62)"
    snippet: tuple[Segment, ...]
    snippet_is_summary: bool  # HF's AI summary, rather than the abstract's opening


# -- building a digest -------------------------------------------------------------------------


def _local_day_label(moment: datetime) -> str:
    return f"{_DAY_NAMES[moment.weekday()]} {moment.day} {_MONTH_NAMES[moment.month - 1]} {moment.year}"


def digest_period(subscriber: Subscriber, now: datetime) -> tuple[str, str]:
    """The daily period key and its label on the subscriber's calendar: ("2026-06-12", "Fri 12 Jun 2026")."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    local = now.astimezone(ZoneInfo(subscriber.timezone))
    return local.date().isoformat(), _local_day_label(local)


def _merged(matches: Iterable[Match]) -> list[Match]:
    """One match per paper: the watches, hits and reasons of duplicates joined, the best score kept."""
    by_paper: dict[str, Match] = {}
    for match in matches:
        seen = by_paper.get(match.paper.id)
        if seen is None:
            by_paper[match.paper.id] = match
            continue
        by_paper[match.paper.id] = dataclasses.replace(
            seen,
            watches=tuple(dict.fromkeys(seen.watches + match.watches)),
            score=max(seen.score, match.score),
            hits=tuple(dict.fromkeys(tuple(seen.hits) + tuple(match.hits))),
            reasons=tuple(dict.fromkeys(seen.reasons + match.reasons)),
        )
    return list(by_paper.values())


def build_digest(
    subscriber: Subscriber,
    matches: Iterable[Match],
    *,
    generated_at: datetime,
    links: DigestLinks,
    channel: str = "email",
    period: str | None = None,
    label: str | None = None,
) -> Digest:
    """The digest of `matches` for `subscriber`: ranked by score, one paper once, cut at max_papers.

    The cut keeps the best-scored papers (ties: more upvotes, then the paper id, so the order
    is stable); `Digest.total` counts every paper before it. Matches of other subscribers are
    left out. `period` and `label` default to the subscriber's local day of `generated_at`
    (see `digest_period`); pass them for a weekly digest ("2026-W24", "week of 8 Jun 2026").
    """
    ranked = sorted(
        (m for m in _merged(matches) if m.subscriber_id == subscriber.id),
        key=lambda m: (-m.score, -(m.paper.upvotes or 0), m.paper.id),
    )
    day_key, day_label = digest_period(subscriber, generated_at)
    return Digest(
        subscriber=subscriber,
        channel=channel,
        period=period or day_key,
        label=label or day_label,
        generated_at=generated_at,
        matches=tuple(ranked[: subscriber.max_papers]),
        total=len(ranked),
        list_url=links.list_url,
        unsubscribe_url=links.unsubscribe_url,
        manage_url=links.manage_url,
    )


# -- highlighting ------------------------------------------------------------------------------


def _segments(text: str, spans: Iterable[tuple[int, int]]) -> tuple[Segment, ...]:
    """`text` cut into plain and marked pieces; overlapping spans merge; whitespace runs become one space."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        start, end = max(0, start), min(len(text), end)
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    pieces: list[Segment] = []
    at = 0
    for start, end in merged:
        pieces.append(Segment(text[at:start]))
        pieces.append(Segment(text[start:end], True))
        at = end
    pieces.append(Segment(text[at:]))
    # A title with a line break (or a tab) must stay one line: in the subject above all.
    cleaned = [Segment(re.sub(r"\s+", " ", piece.text), piece.marked) for piece in pieces]
    if cleaned:
        cleaned[0] = Segment(cleaned[0].text.lstrip(), cleaned[0].marked)
        cleaned[-1] = Segment(cleaned[-1].text.rstrip(), cleaned[-1].marked)
    return tuple(piece for piece in cleaned if piece.text)


def _plain(segments: Sequence[Segment]) -> str:
    return "".join(piece.text for piece in segments)


def _patterns(hits: Iterable) -> list[tuple[str, ...] | str]:
    """The query words behind `hits`, to find again in other text: a tuple of folded words, or a prefix*."""
    found: dict[tuple[str, ...] | str, None] = {}
    for hit in hits:
        if hit.field not in _SNIPPET_FIELDS:
            continue
        if hit.term.endswith("*"):
            found[normalize(hit.term[:-1])] = None
        else:
            words = tuple(term for term, _, _, _ in scan(hit.term))
            if words:
                found[words] = None
    return list(found)


def _find_again(text: str, patterns: Sequence[tuple[str, ...] | str]) -> list[tuple[int, int]]:
    """Where the query words are in `text`, folded as the query language folds them."""
    if not patterns:
        return []
    tokens = scan(text)
    spans = []
    for pattern in patterns:
        if isinstance(pattern, str):
            spans.extend(
                (s, e)
                for term, plain, s, e in tokens
                if term.startswith(pattern) or plain.startswith(pattern)
            )
            continue
        width = len(pattern)
        for i in range(len(tokens) - width + 1):
            if all(tokens[i + k][0] == pattern[k] for k in range(width)):
                spans.append((tokens[i][2], tokens[i + width - 1][3]))
    return spans


def _snippet(paper: Paper) -> tuple[str, bool]:
    summary = " ".join((paper.ai_summary or "").split())
    if summary:
        return summary, True
    abstract = " ".join(paper.abstract.split())
    if len(abstract) <= SNIPPET_CHARS:
        return abstract, False
    cut = abstract.rfind(" ", 0, SNIPPET_CHARS)
    return abstract[: cut if cut > 0 else SNIPPET_CHARS].rstrip(" ,;:") + " …", False


def _authors(paper: Paper, hits: Iterable) -> tuple[Segment, ...]:
    """The first few authors, then "et al."; an author a watch matched is shown even past them."""
    names = list(paper.authors)
    if not names:
        return ()
    # Author hits index the authors joined by "; " (bot.query.PaperText.texts["author"]).
    marked: dict[int, list[tuple[int, int]]] = {}
    offset = 0
    bounds = []
    for name in names:
        bounds.append((offset, offset + len(name)))
        offset += len(name) + 2
    for hit in hits:
        if hit.field != "author":
            continue
        for number, (start, end) in enumerate(bounds):
            if start <= hit.start and hit.end <= end:
                marked.setdefault(number, []).append((hit.start - start, hit.end - start))
    shown = list(range(min(len(names), AUTHORS_SHOWN)))
    if len(names) == AUTHORS_SHOWN + 1:
        shown.append(AUTHORS_SHOWN)  # "et al." would hide just one name: show it
    late = [number for number in sorted(marked) if number not in shown]
    pieces: list[Segment] = []
    previous = None
    for number in shown + late:
        if previous is not None:
            pieces.append(Segment(", " if number == previous + 1 else ", … "))
        pieces.extend(_segments(names[number], marked.get(number, ())))
        previous = number
    if len(shown) + len(late) < len(names):
        pieces.append(Segment(" et al."))
    return tuple(pieces)


def _organization(paper: Paper, hits: Iterable) -> tuple[Segment, ...]:
    name = paper.organization_fullname or paper.organization
    if not name:
        return ()
    return _segments(name, [(0, len(name))] if any(hit.field == "org" for hit in hits) else [])


def _web_url(url: str | None) -> str | None:
    """`url` if it is an http(s) link, else None: autoescaping keeps a javascript: URL a working link."""
    return url if url and re.match(r"^https?://[^\s]+$", url, re.I) else None


def _count(number: int | None, one: str, many: str) -> list[str]:
    if number is None:
        return []
    return [f"{number:,} {one if number == 1 else many}"]


def paper_card(match: Match, rank: int) -> PaperCard:
    """How one match is shown: highlighted title and snippet, links, authors, counts, watches."""
    card = _card_of(match.paper, tuple(match.watches), tuple(match.hits), tuple(match.reasons))
    return card if rank == card.rank else dataclasses.replace(card, rank=rank)


@lru_cache(maxsize=_CARDS_CACHED)
def _card_of(paper: Paper, watches: tuple[str, ...], hits: tuple, reasons: tuple[str, ...]) -> PaperCard:
    """The card of rank 0 for a paper, matched by `watches` on `hits`: the same for every subscriber."""
    title = _segments(paper.title, [(h.start, h.end) for h in hits if h.field == "title"])
    snippet_text, is_summary = _snippet(paper)
    snippet = _segments(snippet_text, _find_again(snippet_text, _patterns(hits)))
    on_arxiv = bool(_ARXIV_ID.match(paper.id))
    return PaperCard(
        rank=0,
        title=title,
        title_plain=_plain(title),
        hf_url=paper.hf_url,
        arxiv_url=paper.arxiv_url if on_arxiv else None,
        pdf_url=paper.pdf_url if on_arxiv else None,
        code_url=_web_url(paper.github_repo),
        project_url=_web_url(paper.project_page),
        authors=_authors(paper, hits),
        organization=_organization(paper, hits),
        stats=tuple(
            _count(paper.upvotes, "upvote", "upvotes")
            + _count(paper.github_stars if paper.github_repo else None, "GitHub star", "GitHub stars")
            + _count(paper.num_comments, "comment", "comments")
        ),
        watches=watches,
        reasons=reasons,
        snippet=snippet,
        snippet_is_summary=is_summary,
    )


# -- templates ---------------------------------------------------------------------------------


def templates_dir() -> Path:
    """Where the templates are: `templates/` of a source checkout (also an editable install), else
    the copy that `pip install .` puts in `<prefix>/share/paperbot/templates` (setuptools data-files)."""
    package = Path(__file__).resolve().parent
    checkout = package.parent / "templates"
    if (package.parent / "pyproject.toml").is_file() and (checkout / _TEMPLATES[0]).is_file():
        return checkout
    try:
        files = importlib.metadata.files("paperbot") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == _TEMPLATES[0] and file.parent.name == "templates":
            return Path(str(file.locate())).resolve().parent
    raise RuntimeError(
        f"paperbot's templates are missing: neither {checkout} nor an installed share/paperbot/templates "
        "holds digest.html.j2; reinstall paperbot"
    )


def make_environment(directory: Path | str | None = None) -> jinja2.Environment:
    """The Jinja environment for the digest templates: *.html.j2 autoescaped, every template strict."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory or templates_dir())),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,  # the templates do not change while paperbot runs: no stat() per render
    )


@lru_cache(maxsize=1)
def _default_environment() -> jinja2.Environment:
    return make_environment()


@lru_cache(maxsize=1)
def _inliner() -> css_inline.CSSInliner:
    # @media rules (dark mode, narrow screens) cannot be inlined: they stay in <style> for the
    # clients that read it. Nothing is fetched from the network.
    return css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False, minify_css=True)


def _one_line(text: str) -> str:
    """A header-safe line: every run of whitespace (line breaks too) and control character is one space."""
    return " ".join("".join(" " if ord(c) < 32 or 0x7F <= ord(c) < 0xA0 else c for c in text).split())


def _tidy_text(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


@lru_cache(maxsize=_CARDS_CACHED)
def _card_html(environment: jinja2.Environment, card: PaperCard) -> str:
    """One card's HTML with its CSS inlined: rendered and inlined once, alone in a page with the
    digest's style sheet (no rule of which depends on what is around a card). The HTML shows
    no rank: pass the card of rank 0, which every digest showing it shares."""
    css = environment.get_template("digest.css.j2").render()
    rows = environment.get_template("card.html.j2").render(p=card)
    page = (
        f"<!DOCTYPE html><html><head><style>{css}</style></head><body><table><tbody>"
        f"{_CARD_START}{rows}{_CARD_END}</tbody></table></body></html>"
    )
    inlined = _inliner().inline(page)
    start, end = inlined.index(_CARD_START) + len(_CARD_START), inlined.index(_CARD_END)
    return inlined[start:end]


@lru_cache(maxsize=_CARDS_CACHED)
def _card_text(environment: jinja2.Environment, card: PaperCard) -> str:
    return environment.get_template("card.txt.j2").render(p=card)


def forget_cards() -> None:
    """Drop every card kept rendered (a benchmark of a cold start calls this)."""
    for cache in (_card_of, _card_html, _card_text):
        cache.cache_clear()


def render_digest(digest: Digest, environment: jinja2.Environment | None = None) -> RenderedDigest:
    """The subject, HTML (CSS inlined, under MAX_HTML_BYTES) and plain text of `digest`."""
    environment = environment or _default_environment()
    shared = [paper_card(match, 0) for match in digest.matches]  # cached: one per distinct card
    cards = [dataclasses.replace(card, rank=rank) for rank, card in enumerate(shared, 1)]
    subscriber = digest.subscriber
    schedule = getattr(subscriber.schedule, "text", str(subscriber.schedule))

    def context(shown: int) -> dict:
        return {
            "digest": digest,
            "subscriber": subscriber,
            "schedule": schedule,
            "papers": cards[:shown],
            "shown": shown,
            "total": digest.total,
            "more": digest.total - shown,
            "watch_count": len(subscriber.watches),
            "generated_local": digest.generated_at.astimezone(ZoneInfo(subscriber.timezone)),
        }

    shown = len(cards)
    subject = _one_line(environment.get_template("subject.txt.j2").render(context(shown)))
    frame = environment.get_template("digest.html.j2")
    while True:
        values = context(shown) | {"subject": subject}
        page = _inliner().inline(frame.render(values, cards=_CARDS_HERE))
        parts = page.split(_CARDS_HERE)
        if len(parts) != 2:
            raise RuntimeError(f"digest.html.j2 must place {{{{ cards | safe }}}} once ({digest.period})")
        html = parts[0] + "".join(_card_html(environment, card) for card in shared[:shown]) + parts[1]
        html = html.rstrip() + "\n"
        size = len(html.encode("utf-8"))
        if size <= MAX_HTML_BYTES or shown == 0:
            break
        # Too big for Gmail: drop the lowest-ranked papers into "and N more" and try again.
        shown = max(0, min(shown - 1, shown * MAX_HTML_BYTES // size))
    cards_text = "".join(_card_text(environment, card) for card in cards[:shown])
    text = _tidy_text(environment.get_template("digest.txt.j2").render(values, cards=cards_text))
    return RenderedDigest(subject=subject, html=html, text=text, shown=shown)
