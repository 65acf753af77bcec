"""The plain values that flow between paperbot's stages."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date, datetime

__all__ = ["Channel", "Digest", "FetchResult", "Paper", "Sighting", "Subscriber", "Watch"]


@dataclass(frozen=True, slots=True)
class Paper:
    """One paper as Hugging Face shows it, normalized from the API or a page.

    Fields that an older capture lacks are None (or empty), never guessed.
    """

    id: str  # canonical arXiv id, no version suffix: "2407.21783"
    title: str
    abstract: str = ""
    authors: tuple[str, ...] = ()
    published_at: datetime | None = None  # arXiv publication time, UTC
    featured_on: date | None = None  # the day HF featured it (submittedOnDailyAt)
    upvotes: int | None = None
    num_comments: int | None = None
    github_repo: str | None = None
    github_stars: int | None = None
    project_page: str | None = None
    ai_summary: str | None = None
    ai_keywords: tuple[str, ...] = ()
    organization: str | None = None  # HF organization name, e.g. "caltech"
    organization_fullname: str | None = None
    thumbnail: str | None = None

    def __hash__(self) -> int:
        # Its id, not every field (dataclass's own): renderings are cached by paper, and equal
        # papers have equal ids. Two versions of one paper (its upvotes moved) are told apart
        # by equality, as before.
        return hash(self.id)

    @property
    def hf_url(self) -> str:
        return f"https://huggingface.co/papers/{self.id}"

    @property
    def arxiv_url(self) -> str:
        return f"https://arxiv.org/abs/{self.id}"

    @property
    def pdf_url(self) -> str:
        return f"https://arxiv.org/pdf/{self.id}"

    def replace(self, **changes) -> Paper:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Sighting:
    """One time a paper was seen upstream, with the counts it had then."""

    paper_id: str
    seen_at: datetime  # UTC
    source: str  # e.g. "api:date=2024-08-01", "page:trending", "import:file.jsonl.gz"
    rank: int | None  # 1-based position in that listing
    upvotes: int | None
    stars: int | None
    comments: int | None


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What one poll of one listing produced."""

    url: str
    source: str  # "api" or "page"
    listing: str  # e.g. "date=2024-08-01", "trending", "search=diffusion"
    papers: tuple[Paper, ...]
    fetched_at: datetime
    etag: str | None = None
    last_modified: str | None = None
    not_modified: bool = False  # the server answered 304: nothing changed since last poll


@dataclass(frozen=True, slots=True)
class Channel:
    """Where a subscriber's alerts go. `target` may hold ${ENV_VAR} references, expanded
    only when sending, so secrets never sit in subscription files or the database."""

    name: str  # the key in [channels]: "email", "slack", "lab-webhook", ...
    kind: str  # email | slack | webhook | apprise
    target: str  # an address or a URL (maybe "${SLACK_WEBHOOK_URL}")
    secret: str | None = None  # e.g. a webhook signing secret, as "${ENV_VAR}"


@dataclass(frozen=True, slots=True)
class Watch:
    """One thing a subscriber watches for. Every criterion given must hold."""

    name: str
    query: object  # the compiled query (bot.query AST) of query + authors + orgs + keywords
    query_text: str  # the same, as text, for display
    min_upvotes: int = 0
    min_stars: int = 0
    has_code: bool = False
    rising: int | None = None  # alert when a paper already seen crosses this many upvotes
    delivery: str = "digest"  # digest | instant
    channels: tuple[str, ...] = ()  # names of the subscriber's channels; () = all
    search: bool = False  # also run the query against Hugging Face's search


@dataclass(frozen=True, slots=True)
class Subscriber:
    """One subscriber, read from subscriptions/<id>.toml."""

    id: str  # the file's stem: "alice" for alice.toml
    name: str
    email: str | None
    timezone: str
    schedule: object  # bot.schedule.Schedule
    watches: tuple[Watch, ...]
    channels: tuple[Channel, ...]
    send_empty: bool = False
    max_papers: int = 25
    paused: bool = False
    path: str = ""


@dataclass(frozen=True, slots=True)
class Digest:
    """One digest: what one subscriber gets on one channel for one period, ready to render.

    Its identity is (subscriber.id, channel, period): a retried send of the same digest
    carries the same Message-ID. `matches` are `bot.match.Match`, one per paper, best score
    first, already cut at the subscriber's `max_papers` (see `bot.render.build_digest`);
    `total` counts them before the cut, for "and N more".
    """

    subscriber: Subscriber
    channel: str  # the name of the subscriber's channel: "email"
    period: str  # "2026-06-12" for a daily digest, "2026-W24" for a weekly one
    label: str  # the period as the subscriber reads it, in their zone: "Fri 12 Jun 2026"
    generated_at: datetime  # aware
    matches: tuple  # bot.match.Match, ranked
    total: int  # matches before the max_papers cut
    list_url: str  # every match of the period, for "and N more"
    unsubscribe_url: str
    manage_url: str

    def __post_init__(self):
        if self.generated_at.tzinfo is None:
            raise ValueError("Digest.generated_at must be timezone-aware")
        if self.total < len(self.matches):
            raise ValueError(f"Digest.total ({self.total}) is less than its {len(self.matches)} matches")

    @property
    def identity(self) -> tuple[str, str, str]:
        """What makes two digests the same digest: (subscriber id, channel, period)."""
        return (self.subscriber.id, self.channel, self.period)
