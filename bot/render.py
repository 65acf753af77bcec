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
(`card.html.j2`, `card.txt.j2`) and CSS-inlined once, in a page with the same style sheet
(many cards at once when a run prepares them), and kept (an LRU cache); a digest renders only its
frame (`digest.html.j2`: header, footer, links), fills its values into the frame's layout,
inlined once, and puts its cards in. The result is the same, byte for byte, as inlining the
whole page (a test checks it on real digests). What recurs within cards (a highlighted
title, snippet or author list, a snippet's wrapping) is also worked out once.

Matched words are highlighted in the title (from the match's hits) and in the snippet (HF's
AI summary, else the opening of the abstract), where they are found again with the same
folding as the query language (`bot.words`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import operator
import re
import secrets
import textwrap
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from itertools import accumulate
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

import css_inline
import jinja2
from markupsafe import Markup, escape

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
    "card_key",
    "digest_period",
    "forget_cards",
    "keep_cards",
    "made_cards",
    "make_environment",
    "paper_card",
    "prepare_cards",
    "render_digest",
    "templates_dir",
]

# Gmail clips a message whose HTML passes about 102 KB, hiding the footer (and its
# unsubscribe link) behind "View entire message": the HTML as sent (UTF-8, CRLF line ends)
# is kept under this.
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
    """What a digest looks like: one header-safe subject line, the HTML and the plain text.

    The HTML and the text are kept in pieces, (piece, shared): a shared one is the very string
    every digest showing that card (or frame) holds, which bot.message encodes once."""

    subject: str
    shown: int  # papers shown; the rest of `Digest.total` are "and N more"
    html_parts: tuple[tuple[str, bool], ...]
    text_parts: tuple[tuple[str, bool], ...]

    @property
    def html(self) -> str:
        return "".join([piece for piece, _ in self.html_parts])

    @property
    def text(self) -> str:
        return "".join([piece for piece, _ in self.text_parts])


@dataclass(frozen=True, slots=True)
class DigestLinks:
    """The links a digest carries (see `bot.message.digest_links`, which signs them)."""

    list_url: str
    unsubscribe_url: str
    manage_url: str


class Segment(NamedTuple):
    """A piece of text, highlighted or not: templates escape it and wrap marked ones. A named
    tuple, as bot.query.Hit is: cards are hashed by their segments, many times a run."""

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


# Every field of a card but its rank, which comes first.
_AFTER_RANK = operator.attrgetter(*[each.name for each in dataclasses.fields(PaperCard)][1:])


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
    return _segments_of(text, tuple(sorted(spans)))


_SPACES = re.compile(r"\s+")
_UNTIDY_SPACE = re.compile(r"[^\S ]|  ")  # any whitespace but a space, or two spaces in a row


@lru_cache(maxsize=_CARDS_CACHED * 4)  # titles, names and snippets recur in many cards
def _segments_of(text: str, spans: tuple[tuple[int, int], ...]) -> tuple[Segment, ...]:
    merged: list[list[int]] = []
    for start, end in spans:
        start, end = max(0, start), min(len(text), end)
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    pieces: list[str] = []
    at = 0
    for start, end in merged:
        pieces += (text[at:start], text[start:end])
        at = end
    pieces.append(text[at:])
    # A title with a line break (or a tab) must stay one line: in the subject above all.
    if _UNTIDY_SPACE.search(text):
        pieces = [_SPACES.sub(" ", piece) for piece in pieces]
    pieces[0] = pieces[0].lstrip()
    pieces[-1] = pieces[-1].rstrip()
    # Marked and plain pieces alternate, from a plain one.
    return tuple(Segment(piece, number % 2 == 1) for number, piece in enumerate(pieces) if piece)


def _plain(segments: Sequence[Segment]) -> str:
    return "".join(piece.text for piece in segments)


def _patterns(hits: Iterable) -> list[tuple[str, ...] | str]:
    """The query words behind `hits`, to find again in other text: a tuple of folded words, or a prefix*."""
    found: dict[tuple[str, ...] | str, None] = {}
    for hit in hits:
        if hit.field not in _SNIPPET_FIELDS:
            continue
        pattern = _pattern(hit.term)
        if pattern:
            found[pattern] = None
    return list(found)


@lru_cache(maxsize=_CARDS_CACHED)
def _pattern(term: str) -> tuple[str, ...] | str:
    if term.endswith("*"):
        return normalize(term[:-1])
    return tuple(word for word, _, _, _ in scan(term))


def _find_again(text: str, patterns: Sequence[tuple[str, ...] | str]) -> list[tuple[int, int]]:
    """Where the query words are in `text`, folded as the query language folds them."""
    if not patterns:
        return []
    tokens, terms = _scanned(text)
    spans = []
    for pattern in patterns:
        if isinstance(pattern, str):
            spans.extend(
                (s, e)
                for term, plain, s, e in tokens
                if term.startswith(pattern) or plain.startswith(pattern)
            )
            continue
        width, first = len(pattern), pattern[0]
        last_start = len(terms) - width
        at = -1
        while True:
            try:
                at = terms.index(first, at + 1, last_start + 1)
            except ValueError:
                break
            if width == 1 or terms[at : at + width] == list(pattern):
                spans.append((tokens[at][2], tokens[at + width - 1][3]))
    return spans


@lru_cache(maxsize=_CARDS_CACHED)
def _scanned(text: str) -> tuple[list, list[str]]:
    """The words of a snippet (bot.words.scan) and their folded terms, once per snippet however
    many cards show it."""
    tokens = scan(text)
    return tokens, [token[0] for token in tokens]


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
    spans = tuple(sorted((hit.start, hit.end) for hit in hits if hit.field == "author"))
    return _authors_marked(paper.authors, spans)


@lru_cache(maxsize=_CARDS_CACHED)
def _authors_marked(authors: tuple[str, ...], spans: tuple[tuple[int, int], ...]) -> tuple[Segment, ...]:
    if not authors:
        return ()
    marked: dict[int, list[tuple[int, int]]] = {}
    starts = _author_starts(authors)
    for hit_start, hit_end in spans:
        number = bisect_right(starts, hit_start) - 1  # the one name that can hold the hit
        if number >= 0 and hit_end <= starts[number] + len(authors[number]):
            start = starts[number]
            marked.setdefault(number, []).append((hit_start - start, hit_end - start))
    shown = list(range(min(len(authors), AUTHORS_SHOWN)))
    if len(authors) == AUTHORS_SHOWN + 1:
        shown.append(AUTHORS_SHOWN)  # "et al." would hide just one name: show it
    late = [number for number in sorted(marked) if number not in shown]
    pieces: list[Segment] = []
    previous = None
    for number in shown + late:
        if previous is not None:
            pieces.append(Segment(", " if number == previous + 1 else ", … "))
        pieces.extend(_segments(authors[number], marked.get(number, ())))
        previous = number
    if len(shown) + len(late) < len(authors):
        pieces.append(Segment(" et al."))
    return tuple(pieces)


@lru_cache(maxsize=_CARDS_CACHED)
def _author_starts(authors: tuple[str, ...]) -> tuple[int, ...]:
    """Where each name starts in the authors joined by "; ", which author hits index
    (bot.query.PaperText.texts["author"]): once per paper, however many cards show it."""
    return tuple(accumulate((len(name) + 2 for name in authors[:-1]), initial=0))


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
    card = _card_of(*card_key(match))
    return card if rank == card.rank else dataclasses.replace(card, rank=rank)


@lru_cache(maxsize=_CARDS_CACHED)
def _card_of(paper: Paper, watches: tuple[str, ...], hits: tuple, reasons: tuple[str, ...]) -> PaperCard:
    """The card of rank 0 for a paper, matched by `watches` on `hits`: the same for every subscriber."""
    facts = _facts(paper)
    title = _segments(paper.title, [(h.start, h.end) for h in hits if h.field == "title"])
    snippet = _snippet_marked(facts.snippet, tuple(_patterns(hits)))
    return PaperCard(
        rank=0,
        title=title,
        title_plain=_plain(title),
        hf_url=paper.hf_url,
        arxiv_url=facts.arxiv_url,
        pdf_url=facts.pdf_url,
        code_url=facts.code_url,
        project_url=facts.project_url,
        authors=_authors(paper, hits),
        organization=_organization(paper, hits),
        stats=facts.stats,
        watches=watches,
        reasons=reasons,
        snippet=snippet,
        snippet_is_summary=facts.snippet_is_summary,
    )


@lru_cache(maxsize=_CARDS_CACHED)  # cards of one paper often look for the same words in it
def _snippet_marked(snippet: str, patterns: tuple) -> tuple[Segment, ...]:
    return _segments(snippet, _find_again(snippet, patterns))


@dataclass(frozen=True, slots=True)
class _Facts:
    """What a paper's cards show of it whatever matched it: worked out once for all its cards."""

    snippet: str
    snippet_is_summary: bool
    arxiv_url: str | None
    pdf_url: str | None
    code_url: str | None
    project_url: str | None
    stats: tuple[str, ...]


@lru_cache(maxsize=_CARDS_CACHED)
def _facts(paper: Paper) -> _Facts:
    snippet, is_summary = _snippet(paper)
    on_arxiv = bool(_ARXIV_ID.match(paper.id))
    return _Facts(
        snippet,
        is_summary,
        paper.arxiv_url if on_arxiv else None,
        paper.pdf_url if on_arxiv else None,
        _web_url(paper.github_repo),
        _web_url(paper.project_page),
        tuple(
            _count(paper.upvotes, "upvote", "upvotes")
            + _count(paper.github_stars if paper.github_repo else None, "GitHub star", "GitHub stars")
            + _count(paper.num_comments, "comment", "comments")
        ),
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
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory or templates_dir())),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,  # the templates do not change while paperbot runs: no stat() per render
        cache_size=-1,  # a few templates, each kept: a dict, not an LRU that takes a lock per lookup
    )
    environment.filters["wordwrap"] = _wordwrap
    environment.filters["marked"] = _marked
    return environment


@jinja2.pass_eval_context
def _marked(context: jinja2.nodes.EvalContext, segments: Iterable[Segment]) -> str:
    """`{{ p.title | marked }}`: a card's text (title, authors, organization, snippet) with the
    watches' words marked: `<mark class="hl">` in HTML (the text escaped, the style sheet's
    `.hl` gives the look), `*word*` in plain text. A filter, not a template macro: a run marks
    thousands of texts, and a macro call costs Jinja several times as much."""
    if not isinstance(segments, tuple):  # the cards' texts are; anything else is marked as it comes
        segments = tuple(segments)
    return _marked_html(segments) if context.autoescape else _marked_text(segments)


# A card's title, authors and snippet recur in many cards (the same highlights, other watches):
# each is marked once.
@lru_cache(maxsize=_CARDS_CACHED)
def _marked_html(segments: tuple[Segment, ...]) -> Markup:
    return Markup("".join([_MARK % escape(s.text) if s.marked else escape(s.text) for s in segments]))


@lru_cache(maxsize=_CARDS_CACHED)
def _marked_text(segments: tuple[Segment, ...]) -> str:
    return "".join([f"*{s.text}*" if s.marked else s.text for s in segments])


_MARK = Markup('<mark class="hl">%s</mark>')


@jinja2.pass_environment
def _wordwrap(
    environment: jinja2.Environment,
    s: str,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    """Jinja's wordwrap, to the character; but a paragraph of words between single spaces, as
    card.txt.j2 wraps a snippet (no word broken, nor at its hyphens), is wrapped here rather than
    by textwrap, which took a third of the time of a text card."""
    if break_long_words or break_on_hyphens or width.__class__ is not int or width <= 0:
        wrap = jinja2.filters.do_wordwrap
        return wrap(environment, s, width, break_long_words, wrapstring, break_on_hyphens)
    wrapstring = environment.newline_sequence if wrapstring is None else wrapstring
    return wrapstring.join([wrapstring.join(_wrapped(line, width)) for line in s.splitlines()])


@lru_cache(maxsize=_CARDS_CACHED)  # a snippet recurs in many cards (other watches, other highlights)
def _wrapped(line: str, width: int) -> tuple[str, ...]:
    """textwrap.wrap(line, width, expand_tabs=False, replace_whitespace=False,
    break_long_words=False, break_on_hyphens=False), as a tuple."""
    if not line or line[0] == " " or line[-1] == " " or "  " in line or not line.isprintable():
        return tuple(  # runs of spaces, other whitespace: textwrap's way
            textwrap.wrap(
                line,
                width=width,
                expand_tabs=False,
                replace_whitespace=False,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return tuple(_line_of(width).findall(line))


@lru_cache(maxsize=8)
def _line_of(width: int) -> re.Pattern:
    """A wrapped line of words between single spaces: from a word, the most that fits before a
    space or the end; else (a word longer than the width) that word alone. A quarter of the
    time of a loop over the words."""
    return re.compile(f"[^ ](?:.{{0,{width - 1}}}(?= |$)|[^ ]*)")


def _rendered(template: jinja2.Template, values: dict, **more) -> str:
    """template.render(values, **more), the same text, errors and tracebacks; less the merging
    of the template's globals into each render's context, which Jinja does anew each time from
    a ChainMap walked key by key (a fifth of rendering a card): here from a dict made once per
    template. So globals set on an environment after its templates rendered are not seen (Jinja
    advises against it; paperbot's environments set none)."""
    environment = template.environment
    if environment.is_async:  # its root render function is a coroutine's: Jinja's own way
        return template.render(values, **more)
    globals_ = _globals_of(template)
    context = jinja2.runtime.new_context(
        environment, template.name, template.blocks, {**globals_, **values, **more}, True, globals_
    )
    try:
        return environment.concat(template.root_render_func(context))
    except Exception:
        environment.handle_exception()  # raises, with the template's lines in the traceback
        raise  # not reached


@lru_cache(maxsize=64)
def _globals_of(template: jinja2.Template) -> dict:
    return dict(template.globals)


@lru_cache(maxsize=1)
def _default_environment() -> jinja2.Environment:
    return make_environment()


@lru_cache(maxsize=8)
def _recording_environment(environment: jinja2.Environment) -> jinja2.Environment:
    """`environment` whose printed values pass through _finalize, so that a frame's skeleton can
    be made (see _frame_parts): only the frame's template, as a finalize is a call for every
    value every template prints."""
    recording = environment.overlay(finalize=_finalize)
    recording.template_class = _unrecorded_modules(environment.template_class)
    return recording


@lru_cache(maxsize=8)
def _unrecorded_modules(template_class: type[jinja2.Template]) -> type[jinja2.Template]:
    """The recording environment's template class: the environment's own (a custom one kept),
    making its modules with nothing recorded (_UnrecordedModules)."""
    return type(template_class.__name__, (_UnrecordedModules, template_class), {})


class _UnrecordedModules:
    """Makes a template's module (what `{% include ... without context %}` prints, as
    digest.html.j2 includes its style sheet: made once and kept by Jinja) with nothing recorded:
    else a value it prints would be kept as a frame's hole."""

    def make_module(self, vars=None, shared=False, locals=None):
        with _recording_into(None):
            return super().make_module(vars, shared, locals)  # type: ignore[misc]

    async def make_module_async(self, vars=None, shared=False, locals=None):  # an async environment's
        with _recording_into(None):
            return await super().make_module_async(vars, shared, locals)  # type: ignore[misc]


@contextmanager
def _recording_into(values: list | None) -> Iterator[None]:
    """While the block runs, _finalize records what the frame prints into `values` (None: nothing)."""
    token = _recording.set(values)
    try:
        yield
    finally:
        _recording.reset(token)


@lru_cache(maxsize=1)
def _inliner() -> css_inline.CSSInliner:
    # @media rules (dark mode, narrow screens) cannot be inlined: they stay in <style> for the
    # clients that read it. Nothing is fetched from the network.
    return css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False, minify_css=True)


_CONTROLS_TO_SPACES = {code: " " for code in (*range(32), *range(0x7F, 0xA0))}


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _one_line(text: str) -> str:
    """A header-safe line: every run of whitespace (line breaks too) and control character is one space."""
    core = text.strip()  # first: else the line break ending every subject would need translating
    if _CONTROL.search(core) is None:
        return " ".join(core.split())
    return " ".join(text.translate(_CONTROLS_TO_SPACES).split())


def _tidy_text(text: str) -> str:
    """No trailing spaces, no more than one blank line in a row, none at the start or end."""
    return _tidy_lines([line.rstrip() for line in text.splitlines()])


def _tidy_lines(lines: list[str]) -> str:
    """_tidy_text of lines already split and stripped on the right."""
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n\n", "\n\n").replace("\n\n\n", "\n\n")
    return text.strip("\n") + "\n"


@dataclass(frozen=True, slots=True)
class _Tidied:
    """Whole lines of a digest's text as _tidy_text leaves them: from the first line that holds
    anything to the last (`core`, "" if none does), and whether blank lines came before and
    after it. Tidying a text made of such stretches is tidying each (see _joined_units)."""

    before: bool
    core: str
    after: bool


def _tidied(text: str) -> _Tidied:
    lines = [line.rstrip() for line in text.splitlines()]
    if not any(lines):
        return _Tidied(bool(lines), "", bool(lines))
    return _Tidied(not lines[0], _tidy_lines(lines), not lines[-1])


# The text before the cards: the digest's day, count and how many are shown, which many share.
_tidied_head = lru_cache(maxsize=256)(_tidied)


# -- cards: rendered once, shared by every digest that shows them -------------------------------


@dataclass(frozen=True, slots=True)
class _CardParts:
    """A card as every digest showing it shares it: its HTML (CSS inlined), and its text cut
    after the line(s) that hold its rank (`_RANK` there until a digest puts its number in)."""

    card: PaperCard  # of rank 0
    html: str
    html_size: int  # bytes as the mail carries it: UTF-8, CRLF line ends
    text: str  # as card.txt.j2 renders it
    text_ranked: _Tidied  # from the start to the end of the last line holding the rank
    text_rest: _Tidied
    text_whole: bool  # the text ends its last line: digests join it tidied (else tidy it whole)
    joined: dict[int, tuple] = field(default_factory=dict, compare=False, repr=False)  # see unit

    def unit(self, rank: int) -> tuple:
        """The card's text at `rank` as a digest's tidied text holds it, worked out once per rank
        (see _joined_units): (whether a blank line comes before it; its first shared piece, that
        piece after a blank line, its other pieces; whether a blank line comes after it). The
        first piece is None when the card's text is blank: its blank lines join those around.
        Each piece is the very string in every digest that shows the card at that rank, so that
        the mail encodes it once (see bot.message._add_text_part)."""
        made = self.joined.get(rank)
        if made is None:
            cores: list[str] = []
            before = blank = False
            for stretch in (_numbered(self.text_ranked, rank), self.text_rest):
                if cores:
                    blank = blank or stretch.before
                else:
                    before = before or stretch.before
                if stretch.core:
                    cores.append(("\n" if cores and blank else "") + stretch.core)
                    blank = stretch.after
            if cores:
                rest = tuple((core, True) for core in cores[1:])
                made = (before, (cores[0], True), ("\n" + cores[0], True), rest, blank)
            else:
                made = (before, None, None, (), False)
            self.joined[rank] = made
        return made


class _RankMark(int):
    """The rank a shared card's text is rendered with: printed as `_RANK`, replaced per digest."""

    def __str__(self) -> str:
        return _RANK


# Unguessable, so no paper, name or watch can hold it (a title holding it would be renumbered).
_RANK = f"\ue002{secrets.token_hex(8)}\ue002"


CardKey = tuple[Paper, tuple[str, ...], tuple, tuple[str, ...]]
"""What a match's card is made of: its paper, watches, hits and reasons (see card_key)."""


def card_key(match: Match) -> CardKey:
    """What `match`'s card is made of: matches with equal keys (of different subscribers) share a card."""
    return match.paper, tuple(match.watches), tuple(match.hits), tuple(match.reasons)


@lru_cache(maxsize=_CARDS_CACHED)
def _card_parts(
    environment: jinja2.Environment, paper: Paper, watches: tuple[str, ...], hits: tuple, reasons: tuple
) -> _CardParts:
    kept = _KEPT.get((environment, paper, watches, hits, reasons))
    if kept is not None:  # made by another process (keep_cards)
        return kept
    # Matches of different watches often look the same (the words they found are not in view):
    # one rendering per card as shown.
    return _rendered_card(environment, _card_of(paper, watches, hits, reasons))


@lru_cache(maxsize=_CARDS_CACHED)
def _rendered_card(environment: jinja2.Environment, card: PaperCard) -> _CardParts:
    numbered = PaperCard(_RankMark(0), *_AFTER_RANK(card))  # dataclasses.replace, but a third of the time
    text = _rendered(environment.get_template("card.txt.j2"), {"p": numbered})
    at = text.rfind(_RANK)
    cut = 0 if at < 0 else (text.find("\n", at) + 1 or len(text))
    html = _card_html(environment, card)
    return _CardParts(
        card,
        html,
        _html_size(html),
        text,
        _tidied(text[:cut]),
        _tidied(text[cut:]),
        not text or text.endswith("\n"),
    )


def _html_size(text: str) -> int:
    """The size of `text` as the mail program decodes it: UTF-8, each line ending in CRLF."""
    return (len(text) if text.isascii() else len(text.encode("utf-8"))) + text.count("\n")


# The shared lines of frames (the page's head, its style sheet) are the same strings in every
# digest of a layout: each measured once.
_layout_size = lru_cache(maxsize=1024)(_html_size)


def _card_html(environment: jinja2.Environment, card: PaperCard) -> str:
    """One card's HTML with its CSS inlined: rendered and inlined once, in a page with the
    digest's style sheet (no rule of which depends on what is around a card), alone or with
    the other cards `prepare_cards` makes at once. The HTML shows no rank: pass the card of
    rank 0, which every digest showing it shares."""
    made = _PREPARED.get((environment, card))
    return made if made is not None else _inlined_cards(environment, [card])[0]


def _inlined_cards(environment: jinja2.Environment, cards: Sequence[PaperCard]) -> list[str]:
    css = environment.get_template("digest.css.j2").render()
    template = environment.get_template("card.html.j2")
    rows = "".join(f"{_CARD_START}{_rendered(template, {'p': card})}{_CARD_END}" for card in cards)
    # In a whole page, as in a digest: a rule on body or html applies to cards too (inline_fragment,
    # a tenth quicker, would leave it out).
    page = (
        f"<!DOCTYPE html><html><head><style>{css}</style></head><body>"
        f"<table><tbody>{rows}</tbody></table></body></html>"
    )
    inlined = _inliner().inline(page)
    made = [piece.split(_CARD_END, 1)[0] for piece in inlined.split(_CARD_START)[1:]]
    if len(made) != len(cards):
        raise RuntimeError("card.html.j2 must make table rows: its cards could not be found again")
    return made


_PREPARED: dict[tuple[jinja2.Environment, PaperCard], str] = {}
_PREPARED_KEPT = 4 * _CARDS_CACHED
_PREPARE_AT_ONCE = 200  # cards inlined in one page: most of the gain, a page of a few MB


def prepare_cards(matches: Iterable[Match], environment: jinja2.Environment | None = None) -> int:
    """Render and CSS-inline at once the cards of `matches` not made yet, for the digests about
    to be rendered (a run knows them all): inlining many cards in one page costs a third of
    inlining each alone. Optional: render_digest makes any card it lacks. Returns how many."""
    return _prepare(dict.fromkeys(map(card_key, matches)), environment or _default_environment())


def _prepare(keys: Iterable[CardKey], environment: jinja2.Environment) -> int:
    wanted = {}
    for key in keys:
        if (environment, *key) in _KEPT:
            continue
        card = _card_of(*key)
        if (environment, card) not in _PREPARED:
            wanted[card] = None
    if len(_PREPARED) + len(wanted) > _PREPARED_KEPT:
        _PREPARED.clear()  # the cards of earlier runs: those still shown are in _rendered_card's cache
    cards = list(wanted)[:_PREPARED_KEPT]
    for start in range(0, len(cards), _PREPARE_AT_ONCE):
        chunk = cards[start : start + _PREPARE_AT_ONCE]
        for card, html in zip(chunk, _inlined_cards(environment, chunk), strict=True):
            _PREPARED[(environment, card)] = html
    return len(cards)


def made_cards(
    keys: Sequence[CardKey], environment: jinja2.Environment | None = None
) -> list[_CardParts | None]:
    """The cards of `keys`, made (as prepare_cards does) to hand to another process that renders
    digests showing them: it takes them with keep_cards, and so need not make them itself. None
    for a card that cannot be made: a digest showing it says why when it is rendered."""
    environment = environment or _default_environment()
    _prepare(keys, environment)
    made: list[_CardParts | None] = []
    for key in keys:
        try:
            made.append(_card_parts(environment, *key))
        except Exception:  # the digest's own rendering meets it again, and reports it there
            made.append(None)
    return made


def keep_cards(
    keys: Sequence[CardKey], cards: Sequence[_CardParts | None], environment: jinja2.Environment | None = None
) -> None:
    """Take the cards of `keys` that another process made (made_cards): render_digest uses them
    instead of making them again."""
    if len(keys) != len(cards):
        raise ValueError(f"{len(cards)} cards for {len(keys)} keys: pass the keys made_cards was given")
    environment = environment or _default_environment()
    if len(_KEPT) + len(keys) > _PREPARED_KEPT:
        _KEPT.clear()
    kept = zip(keys, cards, strict=True)
    _KEPT.update(((environment, *key), card) for key, card in kept if card is not None)


_KEPT: dict[tuple, _CardParts] = {}  # (environment, *card key) -> a card another process made


def forget_cards() -> None:
    """Drop every card and page layout kept rendered (a benchmark of a cold start calls this;
    a test holds it, with bot.message.forget_encodings, to every cache rendering fills)."""
    cards = (_card_of, _facts, _card_parts, _rendered_card, _marked_html, _marked_text)
    pieces = (_scanned, _segments_of, _snippet_marked, _authors_marked, _author_starts, _pattern, _wrapped)
    for cache in (*cards, *pieces, _layout_size, _tidied_head):
        cache.cache_clear()
    _LAYOUTS.clear()
    _PREPARED.clear()
    _KEPT.clear()


# -- the frame of a digest: rendered for each, CSS-inlined once per layout ----------------------
#
# A digest's frame (digest.html.j2: header, footer, links) holds the subscriber's name, counts
# and links, so it differs in every digest; but where its values go, which is what inlining
# reads, changes only with the template's branches (no papers, some, "and N more"). So the
# frame is rendered with every printed value replaced by a numbered hole (Jinja's `finalize`),
# that skeleton is CSS-inlined once per layout, and each digest fills the holes, escaped as the
# inliner's HTML serializer escapes text. The first digest of each layout is checked against
# inlining its whole page; a layout with a hole where inlining could depend on it (a class, id
# or style attribute, a <style>, a comment) is inlined whole, every time, and so is a digest
# whose values parsing would change (a CR, a NUL).

_HOLE = re.compile("\ue000([0-9]+)\ue001")
_STYLING_ATTRIBUTES = frozenset({"class", "id", "style"})
# What html5ever writes: comments, doctypes, tags (attribute values in double quotes), and text.
_MARKUP = re.compile(
    r"<!--.*?-->|<![^>]*>|<(/?)([A-Za-z][^\s/>]*)((?:\s+[^\s\"'=<>/]+(?:=\"[^\"]*\")?)*)\s*/?>", re.S
)
_ATTRIBUTE = re.compile(r"([^\s\"'=<>/]+)(?:=\"([^\"]*)\")?")
# (environment, length of a skeleton) -> [(skeleton, its layout, or None: inline whole)]: found
# by comparing skeletons of one length, not by hashing each digest's, which took longer.
_LAYOUTS: dict[tuple[jinja2.Environment, int], list[tuple[str, tuple | None]]] = {}
_LAYOUTS_KEPT = 256
_recording: ContextVar[list | None] = ContextVar("paperbot_frame_values", default=None)


@jinja2.pass_context  # so that Jinja never applies it at compile time, to constant output
def _finalize(context, value):
    values = _recording.get()
    if values is None:
        return value
    if value.__class__ is not str and hasattr(value, "__html__"):
        if value != _CARDS_HERE:
            values.append(_UNFILLABLE)  # markup made per digest: this frame is inlined whole
        return value  # the cards' place stays in the skeleton as it is
    values.append(value)
    number = len(values) - 1
    return _HOLES[number] if number < len(_HOLES) else f"\ue000{number}\ue001"


_HOLES = tuple(f"\ue000{number}\ue001" for number in range(64))  # what _finalize prints: made once


def _escaped(value: object, in_attribute: bool) -> str | None:
    """`value` as the inliner writes it after parsing Jinja's escaped output, or None when parsing
    would change it (a CR, a NUL)."""
    text = str(value)
    if "\r" in text or "\x00" in text:
        return None
    text = text.replace("&", "&amp;").replace("\xa0", "&nbsp;")
    if in_attribute:
        return text.replace('"', "&quot;")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _skeleton_pieces(inlined: str, holes: int) -> tuple | None:
    """The inlined skeleton cut at its holes: text, (hole, in_attribute), text, ...; None when a
    hole is lost or doubled, or sits where its value could change the styles."""
    pieces: list = []
    found: list[int] = []
    at = 0
    in_raw_text = False  # inside <style> or <script>

    def cut(start: int, end: int, in_attribute: bool) -> None:
        nonlocal at
        for hole in _HOLE.finditer(inlined, start, end):
            pieces.extend((inlined[at : hole.start()], (int(hole.group(1)), in_attribute)))
            found.append(int(hole.group(1)))
            at = hole.end()

    text_from = 0
    for markup in _MARKUP.finditer(inlined):
        if in_raw_text and _HOLE.search(inlined, text_from, markup.start()):
            return None
        cut(text_from, markup.start(), False)
        text_from = markup.end()
        closing, tag, attributes = markup.groups()
        if _HOLE.search(inlined, markup.start(), markup.end()):
            if tag is None or _HOLE.search(tag):
                return None  # in a comment, a doctype or a tag's name
            for attribute in _ATTRIBUTE.finditer(attributes):
                name, value = attribute.group(1), attribute.group(2) or ""
                if _HOLE.search(name) or (_HOLE.search(value) and name.lower() in _STYLING_ATTRIBUTES):
                    return None
            cut(markup.start(), markup.end(), True)
        if tag and tag.lower() in ("style", "script"):
            in_raw_text = not closing
    cut(text_from, len(inlined), False)
    if sorted(found) != list(range(holes)):
        return None
    pieces.append(inlined[at:])
    return tuple(pieces)


def _layout(pieces: tuple) -> tuple:
    """The pieces of an inlined skeleton as a frame is filled: the whole lines of each stretch
    of text, as (lines, True), the same string in every digest of the layout; between them
    what is made for each digest, a _Run (its text and holes, or a text alone as (text, False));
    and None where the cards go."""
    layout: list = []
    literals, holes = [""], []

    def end_run() -> None:
        if holes:
            layout.append(_Run(tuple(literals), tuple(holes)))
        elif literals[0]:
            layout.append((literals[0], False))
        literals[:], holes[:] = [""], []

    for number, piece in enumerate(pieces):
        if piece.__class__ is not str:
            holes.append(piece)
            literals.append("")
            continue
        texts = piece.split(_CARDS_HERE)
        for index, text in enumerate(texts):
            if index:
                end_run()
                layout.append(None)
            starts_line = index > 0 or number == 0
            first = 0 if starts_line else text.find("\n") + 1
            last = text.rfind("\n") + 1
            if first and last < first:  # the text ends no line but its first: nothing whole
                first = last = len(text)
            literals[-1] += text[:first]
            if last > first:
                end_run()
                layout.append((text[first:last], True))
            literals[-1] += text[last:]
    end_run()
    return tuple(layout)


class _Run(NamedTuple):
    """Text of a frame made for each digest: literals, with the value of a hole between each two."""

    literals: tuple[str, ...]
    holes: tuple[tuple[int, bool], ...]  # (value's number, in an attribute)


def _filled(layout: tuple, values: list) -> list | None:
    """The frame's parts, (text, shared), None where the cards go; None when a value cannot be
    written into the skeleton (see _escaped)."""
    parts: list = []
    for element in layout:
        if element.__class__ is not _Run:  # shared lines, a text alone, the cards' place
            parts.append(element)
            continue
        literals = element.literals
        pieces = [literals[0]]
        for (number, in_attribute), literal in zip(element.holes, literals[1:], strict=True):
            text = _escaped(values[number], in_attribute)
            if text is None:
                return None
            pieces += (text, literal)
        text = "".join(pieces)
        if text:
            parts.append((text, False))
    return parts


_UNFILLABLE = object()
# Template code that changes what a value prints after Jinja printed it (a filter block, a block
# assigned to a variable, a macro or call block): a frame using any is inlined whole each time.
_TRANSFORMING = (
    jinja2.nodes.FilterBlock,
    jinja2.nodes.AssignBlock,
    jinja2.nodes.Macro,
    jinja2.nodes.CallBlock,
)
_USING = (jinja2.nodes.Include, jinja2.nodes.Extends, jinja2.nodes.Import, jinja2.nodes.FromImport)


def _tree(environment: jinja2.Environment, name: str) -> jinja2.nodes.Template | None:
    """Template `name` parsed, to see what it does with what it prints; None without a loader."""
    if environment.loader is None:
        return None
    return environment.parse(environment.loader.get_source(environment, name)[0])


@lru_cache(maxsize=8)
def _fillable(environment: jinja2.Environment, name: str = "digest.html.j2") -> bool:
    """Whether template `name` (and what it includes) prints its values as they are, so a
    layout's holes can be filled."""
    tree = _tree(environment, name)
    if tree is None or any(True for kind in _TRANSFORMING for _ in tree.find_all(kind)):
        return False
    for node in tree.find_all(_USING):
        used = node.template
        if not isinstance(used, jinja2.nodes.Const) or not _fillable(environment, used.value):
            return False
    return True


def _frame_parts(environment: jinja2.Environment, values: dict) -> list:
    """The frame of a digest, CSS-inlined (through its layout's skeleton when it has one), in
    parts: (text, shared), and None where the cards go."""
    frame = _recording_environment(environment).get_template("digest.html.j2")
    if not _fillable(environment):
        return _whole_frame(frame, values)
    printed: list = []
    with _recording_into(printed):
        skeleton = _rendered(frame, values, cards=_CARDS_HERE)
    if _UNFILLABLE in printed:
        return _whole_frame(frame, values)
    key = (environment, len(skeleton))
    layout = next((layout for known, layout in _LAYOUTS.get(key, ()) if known == skeleton), False)
    if layout:
        parts = _filled(layout, printed)
        if parts is not None:
            return parts
    whole = _inliner().inline(_rendered(frame, values, cards=_CARDS_HERE))
    new = layout is False and sum(map(len, _LAYOUTS.values())) < _LAYOUTS_KEPT
    if new:  # keep it if it makes this page
        layout = None
        if skeleton.count("\ue000") == len(printed):
            pieces = _skeleton_pieces(_inliner().inline(skeleton), len(printed))
            if pieces is not None:
                layout = _layout(pieces)
                parts = _filled(layout, printed)
                if parts is None or "".join(_CARDS_HERE if p is None else p[0] for p in parts) != whole:
                    layout = None
        _LAYOUTS.setdefault(key, []).append((skeleton, layout))
        if layout:
            return parts  # the same parts as every later digest of this layout gets
    return _split_frame(whole)


def _whole_frame(frame: jinja2.Template, values: dict) -> list:
    return _split_frame(_inliner().inline(_rendered(frame, values, cards=_CARDS_HERE)))


def _split_frame(page: str) -> list:
    return [item for text in page.split(_CARDS_HERE) for item in ((text, False), None)][:-1]


# -- a digest ----------------------------------------------------------------------------------


def render_digest(digest: Digest, environment: jinja2.Environment | None = None) -> RenderedDigest:
    """The subject, HTML (CSS inlined, under MAX_HTML_BYTES) and plain text of `digest`."""
    environment = environment or _default_environment()
    parts = [_card_parts(environment, *card_key(m)) for m in digest.matches]
    # The cards of rank 0 that every digest shares: templates number them with loop.index.
    cards = [part.card for part in parts]
    subscriber = digest.subscriber
    schedule = getattr(subscriber.schedule, "text", None)
    if schedule is None:
        schedule = str(subscriber.schedule)
    # In UTC: two local times an hour apart around a DST change can be equal datetimes.
    local = _local_moment(digest.generated_at.astimezone(UTC), subscriber.timezone)

    def context(shown: int) -> dict:
        return {
            "digest": digest,
            "subscriber": subscriber,
            "schedule": schedule,
            "papers": cards[:shown],
            # The inbox's preview line: the first titles (a Jinja loop over them took longer).
            "preheader": " · ".join([card.title_plain for card in cards[: min(shown, 3)]]),
            "shown": shown,
            "total": digest.total,
            "more": digest.total - shown,
            "watch_count": len(subscriber.watches),
            "generated_local": local,
        }

    shown = len(parts)
    subject = _one_line(_rendered(environment.get_template("subject.txt.j2"), context(shown)))
    while True:
        values = context(shown) | {"subject": subject}
        frame = _frame_parts(environment, values)
        if frame.count(None) != 1:
            raise RuntimeError(f"digest.html.j2 must place {{{{ cards | safe }}}} once ({digest.period})")
        at = frame.index(None)
        html_parts = [*frame[:at], *((part.html, True) for part in parts[:shown]), *frame[at + 1 :]]
        last = html_parts[-1][0].rstrip() + "\n"
        if last != html_parts[-1][0]:
            html_parts[-1] = (last, False)
        # As the mail program decodes it (see _html_size): each card's measured when it was made.
        end = at + shown
        size = sum(part.html_size for part in parts[:shown])
        frame_parts = html_parts[:at] + html_parts[end:]
        size += sum(_layout_size(text) if shared else _html_size(text) for text, shared in frame_parts)
        if shown and end == len(html_parts):  # the page ends with the last card, its end trimmed
            size += _html_size(html_parts[-1][0]) - parts[shown - 1].html_size
        if size <= MAX_HTML_BYTES or shown == 0:
            break
        # Too big for Gmail: drop the lowest-ranked papers into "and N more" and try again.
        shown = max(0, min(shown - 1, shown * MAX_HTML_BYTES // size))
    return RenderedDigest(
        subject=subject,
        shown=shown,
        html_parts=tuple(html_parts),
        text_parts=_text_parts(environment, values, parts[:shown]),
    )


class _Moment(datetime):
    """A subscriber's local time of a run, as the templates get it: the run's digests in one
    time zone print the same time the same way, which is worked out once. (Kept on the object:
    datetimes in two zones at one instant are equal, so they cannot key a shared cache.)"""

    __slots__ = ("_printed",)

    def strftime(self, format: str) -> str:
        printed = getattr(self, "_printed", None)
        if printed is None:  # a copy (pickled, say) starts afresh
            printed = {}
            object.__setattr__(self, "_printed", printed)
        text = printed.get(format)
        if text is None:
            text = printed[format] = super().strftime(format)
        return text


@lru_cache(maxsize=256)
def _local_moment(moment: datetime, timezone: str) -> _Moment:
    local = moment.astimezone(ZoneInfo(timezone))
    return _Moment(*local.timetuple()[:6], local.microsecond, local.tzinfo, fold=local.fold)


_CARDS_TEXT_HERE = f"\ue003{secrets.token_hex(8)}\ue003"  # unguessable, as _RANK


def _numbered(ranked: _Tidied, rank: int) -> _Tidied:
    if _RANK not in ranked.core:
        return ranked
    return _Tidied(ranked.before, ranked.core.replace(_RANK, str(rank)), ranked.after)


def _text_parts(environment: jinja2.Environment, values: dict, parts: Sequence[_CardParts]) -> tuple:
    """The plain text (digest.txt.j2 with the cards' text in place, tidied) in (piece, shared)
    parts: the frame is tidied, the cards were when they were made, and where they meet is
    joined as tidying the whole would (see _joined_units). A template whose cards do not stand
    on lines of their own is rendered and tidied whole."""
    template = environment.get_template("digest.txt.j2")
    if _prints_cards_as_they_are(environment) and all(part.text_whole for part in parts):
        frame = _rendered(template, values, cards=_CARDS_TEXT_HERE)
        before, here, after = frame.partition(_CARDS_TEXT_HERE)
        if here and (not before or before.endswith("\n")) and _CARDS_TEXT_HERE not in after:
            units = [part.unit(rank) for rank, part in enumerate(parts, 1)]
            return _joined_units(_tidied_head(before), units, _tidied(after))
    cards = "".join(part.text.replace(_RANK, str(rank)) for rank, part in enumerate(parts, 1))
    return ((_tidy_text(_rendered(template, values, cards=cards)), False),)


def _joined_units(head: _Tidied, units: Sequence[tuple], tail: _Tidied) -> tuple[tuple[str, bool], ...]:
    """The text of the frame before the cards, the cards (each as _CardParts.unit has it), and
    the frame after them, joined as tidying the whole would join it (one blank line where any
    number were, none at the start or end), in (piece, shared) parts: the cards' pieces are the
    very strings every digest showing them holds (a blank line before one joins it); the
    frame's text, made per digest, is joined between them."""
    parts: list[tuple[str, bool]] = []
    pending = head.core  # the digest's own text, not yet in parts
    blank = head.after if pending else head.before
    for before, first, spaced, rest, after in units:
        if first is None:  # a card whose text is blank: its blank lines join those around it
            blank = blank or before
            continue
        if (blank or before) and (pending or parts):
            if pending:
                parts.append((pending + "\n", False))
            else:
                first = spaced  # the blank line starts the card's part, one piece fewer to encode
        elif pending:
            parts.append((pending, False))
        pending = ""
        parts.append(first)
        parts += rest
        blank = after
    if tail.core:
        pending += "\n" + tail.core if (blank or tail.before) and (pending or parts) else tail.core
    if pending:
        parts.append((pending, False))
    return tuple(parts) if parts else (("\n", False),)


@lru_cache(maxsize=8)
def _prints_cards_as_they_are(environment: jinja2.Environment, name: str = "digest.txt.j2") -> bool:
    """Whether template `name` uses `cards` only as `{{ cards }}`, printed as it is: at the top
    level or in an {% if %}, never in a filter, a block (which may be printed again through
    one), an {% autoescape %}, a loop, a macro or an assignment; and includes nothing. So what
    it prints around the cards is all it adds to them."""
    tree = _tree(environment, name)
    if tree is None or any(True for kind in (*_TRANSFORMING, *_USING) for _ in tree.find_all(kind)):
        return False

    def plain(node: jinja2.nodes.Node, path_is_plain: bool) -> bool:
        for child in node.iter_child_nodes():
            if isinstance(child, jinja2.nodes.Name) and child.name == "cards":
                if not (path_is_plain and isinstance(node, jinja2.nodes.Output)):
                    return False
            elif not plain(child, path_is_plain and isinstance(child, _PLAIN_NODES)):
                return False
        return True

    return plain(tree, True)


_PLAIN_NODES = (jinja2.nodes.Output, jinja2.nodes.If)  # what may stand between the template and {{ cards }}
