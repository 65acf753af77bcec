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
from array import array
from bisect import bisect_right
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate, chain, compress, repeat
from operator import attrgetter, is_not, itemgetter, ne, sub

from bot.models import Paper, Subscriber, Watch
from bot.query import Hit, Node, PaperText, QueryIndex, index_paper, match_query

__all__ = ["Match", "WatchIndex", "match_naively", "match_papers", "watch_accepts"]

FIELD_WEIGHTS = {"title": 3.0, "author": 3.0, "keyword": 2.0, "org": 2.0, "abstract": 1.0}
_NO_THRESHOLDS = (0, 0, False, None)
_field_name = attrgetter("field")
_score_of = attrgetter("score")
_hits_in, _score_in = itemgetter(0), itemgetter(1)
_one_more = (1).__add__
_subscriber_id = attrgetter("subscriber_id")
_hits_of, _watches_of, _reasons_of = attrgetter("hits"), attrgetter("watches"), attrgetter("reasons")


@dataclass(frozen=True, slots=True)
class Match:
    """One paper for one subscriber: every watch that matched it, the words, the reasons."""

    subscriber_id: str
    paper: Paper
    watches: tuple[str, ...]
    score: float
    hits: tuple  # bot.query.Hit: field, term, start, end (for highlighting)
    reasons: tuple[str, ...] = ()  # e.g. "crossed 50 upvotes"


def _column_maker():
    """Match(...) for many matches at once, without its __init__, for the hot loop of
    `match_paper`: a frozen dataclass's __init__ sets each field through object.__setattr__,
    which took a third of the time of a day with 100,000 subscribers. Here each slot of every
    new match is set by one C-level map() per field: the same objects, several times faster."""
    new = Match.__new__
    setters = [getattr(Match, field.name).__set__ for field in dataclasses.fields(Match)]

    def make(
        paper: Paper,
        ids: list[str],
        names: list[tuple[str]],
        counts: list[int],
        scores: list[float],
        hits: list[tuple],
        reasons: list[tuple[str, ...]],
    ) -> list[Match]:
        """One match of `paper` per id, with its name; `counts` say how many in a row share
        each of `scores`, `hits` and `reasons`."""
        made = list(map(new, repeat(Match, len(ids))))
        shared = [chain.from_iterable(map(repeat, column, counts)) for column in (scores, hits, reasons)]
        for set_field, values in zip(setters, (ids, repeat(paper), names, *shared), strict=True):
            deque(map(set_field, made, values), maxlen=0)  # consumed for its effect, kept nowhere
        return made

    return make


_make_matches = _column_maker()


class _WatchSet:
    """Some of the index's watches, grouped by query, then by thresholds, queries indexed.

    Laid out flat, as an index holds hundreds of thousands of watches and most queries are
    one watch's: a Python object per watch or per group took 300 MB for 100,000 subscribers.
    The watches are put in order (their "positions") group after group, the groups query
    after query, those without thresholds first; so a group is a range of positions and a
    query a range of groups, told by offsets in arrays, and so are a query's watches without
    thresholds. Watches with thresholds only come last, under a query number of their own,
    `unqueried`.
    """

    def __init__(self, slots: Iterable[int], index: WatchIndex):
        numbers: dict[Node, int] = {}  # query -> its number in self.queries
        kinds: dict[tuple, int] = {_NO_THRESHOLDS: 0}  # thresholds -> their number
        taken: list[int] = []  # the slots in this set
        queries: list[int] = []  # and the query number of each, or -1 for none
        thresholds = []  # and the number of its thresholds
        for slot in slots:
            watch = index.watches[slot]
            taken.append(slot)
            query = watch.query
            queries.append(-1 if query is None else numbers.setdefault(query, len(numbers)))  # type: ignore[arg-type]
            key = (watch.min_upvotes, watch.min_stars, watch.has_code, watch.rising)
            thresholds.append(kinds.setdefault(key, len(kinds)))
        self.queries = QueryIndex(numbers)
        self.unqueried = unqueried = len(numbers)
        # One int per watch to sort on: its group. Python's sort is stable: a group's watches
        # stay in slot order, which is the order a subscriber's watches are named in.
        groups = [
            (unqueried if query < 0 else query) * len(kinds) + kind
            for query, kind in zip(queries, thresholds, strict=True)
        ]
        del queries, thresholds
        order = sorted(range(len(taken)), key=groups.__getitem__)
        self.slots = array("i")  # position -> slot
        self.ids: list[str] = []  # position -> subscriber id
        self.names: list[tuple[str]] = []  # position -> the watch's name, as Match.watches has it
        self.first_member = array("i")  # group -> its first position (and one past the last)
        self.kind_of = array("i")  # group -> the number of its thresholds
        # thresholds' number -> a watch to check them on (None: no thresholds, kind 0)
        self.kinds: list[Watch | None] = [None] * len(kinds)
        self.first_group = array("i", [0]) * (unqueried + 2)  # query -> its first group (and one past)
        previous, next_query = -1, 0
        for position, taken_at in enumerate(order):
            slot, group = taken[taken_at], groups[taken_at]
            self.slots.append(slot)
            self.ids.append(index.ids[slot])
            self.names.append(index.names[slot])
            if group != previous:
                query, kind = divmod(group, len(kinds))
                while next_query <= query:  # queries without watches here have no groups
                    self.first_group[next_query] = len(self.kind_of)
                    next_query += 1
                self.first_member.append(position)
                self.kind_of.append(kind)
                if kind:
                    self.kinds[kind] = index.watches[slot]
                previous = group
        self.first_member.append(len(self.slots))
        for query in range(next_query, unqueried + 2):
            self.first_group[query] = len(self.kind_of)
        # Per query, its watches without thresholds (its first group, if of kind 0) as one range
        # of positions, and where its groups with thresholds start: most matches of a paper
        # are of the first kind, and found a query at a time, with no look at groups.
        self.plain_start = array("i", [0]) * (unqueried + 1)  # query -> its first position
        self.plain_stop = array("i", [0]) * (unqueried + 1)  # and one past its last without thresholds
        self.first_checked = array("i", [0]) * (unqueried + 1)  # query -> its first group with thresholds
        self.checked = bytearray(unqueried + 1)  # query -> 1 if it has groups with thresholds
        for query in range(unqueried + 1):
            first, stop = self.first_group[query], self.first_group[query + 1]
            self.plain_start[query] = self.plain_stop[query] = self.first_member[first]
            if first < stop and not self.kind_of[first]:
                first += 1
                self.plain_stop[query] = self.first_member[first]
            self.first_checked[query] = first
            self.checked[query] = first < stop

    def __bool__(self) -> bool:
        return bool(self.slots)


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
        self.watches: list[Watch] = []  # slot -> watch
        self.ids: list[str] = []  # slot -> its subscriber's id
        self.names: list[tuple[str]] = []  # slot -> (its name,), one tuple per name: watches are often alike
        names: dict[str, tuple[str]] = {}
        # The ids the matches hold are copies made here in one go, in sorted order: near each
        # other in memory, not each among its subscriber's objects. Matching reads one per
        # match, and sorting the matches ~17, in an order that the copies' order follows.
        copies = {sid: sid.encode().decode() for sid in sorted(by_id)}
        for same in by_id.values():
            for subscriber in same:
                for watch in subscriber.watches:
                    self.watches.append(watch)
                    self.ids.append(copies[subscriber.id])
                    self.names.append(names.setdefault(watch.name, (watch.name,)))
        self.every = _WatchSet(range(len(self.watches)), self)
        self.rising = _WatchSet(
            (slot for slot, watch in enumerate(self.watches) if watch.rising is not None), self
        )

    def __len__(self) -> int:
        return len(self.watches)

    def match_paper(self, paper: Paper, watches: _WatchSet, before: int | None, into: list[Match]) -> None:
        """Add the matches of one paper among `watches` (all, or the rising ones) to `into`."""
        hits = watches.queries.match(index_paper(paper))
        hits[watches.unqueried] = ()
        first_group, first_member, kind_of = watches.first_group, watches.first_member, watches.kind_of
        # Everything below is done a column at a time by C-level maps (a Python loop per group
        # took a third of a day's time): the queries that matched, their watches without
        # thresholds, and those of their groups with thresholds that the paper passes; their
        # members and what they share.
        numbers = list(hits)
        # The hits of many queries are one shared tuple (see QueryIndex.match): its order and
        # score are worked out once, by its identity.
        shown = {id(found): found for found in hits.values()}
        for key, found in shown.items():
            # Query hits are unique, in (field order, start, end, term) order: sorted stably
            # by field name, they are in the order _unique gives.
            ordered = tuple(sorted(found, key=_field_name))
            shown[key] = (ordered, _score(paper, ordered))
        views = list(map(shown.__getitem__, map(id, hits.values())))
        # Watches without thresholds: a range of positions per query.
        member_starts = list(map(watches.plain_start.__getitem__, numbers))
        member_stops = list(map(watches.plain_stop.__getitem__, numbers))
        reasons: list[tuple[str, ...] | None] = [()] * len(numbers)
        # Watches with thresholds: the groups of the queries that have some. Their thresholds
        # are checked once per paper for each set of them: a tuple of reasons where they let
        # the paper through (empty, or why it rose), None where not.
        checked = list(map(watches.checked.__getitem__, numbers))
        numbers = list(compress(numbers, checked))
        starts = list(map(watches.first_checked.__getitem__, numbers))
        stops = list(map(first_group.__getitem__, map(_one_more, numbers)))
        checked_views = list(compress(views, checked))
        groups = list(chain.from_iterable(map(range, starts, stops)))
        verdicts = [_verdict(watch, paper, before) for watch in watches.kinds]
        group_reasons = list(map(verdicts.__getitem__, map(kind_of.__getitem__, groups)))
        passed = list(map(is_not, group_reasons, repeat(None)))
        group_views = chain.from_iterable(map(repeat, checked_views, map(sub, stops, starts)))
        views += compress(group_views, passed)
        reasons += compress(group_reasons, passed)
        accepted = list(compress(groups, passed))
        member_starts += map(first_member.__getitem__, accepted)
        member_stops += map(first_member.__getitem__, map(_one_more, accepted))
        counts = list(map(sub, member_stops, member_starts))
        # A range's members are a slice of positions: their ids and names are copied a slice
        # at a time, not looked up one by one.
        members = list(map(slice, member_starts, member_stops))
        owners = list(chain.from_iterable(map(watches.ids.__getitem__, members)))
        made = _make_matches(
            paper,
            owners,
            list(chain.from_iterable(map(watches.names.__getitem__, members))),
            counts,
            list(map(_score_in, views)),
            list(map(_hits_in, views)),
            reasons,
        )
        # Each owner's first place among them, and the places of owners seen before: some if
        # a subscriber has several watches matching the paper.
        first: dict[str, int] = {}
        places = list(range(len(owners)))  # made once, read three times
        later = list(compress(places, map(ne, map(first.setdefault, owners, places), places)))
        if not later:
            into += made
            return
        # Such a subscriber gets one match joining them, in the place of the first; the later
        # places, few, are left out.
        joins: defaultdict[str, list[int]] = defaultdict(list)  # owner -> their places
        for place in later:
            joins[owners[place]].append(place)
        ends = list(accumulate(counts))  # one past the place of each range's last member
        slots = watches.slots

        def slot_at(place: int) -> int:
            group = bisect_right(ends, place)
            return slots[member_stops[group] - (ends[group] - place)]

        for owner, at in joins.items():
            at.append(first[owner])
            at.sort(key=slot_at)  # the watches in their order
            joined = list(map(made.__getitem__, at))
            made[first[owner]] = _combine(
                owner,
                paper,
                chain.from_iterable(map(_watches_of, joined)),
                chain.from_iterable(map(_hits_of, joined)),
                chain.from_iterable(map(_reasons_of, joined)),
            )
        start = 0
        for place in later:
            into += made[start:place]
            start = place + 1
        into += made[start:]


def _verdict(watch: Watch | None, paper: Paper, before: int | None) -> tuple[str, ...] | None:
    """What watch_accepts says, as Match.reasons has it: None, (), or (why the paper rose,)."""
    if watch is None:
        return ()
    reason = watch_accepts(watch, paper, before)
    return None if reason is None else (reason,) if reason else ()


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
    subscriber_id: str, paper: Paper, names: Iterable[str], hits: Iterable[Hit], reasons: Iterable[str]
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
        watch = index.watches[slot]
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
        names, all_hits, reasons = per_subscriber.setdefault(index.ids[slot], ([], [], []))
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
    memory, the cycle collector's passes over them took a third of the time, for nothing.

    Collection is off while matching; after it, what is young (the matches, mostly: 150,000
    for a busy day) is moved to the oldest generation unexamined, by freezing and unfreezing
    at once. Else the first young collection would go over every new match, a sixth of a
    day's time, to find no cycle. Young garbage of the caller's, if any, is found by the next
    full collection instead. Skipped if the caller froze objects (gc.freeze, before a fork):
    unfreezing would undo that."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if not gc.get_freeze_count():
            gc.freeze()
            gc.unfreeze()
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
        work = [
            (paper, watches)
            for group, watches in ((papers, index.every), (risers, index.rising))
            for paper in group
        ]
        # In _rank's order, by stable sorts on one plain key each: several times faster than one
        # sort on tuples, which compares them item by item in Python's generic way. The papers
        # are matched in the order of their ids, so their matches come in that order.
        work.sort(key=lambda job: job[0].id)
        for paper, watches in work:
            if watches:
                index.match_paper(paper, watches, upvotes_before.get(paper.id), found)
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
    every = range(len(index))
    for group, rising_only in ((papers, False), (risers, True)):
        for paper in group:
            text = index_paper(paper)
            before = upvotes_before.get(paper.id)
            matches.extend(_collect(paper, text, every, index, before, rising_only))
    matches.sort(key=_rank)
    return matches
