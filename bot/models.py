"""The plain values that flow between paperbot's stages."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date, datetime

__all__ = ["Channel", "FetchResult", "Paper", "Sighting", "Subscriber", "Watch"]


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
