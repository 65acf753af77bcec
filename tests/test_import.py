"""`paperbot import` as a user runs it: real captures, real SQLite files, exact counts."""

from __future__ import annotations

import gzip
import json
import re
import time
import zlib
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot.cli import main
from bot.store import open_store
from conftest import HF, capture_json

VERSION = re.compile(r"v\d+$")


def canonical(item: dict) -> str:
    """Worked out here, apart from the parser: the paper id without its arXiv version."""
    return VERSION.sub("", item["paper"]["id"])


def json_lines(days: dict[str, list[dict]]) -> str:
    return "".join(json.dumps({"date": day, "items": items}) + "\n" for day, items in days.items())


def real_days() -> dict[str, list[dict]]:
    """Three days of real /api/daily_papers items, as the JSON-lines history holds them."""
    return {
        "2025-10-31": capture_json("api_daily_papers_date_2025-10-31_reserialized.json"),
        "2026-05-08": capture_json("api_daily_papers_2026-05-08_prettyprinted.json"),
        "2026-06-12": capture_json("api_daily_papers_2026-06-12.json"),
    }


def import_(db: Path, *files: Path):
    env = {"PAPERBOT_CONFIG": "", "PAPERBOT_DB": None, "HF_TOKEN": None}
    return CliRunner().invoke(main, ["--db", str(db), "import", *map(str, files)], env=env)


def counts(db: Path) -> tuple[int, int]:
    with open_store(db) as store:
        return store.count_papers(), store.count_sightings()


def write_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "history.jsonl"
    path.write_text(json_lines(real_days()), encoding="utf-8")
    return path


def write_jsonl_gz(tmp_path: Path) -> Path:
    path = tmp_path / "history.jsonl.gz"
    path.write_bytes(gzip.compress(json_lines(real_days()).encode()))
    return path


def expected_from_days(days: dict[str, list[dict]]) -> tuple[int, int, int]:
    ids = {canonical(item) for items in days.values() for item in items}
    pairs = {(canonical(item), day) for day, items in days.items() for item in items}
    return len(days), len(ids), len(pairs)


KINDS = {
    "api-json": (lambda tmp: HF / "api_daily_papers_2026-06-12.json", (1, 30, 30)),
    "page-html": (lambda tmp: HF / "papers_date_2024-08-01.html", (1, 13, 13)),
    "json-lines": (write_jsonl, expected_from_days(real_days())),
    "json-lines-gz": (write_jsonl_gz, expected_from_days(real_days())),
}


def test_the_derived_json_lines_hold_what_the_captures_hold():
    listings, papers, sightings = expected_from_days(real_days())
    assert (listings, papers, sightings) == (3, 30 + 37 + 19, 30 + 37 + 19)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_import_stores_exactly_what_the_file_lists_and_twice_changes_nothing(tmp_path, kind):
    build, (listings, papers, sightings) = KINDS[kind]
    path, db = build(tmp_path), tmp_path / "paperbot.db"

    first = import_(db, path)

    assert first.exit_code == 0, first.output
    assert f"imported {listings} listings, {sightings} papers: {papers} new, 0 updated" in first.output
    assert f"{sightings} new sightings" in first.output
    assert counts(db) == (papers, sightings)

    second = import_(db, path)

    assert second.exit_code == 0, second.output
    assert f"{sightings} papers: 0 new, 0 updated, 0 new sightings" in second.output
    assert counts(db) == (papers, sightings)


def test_the_same_listing_from_plain_and_gzipped_json_lines_is_stored_once(tmp_path):
    db = tmp_path / "paperbot.db"
    _, papers, sightings = expected_from_days(real_days())

    assert import_(db, write_jsonl(tmp_path)).exit_code == 0
    again = import_(db, write_jsonl_gz(tmp_path))

    assert "0 new, 0 updated, 0 new sightings" in again.output
    assert counts(db) == (papers, sightings)


def test_imported_papers_are_searchable_and_dated_by_their_listing(tmp_path):
    db = tmp_path / "paperbot.db"
    import_(db, write_jsonl(tmp_path))

    with open_store(db) as store:
        found = store.papers(search="sparse attention")
        sighting = store.sightings(found[0].id)

    assert "MiniMax Sparse Attention" in [p.title for p in found]
    assert sighting[0]["seen_at"].startswith("2026-06-12T00:00:00")
    assert sighting[0]["source"] == "import:date=2026-06-12"


def cut_line(text: str, number: int) -> str:
    """The JSON-lines text with line `number` (1-based) cut in the middle, as a crash leaves it."""
    lines = text.splitlines(keepends=True)
    lines[number - 1] = lines[number - 1][: len(lines[number - 1]) // 2] + "\n"
    return "".join(lines)


@pytest.mark.parametrize("broken_line", [1, 2, 3])
def test_a_cut_line_names_the_file_and_line_and_stores_nothing(tmp_path, broken_line):
    path = tmp_path / "broken.jsonl"
    path.write_text(cut_line(json_lines(real_days()), broken_line), encoding="utf-8")
    db = tmp_path / "paperbot.db"

    result = import_(db, path)

    assert result.exit_code == 3
    assert f"{path}:{broken_line}" in result.output
    assert "Traceback" not in result.output
    assert counts(db) == (0, 0)  # not even the good lines before the broken one


def test_a_broken_file_after_a_good_one_stores_nothing(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text(cut_line(json_lines(real_days()), 3), encoding="utf-8")
    db = tmp_path / "paperbot.db"

    result = import_(db, HF / "api_daily_papers_2026-06-12.json", broken)

    assert result.exit_code == 3 and f"{broken}:3" in result.output
    assert counts(db) == (0, 0)


def test_a_damaged_gzip_is_one_clear_line(tmp_path):
    data = bytearray(gzip.compress(json_lines(real_days()).encode()))
    middle = len(data) // 2
    data[middle : middle + 32] = b"\xff" * 32
    with pytest.raises(zlib.error):  # what makes the case: not the CRC error gzip reports itself
        gzip.decompress(bytes(data))
    path = tmp_path / "damaged.jsonl.gz"
    path.write_bytes(bytes(data))
    db = tmp_path / "paperbot.db"

    result = import_(db, path)

    assert result.exit_code == 3
    assert f"{path} is a damaged gzip file" in result.output
    assert "Traceback" not in result.output
    assert counts(db) == (0, 0)


def test_a_line_separator_inside_an_abstract_is_not_a_line_end(tmp_path):
    # JSON allows a raw U+2028 in a string, and json.dumps(ensure_ascii=False) writes one.
    items = capture_json("api_daily_papers_2026-06-12.json")[:2]
    items[0]["paper"]["summary"] = "First line of the abstract.\u2028Second line."
    path = tmp_path / "unicode.jsonl"
    path.write_text(json.dumps({"date": "2026-06-12", "items": items}, ensure_ascii=False) + "\n")
    assert "\u2028" in path.read_text(encoding="utf-8")
    db = tmp_path / "paperbot.db"

    result = import_(db, path)

    assert result.exit_code == 0, result.output
    assert "imported 1 listings, 2 papers: 2 new" in result.output
    with open_store(db) as store:
        paper = store.get_paper(canonical(items[0]))
    assert paper.abstract == "First line of the abstract. Second line."


def test_importing_the_whole_history_stores_each_paper_once_and_each_day_once(tmp_path, history_path):
    days: dict[str, list[dict]] = {}
    with gzip.open(history_path, "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            days[record["date"]] = record["items"]
    items = sum(len(listed) for listed in days.values())
    ids = {canonical(item) for listed in days.values() for item in listed}
    pairs = {(canonical(item), day) for day, listed in days.items() for item in listed}
    assert (len(days), items) == (479, 7414)
    db = tmp_path / "paperbot.db"

    started = time.perf_counter()
    first = import_(db, history_path)
    took = time.perf_counter() - started

    assert first.exit_code == 0, first.output
    assert (
        f"imported 479 listings, 7414 papers: {len(ids)} new, 0 updated, {len(pairs)} new sightings"
        in first.output
    )
    with open_store(db) as store:
        assert store.count_papers() == len(ids)
        stored = {
            (row["paper_id"], row["seen_at"][:10])
            for row in store.db.query("select paper_id, seen_at from sightings")
        }
        assert store.count_sightings() == len(pairs)
    assert stored == pairs
    assert took < 15, f"importing the history took {took:.1f} s"

    again = import_(db, history_path)

    assert again.exit_code == 0, again.output
    assert "7414 papers: 0 new, 0 updated, 0 new sightings" in again.output
    assert counts(db) == (len(ids), len(pairs))


def test_an_old_api_capture_without_listing_days_is_dated_by_its_file_name(tmp_path):
    # The 2024-05-27 API response predates submittedOnDailyAt: the requested day is in the name.
    db = tmp_path / "paperbot.db"
    name = "api_daily_papers_date_2024-05-27_reserialized.json"
    assert all("submittedOnDailyAt" not in item["paper"] for item in capture_json(name))
    assert import_(db, HF / name).exit_code == 0

    with open_store(db) as store:
        papers = store.papers(since=date(2024, 5, 27), until=date(2024, 5, 27))
        sighting = store.sightings(papers[0].id)[0]
    assert len(papers) == 13
    assert sighting["seen_at"].startswith("2024-05-27T00:00:00")


def test_a_capture_whose_day_cannot_be_told_is_refused_with_the_fix(tmp_path):
    db = tmp_path / "paperbot.db"
    undated = tmp_path / "saved.json"
    undated.write_bytes((HF / "api_daily_papers_date_2024-05-27_reserialized.json").read_bytes())

    result = import_(db, undated)

    assert result.exit_code == 3
    assert "saved.json" in result.output and "put the day in the file name" in result.output
    assert not db.exists() or counts(db) == (0, 0)
