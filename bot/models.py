"""The plain values that flow between paperbot's stages."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date, datetime

__all__ = ["FetchResult", "Paper", "Sighting"]


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
