"""Matching: papers x subscribers -> matches, each saying which watches matched and why.

Pure. It scales by indexing the watches, not the papers (the percolator trick): the distinct
queries of all watches go into one `bot.query.QueryIndex`, which tries on a paper only the
queries anchored on words the paper holds. Each query is matched once however many watches
share it, and each set of thresholds is checked once for all the watches that share query
and thresholds; watches with thresholds only are grouped the same way. Older papers seen
again are tried only on the rising watches, which have an index of their own.
`match_naively` tries every watch on every paper: the baseline, and the oracle in tests.
"""

from __future__ import annotations

import dataclasses
import gc
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain, repeat
from operator import attrgetter

from bot.models import Paper, Subscriber, Watch
from bot.query import Hit, Node, PaperText, QueryIndex, index_paper, match_query

__all__ = ["Match", "WatchIndex", "match_naively", "match_papers", "watch_accepts"]

FIELD_WEIGHTS = {"title": 3.0, "author": 3.0, "keyword": 2.0, "org": 2.0, "abstract": 1.0}
_NO_THRESHOLDS = (0, 0, False, None)
_field_name = attrgetter("field")
_paper_id, _score_of = attrgetter("paper.id"), attrgetter("score")
_subscriber_id = attrgetter("subscriber_id")


@dataclass(frozen=True, slots=True)
class Match:
    """One paper for one subscriber: every watch that matched it, the words, the reasons."""

    subscriber_id: str
    paper: Paper
    watches: tuple[str, ...]
    score: float
    hits: tuple  # bot.query.Hit: field, term, start, end (for highlighting)
    reasons: tuple[str, ...] = ()  # e.g. "crossed 50 upvotes"


def _match_maker():
    """Match(...) without its __init__, for the hot loop of `match_paper`: a frozen dataclass's
    __init__ sets each field through object.__setattr__, which took a third of the time of a
    day with 100,000 subscribers; setting its slots directly makes the same object, twice as fast."""
    new = Match.__new__
    setters = [getattr(Match, field.name).__set__ for field in dataclasses.fields(Match)]
    set_id, set_paper, set_watches, set_score, set_hits, set_reasons = setters

    def make(subscriber_id, paper, watches, score, hits, reasons):
        match = new(Match)
        set_id(match, subscriber_id)
        set_paper(match, paper)
        set_watches(match, watches)
        set_score(match, score)
        set_hits(match, hits)
        set_reasons(match, reasons)
        return match

    return make


_make_match = _match_maker()


# A watch as a match needs it: its subscriber's number (see WatchIndex), the subscriber's id,
# the watch's name as Match.watches has it when it matched alone, and its slot.
_Member = tuple[int, str, tuple[str], int]


@dataclass(slots=True)
class _Group:
    """Watches that share a query (or have none) and thresholds: checked once for all."""

    watch: Watch  # any of them, to check the thresholds on
    members: list[_Member]
    owners: list[int]  # the subscriber number of each member
    checked: bool  # whether it has thresholds to check
    ids: tuple[str, ...] = ()  # the subscriber id of each member, and
    names: tuple[tuple[str], ...] = ()  # its watch name as a Match has it: see `sealed`

    def sealed(self) -> _Group:
        """The group with `ids` and `names` filled in, for matches made in one C-level map()."""
        self.ids = tuple(member[1] for member in self.members)
        self.names = tuple(member[2] for member in self.members)
        return self


class _WatchSet:
    """Some of the index's watches, grouped by query, then by thresholds, queries indexed."""

    def __init__(self, members: Iterable[tuple[_Member, Watch]]):
        numbers: dict[Node, int] = {}  # query -> its number in self.queries
        by_query: list[dict[tuple, _Group]] = []
        thresholds_only: dict[tuple, _Group] = {}
        for member, watch in members:
            if watch.query is None:
                groups = thresholds_only
            else:
                number = numbers.setdefault(watch.query, len(numbers))  # type: ignore[arg-type]
                if number == len(by_query):
                    by_query.append({})
                groups = by_query[number]
            key = (watch.min_upvotes, watch.min_stars, watch.has_code, watch.rising)
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group(watch, [], [], key != _NO_THRESHOLDS)
            group.members.append(member)
            group.owners.append(member[0])
        self.queries = QueryIndex(numbers)
        self.groups = [[group.sealed() for group in groups.values()] for groups in by_query]
        self.thresholds_only = [group.sealed() for group in thresholds_only.values()]

    def __bool__(self) -> bool:
        return bool(self.groups or self.thresholds_only)

    def accepted(
        self, paper: Paper, before: int | None
    ) -> tuple[list[tuple[_Group, int, str]], dict[int, tuple[Hit, ...]]]:
        """The groups whose query and thresholds `paper` satisfies, each with its query's number
        (-1: none) and reason ("" but for rising watches); and the hits of each query by number."""
        hits = self.queries.match(index_paper(paper))
        hits[-1] = ()
        accepted = []
        for number in hits:
            for group in self.groups[number] if number >= 0 else self.thresholds_only:
                if not group.checked:
                    accepted.append((group, number, ""))
                elif (reason := watch_accepts(group.watch, paper, before)) is not None:
                    accepted.append((group, number, reason))
        return accepted, hits


class WatchIndex:
    """Every active subscriber's watches, indexed by the words their queries require.

    Watches get slots in the order given, except that subscribers sharing an id (one file
    read twice) are put together: their watches make one match per paper, as one subscriber's.
    """

    def __init__(self, subscribers: Iterable[Subscriber]):
        by_id: dict[str, list[Subscriber]] = {}
        for subscriber in subscribers:
            if not subscriber.paused:
                by_id.setdefault(subscriber.id, []).append(subscriber)
        self.slots: list[tuple[Subscriber, Watch]] = [
            (subscriber, watch)
            for same in by_id.values()
            for subscriber in same
            for watch in subscriber.watches
        ]
        # One number per subscriber id, in the order of the ids: the order matches are given in.
        owners = {subscriber_id: number for number, subscriber_id in enumerate(sorted(by_id))}
        names: dict[str, tuple[str]] = {}  # one tuple per name, shared: watches are often alike
        members = [
            ((owners[subscriber.id], subscriber.id, names.setdefault(watch.name, (watch.name,)), slot), watch)
            for slot, (subscriber, watch) in enumerate(self.slots)
        ]
        self.every = _WatchSet(members)
        self.rising = _WatchSet(entry for entry in members if entry[1].rising is not None)

    def __len__(self) -> int:
        return len(self.slots)

    def match_paper(self, paper: Paper, watches: _WatchSet, before: int | None, into: list[Match]) -> None:
        """Add the matches of one paper among `watches` (all, or the rising ones) to `into`."""
        accepted, hits = watches.accepted(paper, before)
        # The hits of many queries are one shared tuple (see QueryIndex.match): its order and
        # score are worked out once, by its identity.
        shown: dict[int, tuple[tuple[Hit, ...], float]] = {}
        for found in hits.values():
            if id(found) not in shown:
                # Query hits are unique, in (field order, start, end, term) order: sorted
                # stably by field name, they are in the order _unique gives.
                ordered = tuple(sorted(found, key=_field_name))
                shown[id(found)] = (ordered, _score(paper, ordered))
        # Subscribers with several watches matching: theirs are joined in one match, below.
        owners = list(chain.from_iterable(group.owners for group, _, _ in accepted))
        several = set()
        if len(set(owners)) < len(owners):
            several = {owner for owner, count in Counter(owners).items() if count > 1}
        joined: defaultdict[int, list[tuple[int, int, str]]] = defaultdict(list)
        make, add, add_all = _make_match, into.append, into.extend
        for group, number, reason in accepted:
            ordered, score = shown[id(hits[number])]
            reasons = (reason,) if reason else ()
            if several and not several.isdisjoint(group.owners):
                for owner, subscriber_id, name, slot in group.members:
                    if owner in several:
                        joined[owner].append((slot, number, reason))
                    else:
                        add(make(subscriber_id, paper, name, score, ordered, reasons))
            else:  # the common case: one match per member, made without a Python loop
                add_all(
                    map(
                        make,
                        group.ids,
                        repeat(paper),
                        group.names,
                        repeat(score),
                        repeat(ordered),
                        repeat(reasons),
                    )
                )
        for entries in joined.values():
            entries.sort()  # the watches in their order
            watches_of = [self.slots[slot][1] for slot, _, _ in entries]
            add(
                _combine(
                    self.slots[entries[0][0]][0].id,
                    paper,
                    [watch.name for watch in watches_of],
                    [hit for _, number, _ in entries for hit in hits[number]],
                    [reason for _, _, reason in entries if reason],
                )
            )


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


def _unique(hits: Iterable[Hit]) -> tuple[Hit, ...]:
    return tuple(sorted(set(hits), key=lambda h: (h.field, h.start, h.end, h.term)))


def _score(paper: Paper, hits: Iterable[Hit]) -> float:
    unique = {(h.field, h.start) for h in hits}
    return round(sum(FIELD_WEIGHTS.get(f, 1.0) for f, _ in unique) + math.log1p(paper.upvotes or 0), 3)


def _combine(
    subscriber_id: str, paper: Paper, names: list[str], hits: list[Hit], reasons: list[str]
) -> Match:
    """One subscriber's match of one paper, from the watches (in their order) that matched it."""
    unique = _unique(hits)
    return Match(
        subscriber_id, paper, tuple(names), _score(paper, unique), unique, tuple(dict.fromkeys(reasons))
    )


def _collect(
    paper: Paper,
    text: PaperText,
    slots: Iterable[int],
    index: WatchIndex,
    before: int | None,
    rising_only: bool = False,
) -> list[Match]:
    per_subscriber: dict[str, tuple[list[str], list[Hit], list[str]]] = {}
    for slot in sorted(slots):
        subscriber, watch = index.slots[slot]
        if rising_only and watch.rising is None:
            continue
        reason = watch_accepts(watch, paper, before)
        if reason is None:
            continue
        if watch.query is None:
            hits: tuple[Hit, ...] = ()
        else:
            found = match_query(watch.query, text)  # type: ignore[arg-type]
            if found is None:
                continue
            hits = found
        names, all_hits, reasons = per_subscriber.setdefault(subscriber.id, ([], [], []))
        names.append(watch.name)
        all_hits.extend(hits)
        if reason:
            reasons.append(reason)
    return [
        _combine(subscriber_id, paper, names, hits, reasons)
        for subscriber_id, (names, hits, reasons) in per_subscriber.items()
    ]


@contextmanager
def _cycles_not_collected() -> Iterator[None]:
    """Matching makes many small objects and no reference cycles: with 100,000 subscribers in
    memory, the cycle collector's passes over them took a third of the time, for nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _rank(match: Match) -> tuple[str, float, str]:
    return (match.subscriber_id, -match.score, match.paper.id)


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
    found: list[Match] = []
    with _cycles_not_collected():
        for group, watches in ((papers, index.every), (risers, index.rising)):
            if watches:
                for paper in group:
                    index.match_paper(paper, watches, upvotes_before.get(paper.id), found)
        # In _rank's order, by three stable sorts on one plain key each: several times faster
        # than one sort on tuples, which compares them item by item in Python's generic way.
        found.sort(key=_paper_id)
        found.sort(key=_score_of, reverse=True)  # reverse keeps equal scores in paper order
        found.sort(key=_subscriber_id)
    return found


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
    matches.sort(key=_rank)
    return matches
