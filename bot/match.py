"""Matching: papers x subscribers -> matches, each saying which watches matched and why.

Pure. It scales by indexing the watches, not the papers (the percolator trick): each
watch's query says which words any paper it matches must contain (`anchor_terms`), so a
paper is only tested against the watches anchored on one of its own words, plus the few
watches that have no anchor (thresholds only, or pure negation).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bot.models import Paper, Subscriber, Watch
from bot.query import PaperText, anchor_terms, index_paper, match_query

__all__ = ["Match", "WatchIndex", "match_naively", "match_papers", "watch_accepts"]

FIELD_WEIGHTS = {"title": 3.0, "author": 3.0, "keyword": 2.0, "org": 2.0, "abstract": 1.0}
MIN_PREFIX = 3


@dataclass(frozen=True, slots=True)
class Match:
    """One paper for one subscriber: every watch that matched it, the words, the reasons."""

    subscriber_id: str
    paper: Paper
    watches: tuple[str, ...]
    score: float
    hits: tuple  # bot.query.Hit: field, term, start, end (for highlighting)
    reasons: tuple[str, ...] = ()  # e.g. "crossed 50 upvotes"


class WatchIndex:
    """Every subscriber's watches, indexed by the words their queries require."""

    def __init__(self, subscribers: Iterable[Subscriber]):
        self.slots: list[tuple[Subscriber, Watch]] = []
        self.by_term: dict[str, list[int]] = defaultdict(list)
        self.by_prefix: dict[str, list[int]] = defaultdict(list)
        self.unanchored: list[int] = []
        for subscriber in subscribers:
            if subscriber.paused:
                continue
            for watch in subscriber.watches:
                slot = len(self.slots)
                self.slots.append((subscriber, watch))
                anchors = anchor_terms(watch.query) if watch.query is not None else None
                if anchors is None:
                    self.unanchored.append(slot)
                    continue
                for term in anchors:
                    if term.endswith("*"):
                        self.by_prefix[term[:-1]].append(slot)
                    else:
                        self.by_term[term].append(slot)
        self.by_term = dict(self.by_term)
        self.by_prefix = dict(self.by_prefix)

    def __len__(self) -> int:
        return len(self.slots)

    def candidates(self, text: PaperText) -> set[int]:
        """The watches that might match this paper: anchored on one of its words, or unanchored."""
        found = set(self.unanchored)
        by_term, by_prefix = self.by_term, self.by_prefix
        for term in text.terms:
            slots = by_term.get(term)
            if slots:
                found.update(slots)
            if by_prefix:
                for end in range(MIN_PREFIX, len(term) + 1):
                    slots = by_prefix.get(term[:end])
                    if slots:
                        found.update(slots)
        return found


def watch_accepts(watch: Watch, paper: Paper, upvotes_before: int | None) -> str | None:
    """Whether the thresholds of `watch` let `paper` through: "" yes, a reason for rising, None no."""
    if watch.min_upvotes and (paper.upvotes or 0) < watch.min_upvotes:
        return None
    if watch.min_stars and (paper.github_stars or 0) < watch.min_stars:
        return None
    if watch.has_code and not paper.github_repo:
        return None
    if watch.rising is not None:
        now = paper.upvotes or 0
        # Rising means a paper seen before, below the mark then, at or above it now.
        if upvotes_before is None or not (upvotes_before < watch.rising <= now):
            return None
        return f"crossed {watch.rising} upvotes (from {upvotes_before} to {now})"
    return ""


def _score(paper: Paper, hits: Iterable) -> float:
    unique = {(h.field, h.start) for h in hits}
    return round(sum(FIELD_WEIGHTS.get(f, 1.0) for f, _ in unique) + math.log1p(paper.upvotes or 0), 3)


def _collect(
    paper: Paper,
    text: PaperText,
    slots: Iterable[int],
    index: WatchIndex,
    before: int | None,
    rising_only: bool = False,
) -> list[Match]:
    per_subscriber: dict[str, list] = {}
    for slot in sorted(slots):
        subscriber, watch = index.slots[slot]
        if rising_only and watch.rising is None:
            continue
        reason = watch_accepts(watch, paper, before)
        if reason is None:
            continue
        if watch.query is None:
            hits = ()
        else:
            hits = match_query(watch.query, text)
            if hits is None:
                continue
        entry = per_subscriber.setdefault(subscriber.id, [[], [], []])
        entry[0].append(watch.name)
        entry[1].extend(hits)
        if reason:
            entry[2].append(reason)
    matches = []
    for subscriber_id, (names, hits, reasons) in per_subscriber.items():
        unique_hits = tuple(sorted(set(hits), key=lambda h: (h.field, h.start)))
        matches.append(
            Match(
                subscriber_id,
                paper,
                tuple(names),
                _score(paper, unique_hits),
                unique_hits,
                tuple(dict.fromkeys(reasons)),
            )
        )
    return matches


def match_papers(
    papers: Iterable[Paper],
    index: WatchIndex,
    upvotes_before: Mapping[str, int] | None = None,
    risers: Iterable[Paper] = (),
) -> list[Match]:
    """Every (subscriber, paper) match, best score first within each subscriber.

    `papers` are the new papers of a window, tried against every watch. `upvotes_before`
    maps a paper id to the most upvotes it had been seen with before the window; `rising`
    watches fire only for papers in it that crossed their mark since. `risers` are older
    papers seen again in the window: only `rising` watches are tried on them.
    """
    upvotes_before = upvotes_before or {}
    matches: list[Match] = []
    for group, rising_only in ((papers, False), (risers, True)):
        for paper in group:
            text = index_paper(paper)
            slots = index.candidates(text)
            if slots:
                before = upvotes_before.get(paper.id)
                matches.extend(_collect(paper, text, slots, index, before, rising_only))
    matches.sort(key=lambda m: (m.subscriber_id, -m.score, m.paper.id))
    return matches


def match_naively(
    papers: Iterable[Paper],
    index: WatchIndex,
    upvotes_before: Mapping[str, int] | None = None,
    risers: Iterable[Paper] = (),
) -> list[Match]:
    """The same result by testing every watch against every paper: the baseline, and the oracle."""
    upvotes_before = upvotes_before or {}
    matches: list[Match] = []
    every = range(len(index.slots))
    for group, rising_only in ((papers, False), (risers, True)):
        for paper in group:
            text = index_paper(paper)
            before = upvotes_before.get(paper.id)
            matches.extend(_collect(paper, text, every, index, before, rising_only))
    matches.sort(key=lambda m: (m.subscriber_id, -m.score, m.paper.id))
    return matches
