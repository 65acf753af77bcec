"""The SQLite store as paperbot's user meets it: real files in tmp_path, real captures."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import pytest

from bot.errors import StoreError
from bot.models import FetchResult, Paper
from bot.sources import hf_api, hf_page
from bot.store import APPLICATION_ID, SCHEMA_VERSION, SaveStats, open_store
from conftest import capture_bytes, reserve_row

T0 = datetime(2026, 6, 12, 8, 0, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)
T2 = T0 + timedelta(hours=2)
T3 = T0 + timedelta(hours=3)
LISTING = "api:date=2026-06-12"
PAGE_DAY = date(2024, 8, 1)


def june_papers() -> list[Paper]:
    """The 30 papers of the real /api/daily_papers capture of 2026-06-12."""
    return hf_api.parse_daily_papers(capture_bytes("api_daily_papers_2026-06-12.json"))


def page_papers() -> tuple[list[Paper], list[Paper]]:
    """The real 2024-08-01 page read twice: its embedded API JSON, and its cards alone."""
    html = capture_bytes("papers_date_2024-08-01.html")
    return hf_page.parse_page_props(html), hf_page.parse_page_cards(html, day=PAGE_DAY)


def row(store, paper_id: str) -> dict:
    return store.db["papers"].get(paper_id)


# -- saving papers ---------------------------------------------------------------------


def test_saving_the_same_listing_twice_adds_nothing(store):
    papers = june_papers()
    first = store.save_papers(papers, T0, LISTING)
    assert first == SaveStats(seen=30, new=30, updated=0, sightings=30)
    stored = list(store.iter_papers())

    again = store.save_papers(papers, T0, LISTING)

    assert again == SaveStats(seen=30, new=0, updated=0, sightings=0)
    assert store.count_papers() == 30
    assert store.count_sightings() == 30
    assert list(store.iter_papers()) == stored


def test_a_newer_sighting_updates_the_counts(store):
    papers = june_papers()
    store.save_papers(papers, T0, LISTING)
    later = [p.replace(upvotes=(p.upvotes or 0) + 40, num_comments=(p.num_comments or 0) + 1) for p in papers]

    stats = store.save_papers(later, T1, LISTING)

    assert stats == SaveStats(seen=30, new=0, updated=30, sightings=30)
    sparse = next(p for p in papers if p.title == "MiniMax Sparse Attention")
    stored = store.get_paper(sparse.id)
    assert stored.upvotes == sparse.upvotes + 40 == 143
    assert stored.num_comments == (sparse.num_comments or 0) + 1
    assert stored.abstract == sparse.abstract and stored.authors == sparse.authors
    assert [s["upvotes"] for s in store.sightings(sparse.id)] == [103, 143]
    assert row(store, sparse.id)["first_seen_at"].startswith("2026-06-12T08:00")
    assert row(store, sparse.id)["last_seen_at"].startswith("2026-06-12T09:00")


def test_a_page_card_never_erases_what_the_api_stored(store):
    from_api, from_cards = page_papers()
    assert [p.id for p in from_api] == [p.id for p in from_cards]
    assert all(not p.abstract and not p.authors for p in from_cards)  # what makes the case
    store.save_papers(from_api, T0, "api:date=2024-08-01")
    cards = [p.replace(upvotes=p.upvotes + 5) for p in from_cards]

    store.save_papers(cards, T1, "page:date=2024-08-01")

    for api, card in zip(from_api, cards, strict=True):
        stored = store.get_paper(api.id)
        assert stored.abstract == api.abstract and stored.abstract
        assert stored.authors == api.authors and stored.authors
        assert stored.published_at == api.published_at
        assert stored.upvotes == card.upvotes  # the newer count wins
    llama = store.papers(search="Abhimanyu Dubey")  # the index still knows the authors
    assert [p.title for p in llama] == ["The Llama 3 Herd of Models"]


def test_an_older_capture_imported_later_only_fills_gaps(store):
    from_api, from_cards = page_papers()
    newer = [p.replace(upvotes=p.upvotes + 10) for p in from_cards]
    store.save_papers(newer, T2, "page:date=2024-08-01")

    stats = store.save_papers(from_api, T0, "import:date=2024-08-01")

    assert stats.new == 0 and stats.updated == len(from_api) and stats.sightings == len(from_api)
    for api, card in zip(from_api, newer, strict=True):
        stored = store.get_paper(api.id)
        assert stored.abstract == api.abstract and stored.authors == api.authors  # gaps filled
        assert stored.upvotes == card.upvotes != api.upvotes  # the older count does not win
        assert row(store, api.id)["first_seen_at"].startswith("2026-06-12T08:00")  # moved back
        assert row(store, api.id)["last_seen_at"].startswith("2026-06-12T10:00")  # not moved
    assert store.new_papers(after=T1) == []  # first seen before T1 now


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _contains(haystack: list[str], phrase: list[str]) -> bool:
    return any(haystack[i : i + len(phrase)] == phrase for i in range(len(haystack) - len(phrase) + 1))


def expected_matches(papers: list[Paper], text: str) -> set[str]:
    """Worked out apart from SQLite: every word of `text` (a phrase if it holds '-') appears
    in the title, abstract, authors or keywords."""
    phrases = [_words(word) for word in text.split()]
    found = set()
    for paper in papers:
        columns = [
            _words(paper.title),
            _words(paper.abstract),
            _words(" ".join(paper.authors)),
            _words(" ".join(paper.ai_keywords)),
        ]
        if all(any(_contains(column, phrase) for column in columns) for phrase in phrases):
            found.add(paper.id)
    return found


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("Psychometric", "Rethinking Psychometric Evaluation of LLMs"),  # a title word
        ("Etienne Casanova", "On the Limits of LLM Adaptability"),  # an author
        ("LLM-as-a-judge", "On the Limits of LLM Adaptability"),  # a keyword
        ("Grouped Query Attention", "MiniMax Sparse Attention"),  # a keyword
    ],
)
def test_search_finds_papers_by_title_word_author_and_keyword(store, text, title):
    papers = june_papers()
    store.save_papers(papers, T0, LISTING)

    found = store.papers(search=text)

    assert {p.id for p in found} == expected_matches(papers, text)
    assert any(p.title.startswith(title) for p in found)
    assert len(found) < len(papers)


def test_search_for_a_word_nowhere_finds_nothing(store):
    store.save_papers(june_papers(), T0, LISTING)
    assert store.papers(search="nosuchwordanywhere") == []


@pytest.mark.parametrize(
    "text",
    ["-", ":", '"', "*", "LLM -", "LLM:", 'say "hi', "agent*", "-model", "NOT", "a AND", "(", "NEAR(x"],
)
def test_search_with_fts_syntax_characters_never_errors(store, text):
    store.save_papers(june_papers(), T0, LISTING)

    found = store.papers(search=text)

    assert isinstance(found, list)


def test_a_stray_syntax_character_does_not_change_what_is_found(store):
    store.save_papers(june_papers(), T0, LISTING)
    plain = store.papers(search="LLM agents")
    assert plain
    for noisy in ("LLM agents -", "LLM: agents", '"LLM agents', "LLM * agents"):
        assert store.papers(search=noisy) == plain


# -- what is new, what is rising ------------------------------------------------------


def test_new_papers_are_exactly_those_first_seen_after_a_time(store):
    papers = june_papers()
    first, second, third = papers[:10], papers[10:20], papers[20:]
    store.save_papers(first, T0, LISTING)
    store.save_papers(first + second, T1, LISTING)
    store.save_papers(first + second + third, T2, LISTING)  # first and second seen again

    def ids(found):
        return [p.id for p in found]

    assert set(ids(store.new_papers(after=T0))) == {p.id for p in second + third}
    assert len(store.new_papers(after=T0)) == 20
    assert set(ids(store.new_papers(after=T1))) == {p.id for p in third}
    assert set(ids(store.new_papers(after=T0, until=T1))) == {p.id for p in second}
    assert store.new_papers(after=T2) == []
    assert len(store.new_papers(after=T0 - timedelta(seconds=1))) == 30


def test_upvote_crossings_finds_only_papers_that_crossed_after_the_time(store):
    papers = june_papers()
    crossed, at_threshold, already_above, already_at, never, crossed_earlier, brand_new = papers[:7]
    history = {
        T0: [
            crossed.replace(upvotes=10),
            at_threshold.replace(upvotes=49),
            already_above.replace(upvotes=70),
            already_at.replace(upvotes=50),
            never.replace(upvotes=10),
            crossed_earlier.replace(upvotes=10),
        ],
        T1: [crossed_earlier.replace(upvotes=55)],
        T2: [
            crossed.replace(upvotes=60),
            at_threshold.replace(upvotes=50),
            already_above.replace(upvotes=80),
            already_at.replace(upvotes=60),
            never.replace(upvotes=40),
            crossed_earlier.replace(upvotes=60),
            brand_new.replace(upvotes=90),
        ],
    }
    for seen_at, listing in history.items():
        store.save_papers(listing, seen_at, LISTING)

    crossings = {c.paper.id: c for c in store.upvote_crossings(50, after=T1)}

    assert set(crossings) == {crossed.id, at_threshold.id}
    assert (crossings[crossed.id].before, crossings[crossed.id].now) == (10, 60)
    assert (crossings[at_threshold.id].before, crossings[at_threshold.id].now) == (49, 50)
    assert crossings[crossed.id].paper.title == crossed.title
    assert {c.paper.id for c in store.upvote_crossings(50, after=T0)} == {
        crossed.id,
        at_threshold.id,
        crossed_earlier.id,
    }
    assert store.upvote_crossings(50, after=T2) == []
    assert store.upvote_crossings(100, after=T1) == []


# -- the schema -------------------------------------------------------------------------


def user_version(path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def test_a_fresh_database_is_at_the_current_schema_version(tmp_path):
    path = tmp_path / "paperbot.db"
    with open_store(path):
        pass
    assert user_version(path) == SCHEMA_VERSION >= 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reopening_keeps_the_data_and_does_not_migrate_again(tmp_path, caplog):
    path = tmp_path / "paperbot.db"
    caplog.set_level(logging.INFO, logger="bot.store")
    with open_store(path) as store:
        store.save_papers(june_papers(), T0, LISTING)
    assert "migrated" in caplog.text
    caplog.clear()

    with open_store(path) as store:
        assert store.count_papers() == 30 and store.count_sightings() == 30
        assert len(store.papers(search="Sparse Attention")) >= 1

    assert "migrated" not in caplog.text
    assert user_version(path) == SCHEMA_VERSION


@pytest.mark.parametrize("step", range(1, 12))
def test_a_first_migration_killed_at_any_step_is_finished_by_the_next_open(tmp_path, monkeypatch, step):
    """sqlite-utils commits each table and index as it makes it, so a first run killed while
    creating the database leaves part of it: the next run finishes it, and search works."""
    import sqlite_utils

    path = tmp_path / "paperbot.db"
    made = {"steps": 0}
    create, create_index = sqlite_utils.db.Table.create, sqlite_utils.db.Table.create_index

    def killed_at_step(real):
        def step_once(*args, **kwargs):
            made["steps"] += 1
            if made["steps"] == step:
                raise sqlite3.OperationalError("killed")
            return real(*args, **kwargs)

        return step_once

    monkeypatch.setattr(sqlite_utils.db.Table, "create", killed_at_step(create))
    monkeypatch.setattr(sqlite_utils.db.Table, "create_index", killed_at_step(create_index))
    with pytest.raises(StoreError, match="killed"):
        open_store(path)
    monkeypatch.undo()
    with open_store(path) as store:
        store.save_papers(june_papers(), T0, LISTING)
        assert len(store.papers(search="Sparse Attention")) >= 1
    assert user_version(path) == SCHEMA_VERSION


@pytest.mark.parametrize("done", range(1, SCHEMA_VERSION + 1))
def test_a_migration_that_ran_but_was_not_recorded_runs_again_harmlessly(tmp_path, done):
    """Killed between a migration's last step and recording the new version: it runs again."""
    import sqlite_utils

    from bot.store import MIGRATIONS

    path = tmp_path / "paperbot.db"
    db = sqlite_utils.Database(path)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")  # as open_store marks a new database
    for migrate in MIGRATIONS[:done]:
        migrate(db)
    db.execute(f"PRAGMA user_version = {done - 1}")
    db.conn.commit()
    db.close()
    with open_store(path) as store:
        store.save_papers(june_papers(), T0, LISTING)
        assert store.count_papers() == 30
    assert user_version(path) == SCHEMA_VERSION


@pytest.mark.parametrize("interrupted", [False, True])
@pytest.mark.parametrize("sqlite_version", [sqlite3.sqlite_version_info, (3, 34, 1)])
def test_a_ledger_of_schema_4_keeps_its_messages_when_they_move_to_their_own_table(
    tmp_path, monkeypatch, sqlite_version, interrupted
):
    """Schema 5 keeps each digest's message apart from its row; a ledger made before keeps its
    pending digests' bytes, so their retries send the same message. SQLite before 3.35 (Debian
    11) cannot drop the old column: it stays, emptied. An upgrade killed halfway is finished."""
    import sqlite_utils

    from bot.store import MIGRATIONS

    monkeypatch.setattr(sqlite3, "sqlite_version_info", sqlite_version)

    path = tmp_path / "paperbot.db"
    db = sqlite_utils.Database(path)
    for migrate in MIGRATIONS[:4]:
        migrate(db)
    db.execute("PRAGMA user_version = 4")
    db["deliveries"].insert(
        {
            "subscriber_id": "alice",
            "channel": "email",
            "kind": "email",
            "period": "2026-06-12",
            "recipient": "alice@example.org",
            "state": "pending",
            "attempts": 1,
            "message": b"Subject: hi\r\n",
        }
    )
    db.conn.commit()
    if interrupted:  # a run killed after the table was made and the messages copied
        db.execute("create table delivery_messages (delivery_id integer primary key, message blob)")
        db.execute("insert into delivery_messages select id, message from deliveries")
        db.conn.commit()
    db.close()
    with open_store(path) as store:
        (due,) = store.deliveries_to_send(T0 + timedelta(days=1))
        delivery = store.get_delivery(due.id)
        assert (
            store.stored_message(due.id) == delivery.message == b"Subject: hi\r\n" and delivery.attempts == 1
        )
        columns = store.db["deliveries"].columns_dict
        if sqlite_version >= (3, 35):
            assert "message" not in columns
        else:
            left = store.db.execute("select count(*) from deliveries where message is not null")
            assert left.fetchone()[0] == 0
    assert user_version(path) == SCHEMA_VERSION == 7


def schema_5(path) -> None:
    import sqlite_utils

    from bot.store import MIGRATIONS

    db = sqlite_utils.Database(path)
    for migrate in MIGRATIONS[:5]:
        migrate(db)
    db.execute("PRAGMA user_version = 5")
    db.conn.commit()
    db.close()


def test_a_paperbot_that_had_the_database_open_before_the_upgrade_cannot_read_a_packed_message(tmp_path):
    """Schema 6 packs the messages. An older paperbot refuses a database of schema 6 when it
    opens it; one that had it open already checks nothing more, so its reads and writes of
    messages must fail (it then sends nothing) rather than take the packed bytes for the mail."""
    path = tmp_path / "paperbot.db"
    schema_5(path)
    old = sqlite3.connect(path)  # the older paperbot, its statements made against schema 5
    read = "select message from delivery_messages where delivery_id = ?"
    assert old.execute(read, [1]).fetchone() is None
    with open_store(path) as store:
        delivery = reserve_row(store, message=(b"Subject: hi\r\n\r\nhello\r\n", "<a@x>", "hi"))
        assert delivery.state == "pending" and store.stored_message(delivery.id).endswith(b"hello\r\n")
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        old.execute(read, [delivery.id])
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        old.execute("insert into delivery_messages (delivery_id, message) values (?, ?)", [2, b"x"])
    old.close()


def test_two_processes_upgrading_to_schema_6_at_once_both_succeed(tmp_path):
    """Each found the step to do before the other did it: the second's step fails, and it finds
    the step done, rather than say the database is not paperbot's."""
    import sqlite_utils

    from bot.store import MIGRATIONS

    path = tmp_path / "paperbot.db"
    schema_5(path)
    first, second = sqlite_utils.Database(path), sqlite_utils.Database(path)
    before = (second.table_names(), second["delivery_messages"].columns_dict)

    class Late:  # the second process: what it read before the first one's steps, then the truth
        def __init__(self, db):
            self.db, self.seen = db, set()

        def execute(self, *args):
            return self.db.execute(*args)

        def table_names(self):
            return self.db.table_names() if "tables" in self.seen or self.seen.add("tables") else before[0]

        def __getitem__(self, name):
            if "columns" in self.seen or self.seen.add("columns"):
                return self.db[name]
            return type("Table", (), {"columns_dict": before[1]})()

    MIGRATIONS[5](first)
    MIGRATIONS[5](Late(second))  # both steps fail, as done: no error
    assert "encoding" in second["delivery_bodies"].columns_dict
    assert "delivery_messages" not in second.table_names()
    first.close()
    second.close()


def test_a_database_from_a_newer_paperbot_says_to_upgrade(tmp_path):
    path = tmp_path / "paperbot.db"
    with open_store(path):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    with pytest.raises(StoreError, match="upgrade paperbot") as caught:
        open_store(path)

    assert str(path) in str(caught.value)
    assert user_version(path) == SCHEMA_VERSION + 1  # left as it was


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("hello, I am a text file, not SQLite\n" * 100)

    with pytest.raises(StoreError, match="cannot open the database") as caught:
        open_store(path)

    assert str(path) in str(caught.value)
    assert path.read_text().startswith("hello")


@pytest.mark.parametrize("table", ["papers", "deliveries", "meta"])
def test_another_programs_database_is_a_store_error_and_left_untouched(tmp_path, table):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"create table {table} (name text, message blob)")

    with pytest.raises(StoreError, match="tables that paperbot did not make: is it a paperbot database"):
        open_store(path)
    with sqlite3.connect(path) as conn:  # left as it was
        assert [name for (name,) in conn.execute("select name from sqlite_master")] == [table]
        assert [c[1] for c in conn.execute(f"pragma table_info({table})")] == ["name", "message"]
        assert conn.execute("pragma user_version").fetchone()[0] == 0


def test_a_missing_folder_is_a_store_error(tmp_path):
    path = tmp_path / "no" / "such" / "folder" / "paperbot.db"

    with pytest.raises(StoreError, match="does not exist") as caught:
        open_store(path)

    assert str(path.parent) in str(caught.value)
    assert not path.parent.exists()


def test_a_reader_is_not_blocked_by_an_open_write_transaction(tmp_path):
    path = tmp_path / "paperbot.db"
    papers = june_papers()
    writer = open_store(path)
    writer.save_papers(papers, T0, LISTING)
    # EXCLUSIVE shuts readers out of a rollback-journal database; in WAL it does not.
    writer.db.execute("BEGIN EXCLUSIVE")
    writer.db.execute("update papers set title = 'half-written' where id = ?", [papers[0].id])
    try:
        reader = open_store(path)
        reader.db.execute("PRAGMA busy_timeout = 200")  # fail fast if blocked
        assert reader.count_papers() == 30
        assert reader.get_paper(papers[0].id).title == papers[0].title  # not the uncommitted one
        reader.close()
    finally:
        writer.db.conn.rollback()
        writer.close()


def test_another_process_can_read_during_a_write(tmp_path):
    path = tmp_path / "paperbot.db"
    papers = june_papers()
    writer = open_store(path)
    writer.save_papers(papers, T0, LISTING)
    writer.db.execute("BEGIN EXCLUSIVE")
    writer.db.execute("delete from sightings")
    script = (
        "import json, sys\n"
        "from bot.store import open_store\n"
        "store = open_store(sys.argv[1])\n"
        "store.db.execute('PRAGMA busy_timeout = 200')\n"
        "title = store.get_paper(sys.argv[2]).title\n"
        "print(json.dumps([store.count_papers(), store.count_sightings(), title]))\n"
    )
    try:
        reading = subprocess.run(
            [sys.executable, "-c", script, str(path), papers[0].id],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        writer.db.conn.rollback()
        writer.close()
    assert reading.returncode == 0, reading.stderr
    assert json.loads(reading.stdout) == [30, 30, papers[0].title]


# -- fetches ----------------------------------------------------------------------------


def fetch_result(listing: str, papers, at: datetime, **extra) -> FetchResult:
    return FetchResult(
        f"https://huggingface.co/api/daily_papers?{listing}", "api", listing, tuple(papers), at, **extra
    )


def health(store) -> dict[tuple[str, str], dict]:
    return {(e["source"], e["listing"]): e for e in store.fetch_health()}


def test_save_fetch_records_ok_empty_and_not_modified(store):
    papers = june_papers()

    ok = store.save_fetch(fetch_result("date=2026-06-12", papers, T0, etag='"v1"'))
    empty = store.save_fetch(fetch_result("date=2026-06-13", (), T0))
    unchanged = store.save_fetch(fetch_result("date=2026-06-12", (), T1, etag='"v1"', not_modified=True))

    assert ok.new == 30 and empty == unchanged == SaveStats(0, 0, 0, 0)
    assert store.count_papers() == 30 and store.count_sightings() == 30
    statuses = [r["status"] for r in store.db.query("select status from fetches order by id")]
    assert statuses == ["ok", "empty", "not-modified"]
    by_listing = health(store)
    assert by_listing[("api", "date=2026-06-12")]["last"]["status"] == "not-modified"
    assert by_listing[("api", "date=2026-06-12")]["fetches"] == 2
    assert by_listing[("api", "date=2026-06-13")]["last"]["status"] == "empty"
    assert by_listing[("api", "date=2026-06-12")]["errors_in_a_row"] == 0


def test_fetch_health_counts_errors_in_a_row_and_resets_after_a_good_fetch(store):
    listing = "date=2026-06-12"
    store.save_fetch(fetch_result(listing, june_papers(), T0))
    for hour in (1, 2, 3):
        store.record_fetch(
            url="https://huggingface.co/api/daily_papers",
            source="api",
            listing=listing,
            started_at=T0 + timedelta(hours=hour),
            status="error",
            error="HTTP 503",
        )

    failing = health(store)[("api", listing)]
    assert failing["errors_in_a_row"] == 3
    assert failing["last"]["error"] == "HTTP 503"
    assert failing["last_good"].startswith("2026-06-12T08:00")

    store.save_fetch(fetch_result(listing, june_papers(), T3 + timedelta(minutes=1)))

    recovered = health(store)[("api", listing)]
    assert recovered["errors_in_a_row"] == 0
    assert recovered["last_good"].startswith("2026-06-12T11:01")
    assert recovered["fetches"] == 5


def test_fetch_health_keeps_polls_with_the_same_time_in_order(store):
    listing = "trending"
    store.save_fetch(fetch_result(listing, june_papers(), T0))
    store.record_fetch(url="u", source="api", listing=listing, started_at=T0, status="error", error="boom")
    assert health(store)[("api", listing)]["errors_in_a_row"] == 1
    store.save_fetch(fetch_result(listing, june_papers(), T0))
    assert health(store)[("api", listing)]["errors_in_a_row"] == 0


def test_validators_are_those_of_the_last_good_fetch(store):
    listing = "date=2026-06-12"
    assert store.validators("api", listing) == (None, None)
    modified = "Fri, 12 Jun 2026 08:00:00 GMT"
    store.save_fetch(fetch_result(listing, june_papers(), T0, etag='"v1"', last_modified=modified))
    store.record_fetch(url="u", source="api", listing=listing, started_at=T1, status="error", error="503")

    assert store.validators("api", listing) == ('"v1"', modified)  # the error does not count

    store.save_fetch(fetch_result(listing, (), T2, etag='"v1"', last_modified=modified, not_modified=True))
    assert store.validators("api", listing) == ('"v1"', modified)
    store.save_fetch(fetch_result(listing, june_papers(), T3, etag='"v2"'))
    assert store.validators("api", listing) == ('"v2"', None)
    assert store.validators("page", listing) == (None, None)
    assert store.validators("api", "date=2026-06-13") == (None, None)


def test_stored_times_are_the_instant_in_utc_whatever_zone_and_fold():
    """The ledger orders rows by the text of their times: one instant is one text, and the two
    Berlin hours of the autumn change (equal as datetimes, an hour apart) are two texts."""
    from zoneinfo import ZoneInfo

    from bot.store import format_time

    berlin = ZoneInfo("Europe/Berlin")
    first = datetime(2026, 10, 25, 2, 30, tzinfo=berlin)
    second = first.replace(fold=1)
    assert format_time(T0) == "2026-06-12T08:00:00.000000+00:00"
    assert format_time(T0.astimezone(berlin)) == format_time(T0)
    assert format_time(first) == "2026-10-25T00:30:00.000000+00:00"
    assert format_time(second) == "2026-10-25T01:30:00.000000+00:00"
    assert format_time(first.astimezone(UTC)) < format_time(second.astimezone(UTC))
    with pytest.raises(ValueError, match="naive"):
        format_time(datetime(2026, 6, 12, 8, 0))
