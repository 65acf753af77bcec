"""How fast bot.match matches 100,000 subscribers x 5 watches, against the naive loop.

Run by hand, not by pytest:

    python bench/match.py [PATH] [--subscribers N] [--days D] [--naive-subscribers M]

PATH defaults to the team's shared history, ../shared/data/hf_daily_papers_2024-05-27_2026-03-31.jsonl.gz
relative to the repository. The subscribers are made up, with a fixed seed, from the history's
own vocabulary: words and phrases of Hugging Face's AI keywords, authors, organizations. Their
watches mix single words, two-word ANDs, phrases, OR groups, negations, prefix wildcards,
author:, org:, keyword:, thresholds and rising watches, and a few watches with thresholds only.
Popular words are watched more often (drawn in proportion to count ** 0.75), as they would be.

The papers are real: one day is the busiest of the last D days of the history; the D days are
matched one day at a time, as `paperbot match` does. Each day also sees the previous day's
papers again, as risers: the history keeps one count per paper, so the count they had before
is made up (half their final upvotes) to give the rising watches something to do.

Prints the time to build the index, to match one day and D days with it, and the same work
done by `match_naively` (every watch tried on every paper) measured in the same run: in full
for the one day when that takes under --naive-budget seconds (else on a sample of the
subscribers, scaled), and on --naive-subscribers subscribers for the D days, scaled linearly
by the number of watches (the naive loop's cost is one try per watch per paper). The index's
matches are checked equal to the naive ones wherever both ran. Memory is what the subscribers and the
index add to the resident set (what a daemon holds), and the peak of the whole bench process.
The load averages at the start and the end tell how busy the machine was: other work on it
slows every figure, the index's and the naive loop's alike, by 20-30% or more.

Goals (issue 3): one day under 1 s, at least 50x the naive loop, under 500 MB.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import accumulate
from pathlib import Path
from typing import TypeVar

from bot.captures import Capture, read_capture
from bot.match import Match, WatchIndex, match_naively, match_papers
from bot.models import Paper, Subscriber, Watch
from bot.query import DEFAULT_FIELDS, Node, index_paper, parse_query
from bot.schedule import parse_schedule
from bot.words import scan

REPO = Path(__file__).resolve().parents[1]
HISTORY = REPO.parent / "shared" / "data" / "hf_daily_papers_2024-05-27_2026-03-31.jsonl.gz"
WATCHES_PER_SUBSCRIBER = 5
GOAL_DAY_SECONDS = 1.0
GOAL_RATIO = 50.0
GOAL_MEGABYTES = 500.0
BROAD = 0.2  # the largest share of all papers a word watched alone may occur in

# Words nobody watches on their own; they still appear inside phrases.
_STOP = frozenset(
    "a an and are as at based by for from in into is of on or over the to towards under using via "
    "with without not".split()
)
_WORD = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_UNQUOTABLE = re.compile(r'["\\*]+')  # a quoted value cannot hold these


def _quotable(text: str) -> str:
    return " ".join(_UNQUOTABLE.sub(" ", text).split())


T = TypeVar("T")


def _folded(text: str) -> tuple[str, ...]:
    return tuple(term for term, _, _, _ in scan(text))


def document_frequencies(papers: Sequence[Paper], wanted: set[tuple[str, ...]]) -> Counter[tuple[str, ...]]:
    """In how many papers (title, abstract or keywords) each wanted sequence of folded words
    occurs; a prefix is wanted as (stem, "*")."""
    lengths = {len(key) for key in wanted}
    stem_lengths = {len(key[0]) for key in wanted if key[-1] == "*"}
    found: Counter[tuple[str, ...]] = Counter()
    for paper in papers:
        text = index_paper(paper)
        seen: set[tuple[str, ...]] = set()
        for field in DEFAULT_FIELDS:
            terms = text.fields[field].terms
            for i, term in enumerate(terms):
                if term is None:
                    continue
                seen.update((term[:n], "*") for n in stem_lengths)
                seen.update(terms[i : i + n] for n in lengths)
        found.update(seen & wanted)
    return found


class Vocabulary:
    """What subscribers watch, drawn from the history: the concepts Hugging Face's keyword
    extractor gave its papers (one-word keywords as words and prefixes, longer ones as phrases
    and word pairs), its authors and organizations, each weighted by count ** 0.75.

    Words, phrases and prefixes found in more than BROAD of all papers (llm, reasoning,
    benchmark, "large language models"...) are left out: a watch on one of them alone would
    send a third of each day's papers or more.
    """

    def __init__(self, papers: Sequence[Paper], rng: random.Random):
        self.rng = rng
        words: Counter[str] = Counter()
        pairs: Counter[str] = Counter()
        phrases: Counter[str] = Counter()
        keywords: Counter[str] = Counter()
        authors: Counter[str] = Counter()
        orgs: Counter[str] = Counter()
        for paper in papers:
            for keyword in paper.ai_keywords:
                text = _quotable(keyword.lower())
                if any(c.isalnum() for c in text):
                    keywords[text] += 1
                found = _WORD.findall(text)
                if len(found) == 1 and found[0] == text and len(text) >= 3:
                    words[text] += 1
                if 2 <= len(found) <= 3:
                    phrases[" ".join(found)] += 1
                topical = [w for w in found if w not in _STOP]
                if len(topical) >= 2:
                    pairs[" ".join(topical[:2])] += 1
            authors.update(name for name in map(_quotable, paper.authors) if any(c.isalnum() for c in name))
            if paper.organization and any(c.isalnum() for c in paper.organization):
                orgs[_quotable(paper.organization)] += 1
        stems: Counter[str] = Counter()
        for word, count in words.items():
            if word.isalpha() and len(word) >= 7:
                stems[word[: rng.randint(5, len(word) - 2)]] += count
        wanted = {_folded(item) for table in (words, pairs, phrases) for item in table}
        wanted |= {(stem, "*") for stem in stems}
        frequencies = document_frequencies(papers, wanted)
        most = BROAD * len(papers)

        def narrow(table: Counter[str], suffix: tuple[str, ...] = ()) -> Counter[str]:
            return Counter(
                {item: n for item, n in table.items() if frequencies[_folded(item) + suffix] <= most}
            )

        words, pairs, phrases, stems = narrow(words), narrow(pairs), narrow(phrases), narrow(stems, ("*",))
        self.sizes = {
            "words": len(words),
            "word pairs": len(pairs),
            "phrases": len(phrases),
            "keywords": len(keywords),
            "authors": len(authors),
            "orgs": len(orgs),
            "prefixes": len(stems),
        }
        self._word = self._sampler(words)
        self._pair = self._sampler(pairs)
        self._phrase = self._sampler(phrases)
        self._keyword = self._sampler(keywords)
        self._author = self._sampler(authors)
        self._org = self._sampler(orgs)
        self._stem = self._sampler(stems)

    def _sampler(self, counts: Counter[str]) -> Callable[[], str]:
        items = list(counts)
        weights = list(accumulate(counts[item] ** 0.75 for item in items))
        choices = self.rng.choices
        return lambda: choices(items, cum_weights=weights)[0]

    def word(self) -> str:
        return self._word()

    def phrase(self) -> str:
        return f'"{self._phrase()}"'

    def term(self) -> str:
        """A word or, one time in three, a phrase."""
        return self.phrase() if self.rng.random() < 1 / 3 else self.word()

    def query(self) -> tuple[str, str]:
        """A query as a subscriber would write it, and what kind it is."""
        rng = self.rng
        kind = rng.choices(list(_QUERY_MIX), weights=list(_QUERY_MIX.values()))[0]
        if kind == "word":
            return self.word(), kind
        if kind == "two words":
            return self._pair(), kind
        if kind == "phrase":
            return self.phrase(), kind
        if kind == "or group":
            group = " OR ".join(self.term() for _ in range(rng.randint(2, 4)))
            return (f"({group}) {self.word()}" if rng.random() < 0.5 else group), kind
        if kind == "negation":
            return f"{self.term()} -{self.term()}", kind
        if kind == "prefix":
            return (f"{self._stem()}* {self.word()}" if rng.random() < 0.3 else f"{self._stem()}*"), kind
        if kind == "author":
            names = " OR ".join(f'author:"{self._author()}"' for _ in range(rng.randint(1, 3)))
            return names, kind
        if kind == "org":
            return f'org:"{self._org()}"' + (f" {self.term()}" if rng.random() < 0.5 else ""), kind
        if kind == "keyword":
            return f'keyword:"{self._keyword()}"', kind
        raise AssertionError(kind)


# How often each kind of query is written; "thresholds only" watches have no query.
_QUERY_MIX = {
    "word": 22,
    "two words": 16,
    "phrase": 14,
    "or group": 10,
    "negation": 8,
    "prefix": 7,
    "author": 9,
    "org": 4,
    "keyword": 6,
}
_THRESHOLDS_ONLY = 0.03


def make_subscribers(vocabulary: Vocabulary, count: int) -> tuple[list[Subscriber], Counter[str]]:
    """`count` subscribers of WATCHES_PER_SUBSCRIBER watches each, and how many watches of each kind."""
    rng = vocabulary.rng
    schedule = parse_schedule("daily 08:00")
    parsed: dict[str, Node] = {}
    kinds: Counter[str] = Counter()
    subscribers = []
    for number in range(count):
        watches = []
        for slot in range(WATCHES_PER_SUBSCRIBER):
            thresholds: dict = {}
            if rng.random() < _THRESHOLDS_ONLY:
                kinds["thresholds only"] += 1
                text, query = "", None
                thresholds = rng.choice(
                    [{"min_upvotes": 50}, {"min_upvotes": 100}, {"has_code": True, "min_stars": 100}]
                )
            else:
                text, kind = vocabulary.query()
                kinds[kind] += 1
                query = parsed.get(text)
                if query is None:
                    query = parsed[text] = parse_query(text)
                draw = rng.random()
                if draw < 0.10:
                    thresholds = {"min_upvotes": rng.choice([5, 10, 20])}
                elif draw < 0.14:
                    thresholds = {"has_code": True}
                elif draw < 0.18:
                    thresholds = {"rising": rng.choice([10, 20, 50])}
            if "rising" in thresholds:
                kinds["  of which rising"] += 1
            watches.append(Watch(name=f"w{slot}", query=query, query_text=text, **thresholds))
        subscribers.append(
            Subscriber(
                id=f"s{number:06d}",
                name=f"Subscriber {number}",
                email=None,
                timezone="UTC",
                schedule=schedule,
                watches=tuple(watches),
                channels=(),
            )
        )
    return subscribers, kinds


class Day:
    """The input of one daily match: the day's new papers, and the previous day's papers seen again."""

    def __init__(self, capture: Capture, previous: Capture | None):
        self.day = capture.day
        self.papers = capture.papers
        self.risers = previous.papers if previous else ()
        self.upvotes_before = {paper.id: (paper.upvotes or 0) // 2 for paper in self.risers}

    def match(self, index: WatchIndex, matcher=match_papers) -> list[Match]:
        return matcher(self.papers, index, self.upvotes_before, self.risers)


def timed(work: Callable[[], T]) -> tuple[float, T]:
    """Seconds taken by work(), and what it returned."""
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def match_days(days: Sequence[Day], index: WatchIndex, matcher=match_papers) -> list[list[Match]]:
    return [day.match(index, matcher) for day in days]


def among(results: list[list[Match]], ids: set[str]) -> list[list[Match]]:
    """The matches of the subscribers in `ids` only."""
    return [[m for m in found if m.subscriber_id in ids] for found in results]


def resident_megabytes() -> float:
    """The resident set now, from /proc (Linux), in MB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_megabytes() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux


def load_average() -> str:
    """The system's load averages: other work on the machine slows every figure here."""
    return ", ".join(f"{load:.2f}" for load in os.getloadavg())


def line(label: str, value: str) -> None:
    print(f"  {label:<50} {value}")


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(HISTORY), help="the JSON-lines history (.gz)")
    parser.add_argument("--subscribers", type=int, default=100_000, help="subscribers to make up")
    parser.add_argument("--days", type=int, default=30, help="the last DAYS days of the history to match")
    parser.add_argument(
        "--naive-subscribers", type=int, default=2_000, help="subscribers the naive loop runs on for DAYS"
    )
    parser.add_argument(
        "--naive-budget", type=float, default=120.0, help="run naive in full on one day if it fits (s)"
    )
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    history = Path(args.path)
    if not history.exists():
        print(f"no history at {history}: give its path", file=sys.stderr)
        return 2

    print("paperbot match benchmark")
    line("history", str(history))
    line("machine", f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    line("load average at the start (1, 5, 15 min)", load_average())

    # -- inputs (not timed against the goals) ---------------------------------------------
    captures = [c for c in read_capture(history) if c.papers]
    start = max(0, len(captures) - args.days)
    days = [Day(captures[i], captures[i - 1] if i else None) for i in range(start, len(captures))]
    busiest = max(days, key=lambda d: len(d.papers))
    rng = random.Random(args.seed)
    vocabulary = Vocabulary([p for c in captures for p in c.papers], rng)
    before_subscribers = resident_megabytes()
    build_seconds, (subscribers, kinds) = timed(lambda: make_subscribers(vocabulary, args.subscribers))
    subscribers_megabytes = resident_megabytes() - before_subscribers
    watches = sum(len(s.watches) for s in subscribers)
    print("\ninputs")
    line("vocabulary (whole history)", ", ".join(f"{n:,} {what}" for what, n in vocabulary.sizes.items()))
    line("subscribers x watches", f"{len(subscribers):,} x {WATCHES_PER_SUBSCRIBER} = {watches:,} watches")
    line("  made up in", f"{build_seconds:6.2f} s (seed {args.seed})")
    line("  distinct queries", f"{len({w.query_text for s in subscribers for w in s.watches}):,}")
    for kind, count in kinds.most_common():
        line(f"  {kind}", f"{count / watches:6.1%}")
    line(
        f"days: the last {len(days)} of the history",
        f"{days[0].day} to {days[-1].day}: {sum(len(d.papers) for d in days)} new papers "
        f"(+ {sum(len(d.risers) for d in days)} seen again)",
    )
    line(
        "one day: the busiest of them",
        f"{busiest.day}: {len(busiest.papers)} papers (+ {len(busiest.risers)})",
    )

    # -- with the index ---------------------------------------------------------------------
    before_index = resident_megabytes()
    index_seconds, index = timed(lambda: WatchIndex(subscribers))
    index_megabytes = resident_megabytes() - before_index
    day_seconds, day_found = min((timed(lambda: busiest.match(index)) for _ in range(3)), key=lambda r: r[0])
    days_seconds, days_found = timed(lambda: match_days(days, index))
    print("\nbot.match with the index")
    line("build WatchIndex", f"{index_seconds:6.2f} s  (resident set grew {index_megabytes:.0f} MB)")
    line(
        "match one day (best of 3)",
        f"{day_seconds:6.3f} s  ({len(day_found):,} matches; goal < {GOAL_DAY_SECONDS:.0f} s: "
        f"{verdict(day_seconds < GOAL_DAY_SECONDS)})",
    )
    line(
        f"match {len(days)} days, one day at a time",
        f"{days_seconds:6.3f} s  ({sum(map(len, days_found)):,} matches)",
    )
    line(
        "  papers per subscriber per day (mean)",
        f"{sum(map(len, days_found)) / len(subscribers) / len(days):6.2f} "
        f"of {sum(len(d.papers) for d in days) / len(days):.1f} new",
    )

    # -- the naive loop, same input, same run -----------------------------------------------
    print("\nnaive loop: match_naively, every watch tried on every paper")
    first = busiest.papers[:1]
    probe_seconds, _ = timed(lambda: match_naively(first, index))
    estimate = probe_seconds * (len(busiest.papers) + len(busiest.risers) * 0.3)
    if estimate < args.naive_budget:
        naive_day, naive_found = timed(lambda: busiest.match(index, match_naively))
        day_same = naive_found == day_found
        line("one day, every subscriber (measured)", f"{naive_day:6.2f} s")
    else:
        count = max(1, int(len(subscribers) * args.naive_budget / estimate))
        sample = subscribers[:count]
        naive_index = WatchIndex(sample)
        seconds, naive_found = timed(lambda: busiest.match(naive_index, match_naively))
        naive_day = seconds * len(index) / len(naive_index)
        ids = {s.id for s in sample}
        day_same = naive_found == among([day_found], ids)[0]
        line(
            f"one day, {count:,} subscribers (measured)",
            f"{seconds:6.2f} s  -> scaled to {len(subscribers):,}: {naive_day:6.2f} s (ESTIMATE)",
        )
    sample = subscribers[: args.naive_subscribers]
    naive_index = WatchIndex(sample)
    seconds, naive_days_found = timed(lambda: match_days(days, naive_index, match_naively))
    naive_days = seconds * len(index) / len(naive_index)
    days_same = naive_days_found == among(days_found, {s.id for s in sample})
    line(
        f"{len(days)} days, {len(sample):,} subscribers (measured)",
        f"{seconds:6.2f} s  -> scaled to {len(subscribers):,}: {naive_days:6.1f} s (ESTIMATE)",
    )
    line("same matches: one day", "yes" if day_same else "NO")
    line(f"same matches: {len(days)} days ({len(sample):,} subscribers)", "yes" if days_same else "NO")

    # -- against the goals -------------------------------------------------------------------
    day_ratio, days_ratio = naive_day / day_seconds, naive_days / days_seconds
    peak = peak_megabytes()
    print("\ngoals")
    day_met = verdict(day_seconds < GOAL_DAY_SECONDS)
    line("one day with the index", f"{day_seconds:6.3f} s   (goal < {GOAL_DAY_SECONDS:.0f} s: {day_met})")
    line(
        "ratio naive / index, one day",
        f"{day_ratio:6.0f}x   (goal >= {GOAL_RATIO:.0f}x: {verdict(day_ratio >= GOAL_RATIO)})",
    )
    line(
        f"ratio naive / index, {len(days)} days",
        f"{days_ratio:6.0f}x   (goal >= {GOAL_RATIO:.0f}x: {verdict(days_ratio >= GOAL_RATIO)})",
    )
    # What paperbot itself holds to match: the subscribers (parsed files) and the index; the
    # history, the vocabulary and the results kept for the naive comparison are the bench's own.
    held = subscribers_megabytes + index_megabytes
    line(
        "subscribers + index in memory",
        f"{held:6.0f} MB (goal < {GOAL_MEGABYTES:.0f} MB: {verdict(held < GOAL_MEGABYTES)}; "
        f"subscribers {subscribers_megabytes:.0f} MB, index {index_megabytes:.0f} MB)",
    )
    line("peak resident set, whole bench process", f"{peak:6.0f} MB (history and kept results included)")
    line("load average at the end (1, 5, 15 min)", load_average())
    line("same matches", "yes" if day_same and days_same else "NO")
    return 0 if day_same and days_same else 1


if __name__ == "__main__":
    sys.exit(main())
