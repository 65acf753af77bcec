"""How fast `paperbot import` stores the whole 479-day history, against the obvious baseline.

Run by hand, not by pytest:

    python bench/import_history.py [PATH]

PATH defaults to the team's shared history, ../shared/data/hf_daily_papers_2024-05-27_2026-03-31.jsonl.gz
relative to the repository. Prints:

- parse time: the whole history, the mean per day listing, and the real saved page
  tests/fixtures/hf/papers_date_2024-08-01.html through bot.sources.hf_page.parse_page;
- import time into a fresh database (parse and store, as `paperbot import` does; goal: under
  10 s), and re-import time (idempotent: nothing new);
- the store step alone against a baseline measured in the same run on the same parsed papers:
  plain sqlite3, one `INSERT OR REPLACE` and one commit per paper (default journal, as a
  first script would do it). The baseline writes papers only; paperbot also writes
  sightings and the full-text index, and merges with what is stored.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bot.captures import Capture, read_capture
from bot.pipeline import import_files
from bot.sources.hf_page import parse_page
from bot.store import _PAPER_COLUMNS, format_time, open_store

REPO = Path(__file__).resolve().parents[1]
HISTORY = REPO.parent / "shared" / "data" / "hf_daily_papers_2024-05-27_2026-03-31.jsonl.gz"
PAGE = REPO / "tests" / "fixtures" / "hf" / "papers_date_2024-08-01.html"
GOAL_SECONDS = 10.0


def timed(work) -> tuple[float, object]:
    """Seconds taken by work(), and what it returned."""
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def insert_row_by_row(path: Path, captures: list[Capture]) -> int:
    """The baseline: plain sqlite3, one INSERT OR REPLACE and one commit per paper."""
    conn = sqlite3.connect(path)
    conn.execute(f"create table papers ({', '.join(_PAPER_COLUMNS)}, primary key (id))")
    marks = ", ".join("?" * len(_PAPER_COLUMNS))
    rows = 0
    for capture in captures:
        stamp = format_time(capture.seen_at)
        for paper in capture.papers:
            conn.execute(
                f"insert or replace into papers values ({marks})",
                (
                    paper.id,
                    paper.title,
                    paper.abstract,
                    json.dumps(list(paper.authors), ensure_ascii=False),
                    format_time(paper.published_at) if paper.published_at else None,
                    paper.featured_on.isoformat() if paper.featured_on else None,
                    paper.upvotes,
                    paper.num_comments,
                    paper.github_repo,
                    paper.github_stars,
                    paper.project_page,
                    paper.ai_summary,
                    json.dumps(list(paper.ai_keywords), ensure_ascii=False),
                    paper.organization,
                    paper.organization_fullname,
                    paper.thumbnail,
                    stamp,
                    stamp,
                ),
            )
            conn.commit()
            rows += 1
    conn.close()
    return rows


def store_parsed(path: Path, captures: list[Capture]) -> None:
    """paperbot's store step alone, over captures already parsed."""
    with open_store(path) as store:
        for capture in captures:
            store.save_papers(capture.papers, capture.seen_at, capture.source)


def line(label: str, value: str) -> None:
    print(f"  {label:<50} {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(HISTORY), help="the JSON-lines history (.gz)")
    parser.add_argument("--page-runs", type=int, default=20, help="times to parse the saved page")
    args = parser.parse_args()
    history = Path(args.path)
    if not history.exists():
        print(f"no history at {history}: give its path", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="paperbot-bench-"))
    print("paperbot import benchmark")
    line("history", str(history))
    line(
        "machine",
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}",
    )
    line("databases in", str(work))

    # -- parse ---------------------------------------------------------------------------
    parse_runs = [timed(lambda: read_capture(history)) for _ in range(3)]
    parse_seconds = min(seconds for seconds, _ in parse_runs)
    captures: list[Capture] = parse_runs[0][1]
    items = sum(len(c.papers) for c in captures)
    html = PAGE.read_text(encoding="utf-8")
    page_times = [timed(lambda: parse_page(html, str(PAGE)))[0] for _ in range(args.page_runs)]
    page_papers = len(parse_page(html, str(PAGE)).papers)
    print("\nparse (best of 3 for the history)")
    line("day listings, papers", f"{len(captures)}, {items:,}")
    line("whole history: gunzip + JSON + Paper", f"{parse_seconds:6.2f} s")
    line("per day listing (mean)", f"{parse_seconds / len(captures) * 1000:6.2f} ms")
    line(
        f"saved page {PAGE.name} ({page_papers} papers)",
        f"{statistics.mean(page_times) * 1000:6.2f} ms per page "
        f"(mean of {args.page_runs}; best {min(page_times) * 1000:.2f} ms)",
    )

    # -- paperbot import, as the CLI runs it ----------------------------------------------
    db = work / "paperbot.db"
    with open_store(db) as store:
        import_seconds, (listings, stats) = timed(lambda: import_files(store, [str(history)]))
        reimport_seconds, (_, again) = timed(lambda: import_files(store, [str(history)]))
        papers, sightings = store.count_papers(), store.count_sightings()
    verdict = "met" if import_seconds < GOAL_SECONDS else "MISSED"
    print("\npaperbot import (parse + store) into a fresh database")
    line("import", f"{import_seconds:6.2f} s  (goal < {GOAL_SECONDS:.0f} s: {verdict})")
    line("  stored", f"{listings} listings, {stats.new:,} papers, {stats.sightings:,} sightings")
    line(
        "re-import (idempotent)", f"{reimport_seconds:6.2f} s  ({again.new} new, {again.sightings} sightings)"
    )
    line("database", f"{papers:,} papers, {sightings:,} sightings")
    if again.new or again.updated or again.sightings:
        print("  !! the re-import changed something: not idempotent", file=sys.stderr)

    # -- the store step alone, against the baseline --------------------------------------
    store_seconds, _ = timed(lambda: store_parsed(work / "store-only.db", captures))
    baseline_seconds, rows = timed(lambda: insert_row_by_row(work / "baseline.db", captures))
    print("\nstore step alone, same parsed papers, fresh files")
    line("paperbot Store.save_papers, one call per day", f"{store_seconds:6.2f} s")
    line(
        "baseline: INSERT OR REPLACE + commit per paper",
        f"{baseline_seconds:6.2f} s  ({rows:,} rows, {rows / baseline_seconds:,.0f} rows/s)",
    )
    line("ratio baseline / paperbot (store)", f"{baseline_seconds / store_seconds:6.1f}x")
    line(
        "ratio with parsing (baseline + parse) / import",
        f"{(baseline_seconds + parse_seconds) / import_seconds:6.1f}x",
    )

    for path in work.iterdir():
        path.unlink()
    work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
