"""The only module that touches SQLite (through sqlite-utils).

Tables (schema version in PRAGMA user_version, migrated on open):

- papers     one row per canonical id: the latest values, first_seen_at (when paperbot
             first saw it; an older capture imported later moves it back, never forward)
             and last_seen_at.
- sightings  every time a paper was seen: when, in which listing, at which rank, with
             which upvotes, stars and comments. The history behind "rising" alerts.
- fetches    every poll: URL, listing, status (ok, empty, not-modified, error), counts,
             ETag / Last-Modified for conditional requests, the error.
- papers_fts full-text index over title, abstract, authors and keywords.

WAL mode, so a second process may read while one writes.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import sqlite_utils
import zstandard
from sqlite_utils.db import NotFoundError

from bot.errors import StoreError
from bot.models import FetchResult, Paper

__all__ = [
    "Crossing",
    "Delivery",
    "FetchRecord",
    "PackedMessage",
    "SaveStats",
    "SCHEMA_VERSION",
    "Store",
    "Window",
    "format_time",
    "open_store",
    "pack_message",
]

log = logging.getLogger(__name__)


def format_time(moment: datetime) -> str:
    """UTC ISO text with a fixed width, so that text order is time order in SQL."""
    if moment.tzinfo is UTC:  # a run writes the same few moments thousands of times
        text = _UTC_TEXTS.get(moment)
        if text is None:
            if len(_UTC_TEXTS) >= 4096:
                _UTC_TEXTS.clear()
            text = _UTC_TEXTS[moment] = moment.isoformat(timespec="microseconds")
        return text
    if moment.tzinfo is None:
        raise ValueError("naive datetime: paperbot stores only timezone-aware times")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


_UTC_TEXTS: dict[datetime, str] = {}  # format_time's, of UTC moments only (no fold, no zone to tell apart)


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _as_stored(moment: datetime) -> datetime:
    """`moment` as the ledger gives it back: in UTC (read back from its text only when it is not)."""
    return moment if moment.tzinfo is UTC else datetime.fromisoformat(format_time(moment))


@dataclass(frozen=True, slots=True)
class SaveStats:
    """What storing one batch of papers changed."""

    seen: int
    new: int
    updated: int
    sightings: int


@dataclass(frozen=True, slots=True)
class FetchRecord:
    """One row of the fetches table."""

    url: str
    source: str
    listing: str
    started_at: datetime
    status: str
    count: int
    new_count: int
    error: str | None


@dataclass(frozen=True, slots=True)
class Crossing:
    """A paper whose upvotes reached a threshold after a given time."""

    paper: Paper
    before: int | None  # the highest count seen up to then (None: not seen before)
    now: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """One digest (or alert) in the ledger: to whom, on which channel, for which period."""

    id: int
    subscriber_id: str
    channel: str
    kind: str
    period: str
    recipient: str
    state: str  # new (papers reserved, not rendered), pending, sending, sent, failed
    attempts: int
    paper_ids: tuple[str, ...]
    message_id: str | None = None
    message: bytes | None = None
    subject: str | None = None
    last_error: str | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    next_attempt_at: datetime | None = None
    sent_at: datetime | None = None
    parts_sent: int = 0  # of a message in several parts, how many went out


@dataclass(frozen=True, slots=True)
class DigestMarks:
    """What the ledger holds that decides one subscriber channel's next digest (Store.digest_marks)."""

    suppressed: str | None  # why its sending is suppressed (Store.suppression), or None
    state: str | None  # the state of the period's digest, if the ledger has it
    last_window_end: datetime | None  # where the next window starts: the end of the last one


@dataclass(frozen=True, slots=True)
class Window:
    """What a stretch of time [start, end) brought, with counts as they were at its end."""

    papers: tuple[Paper, ...]  # first seen in the window
    risers: tuple[Paper, ...]  # first seen before it and seen again in it (for rising watches)
    upvotes_before: dict[str, int]  # the most upvotes each was seen with before the window


def _row_to_paper(row: dict) -> Paper:
    featured = row.get("featured_on")
    return Paper(
        id=row["id"],
        title=row["title"],
        abstract=row.get("abstract") or "",
        authors=tuple(json.loads(row.get("authors") or "[]")),
        published_at=_parse_time(row.get("published_at")),
        featured_on=date.fromisoformat(featured) if featured else None,
        upvotes=row.get("upvotes"),
        num_comments=row.get("num_comments"),
        github_repo=row.get("github_repo"),
        github_stars=row.get("github_stars"),
        project_page=row.get("project_page"),
        ai_summary=row.get("ai_summary"),
        ai_keywords=tuple(json.loads(row.get("ai_keywords") or "[]")),
        organization=row.get("organization"),
        organization_fullname=row.get("organization_fullname"),
        thumbnail=row.get("thumbnail"),
    )


def _paper_to_row(paper: Paper) -> dict:
    return {
        "id": paper.id,
        "title": paper.title,
        "abstract": paper.abstract,
        "authors": json.dumps(list(paper.authors), ensure_ascii=False),
        "published_at": format_time(paper.published_at) if paper.published_at else None,
        "featured_on": paper.featured_on.isoformat() if paper.featured_on else None,
        "upvotes": paper.upvotes,
        "num_comments": paper.num_comments,
        "github_repo": paper.github_repo,
        "github_stars": paper.github_stars,
        "project_page": paper.project_page,
        "ai_summary": paper.ai_summary,
        "ai_keywords": json.dumps(list(paper.ai_keywords), ensure_ascii=False),
        "organization": paper.organization,
        "organization_fullname": paper.organization_fullname,
        "thumbnail": paper.thumbnail,
    }


def _empty(value: object) -> bool:
    return value is None or value == "" or value == "[]"


def _merge(old: dict, new: dict, newer: bool) -> dict:
    """The row after seeing `new`: a newer sighting wins where it knows the value; an
    older one only fills what is missing. A page card (no abstract, no authors) never
    erases what the API said."""
    merged = dict(old)
    for key, value in new.items():
        if _empty(value):
            continue
        if newer or _empty(old.get(key)):
            merged[key] = value
    return merged


def _migrate_1(db: sqlite_utils.Database) -> None:
    papers = {
        "id": str,
        "title": str,
        "abstract": str,
        "authors": str,
        "published_at": str,
        "featured_on": str,
        "upvotes": int,
        "num_comments": int,
        "github_repo": str,
        "github_stars": int,
        "project_page": str,
        "ai_summary": str,
        "ai_keywords": str,
        "organization": str,
        "organization_fullname": str,
        "thumbnail": str,
        "first_seen_at": str,
        "last_seen_at": str,
    }
    db["papers"].create(papers, pk="id", if_not_exists=True)
    db["papers"].create_index(["first_seen_at"], if_not_exists=True)
    db["papers"].create_index(["featured_on"], if_not_exists=True)
    db["sightings"].create(
        {
            "id": int,
            "paper_id": str,
            "seen_at": str,
            "source": str,
            "rank": int,
            "upvotes": int,
            "stars": int,
            "comments": int,
        },
        pk="id",
        foreign_keys=[("paper_id", "papers", "id")],
        if_not_exists=True,
    )
    db["sightings"].create_index(["paper_id", "source", "seen_at"], unique=True, if_not_exists=True)
    db["sightings"].create_index(["seen_at"], if_not_exists=True)
    db["fetches"].create(
        {
            "id": int,
            "url": str,
            "source": str,
            "listing": str,
            "started_at": str,
            "status": str,
            "count": int,
            "new_count": int,
            "etag": str,
            "last_modified": str,
            "error": str,
        },
        pk="id",
        if_not_exists=True,
    )
    db["fetches"].create_index(["source", "listing"], if_not_exists=True)
    db["papers"].enable_fts(  # replace: what an interrupted run made of it is made again
        ["title", "abstract", "authors", "ai_keywords"],
        create_triggers=True,
        tokenize="unicode61",
        replace=True,
    )


def _migrate_2(db: sqlite_utils.Database) -> None:
    """The delivery ledger: one row per digest or alert, the papers it carries, suppressions."""
    db["deliveries"].create(
        {
            "id": int,
            "subscriber_id": str,
            "channel": str,  # the channel's name in the subscriber's file
            "kind": str,  # email, slack, webhook, apprise
            "period": str,  # the digest's period, e.g. "2026-06-12 08:00", or "instant ..."
            "recipient": str,  # an address, never a secret URL
            "state": str,  # new, pending, sending, sent, failed, skipped (nothing to send)
            "attempts": int,
            "next_attempt_at": str,
            "claimed_by": str,
            "claimed_until": str,
            "last_error": str,
            "message_id": str,
            "message": bytes,
            "subject": str,
            "window_start": str,
            "window_end": str,
            "created_at": str,
            "sent_at": str,
        },
        pk="id",
        not_null={"subscriber_id", "channel", "kind", "period", "state"},
        defaults={"attempts": 0},
        if_not_exists=True,
    )
    db["deliveries"].create_index(["subscriber_id", "channel", "period"], unique=True, if_not_exists=True)
    db["deliveries"].create_index(["state"], if_not_exists=True)
    db["delivery_papers"].create(
        {"delivery_id": int, "subscriber_id": str, "channel": str, "paper_id": str, "rank": int},
        foreign_keys=[("delivery_id", "deliveries", "id")],
        if_not_exists=True,
    )
    # The rule itself: a paper goes to a subscriber's channel once, whatever runs or crashes.
    db["delivery_papers"].create_index(
        ["subscriber_id", "channel", "paper_id"], unique=True, if_not_exists=True
    )
    db["delivery_papers"].create_index(["delivery_id"], if_not_exists=True)
    db["suppressions"].create(
        {"subscriber_id": str, "channel": str, "recipient": str, "reason": str, "created_at": str},
        pk=("subscriber_id", "channel"),
        if_not_exists=True,
    )
    db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)


def _migrate_3(db: sqlite_utils.Database) -> None:
    """Messages in several parts (long Slack digests) record how many parts went out."""
    if "parts_sent" not in db["deliveries"].columns_dict:
        db["deliveries"].add_column("parts_sent", int, not_null_default=0)


def _migrate_4(db: sqlite_utils.Database) -> None:
    """The daemon's jobs (last and next run) and the operator's alerts (open and resolved)."""
    db["jobs"].create(
        {
            "name": str,
            "last_started_at": str,
            "last_finished_at": str,
            "last_status": str,
            "next_run_at": str,
        },
        pk="name",
        if_not_exists=True,
    )
    db["alerts"].create(
        {"key": str, "message": str, "opened_at": str, "resolved_at": str},
        pk="key",
        if_not_exists=True,
    )


def _migrate_5(db: sqlite_utils.Database) -> None:
    """Each digest's message in a table of its own: a digest's row changes state several times
    (claimed, sent), and SQLite rewrote the whole row, its 30 KB message with it, each time.
    Safe to run again after an interruption (its steps are not one transaction)."""
    db.execute(
        "create table if not exists delivery_messages"
        " (delivery_id integer primary key references deliveries(id), message blob)"
    )
    if "message" not in db["deliveries"].columns_dict:
        return
    db.execute(
        "insert or ignore into delivery_messages (delivery_id, message)"
        " select id, message from deliveries where message is not null"
    )
    if sqlite3.sqlite_version_info >= (3, 35):  # DROP COLUMN; older SQLite keeps it, empty
        db.execute("alter table deliveries drop column message")
    else:
        db.execute("update deliveries set message = null")


_PACKED = "zstd"  # delivery_bodies.encoding of a message pack_message made
_LARGEST_MESSAGE = 64 << 20  # bytes a stored message may say it unpacks to: a digest is well under 1 MB
_CODECS = threading.local()  # a zstd compressor and decompressor for each thread: neither is thread-safe


def pack_message(data: bytes) -> bytes:
    """A message as the ledger stores it: zstd at level 1, about a fifth of its size for a
    digest (its cards' HTML repeats the same inlined styles). Packing costs a run less than
    SQLite's writing the bytes it saves did (to the log, then to the database file at a
    checkpoint): bench/render_send.py's run sends 9% faster, and its ledger grows 8 KB a
    digest rather than 34. A process that renders for another (a big run's helper) packs what
    it hands over with it too (see PackedMessage)."""
    compressor = getattr(_CODECS, "compressor", None)
    if compressor is None:  # with a checksum (4 bytes): damage is an error, not other bytes sent
        compressor = _CODECS.compressor = zstandard.ZstdCompressor(level=1, write_checksum=True)
    return compressor.compress(data)


@dataclass(frozen=True, slots=True)
class PackedMessage:
    """A message handed over packed as the ledger stores it (pack_message), and its bytes,
    unpacked from those when it is made: the two always agree. Store.reserve_delivery stores
    `packed` as it is, rather than packing the bytes again. Raises StoreError when `packed` is
    not a packed message (damaged on its way)."""

    packed: bytes = field(repr=False)  # tens of KB: not in an error message
    data: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            data = _decompressed(self.packed)
        except zstandard.ZstdError as error:
            raise StoreError(f"a message handed over packed cannot be unpacked ({error})") from None
        object.__setattr__(self, "data", data)


def _unpacked(stored: bytes | None, encoding: str | None) -> bytes | None:
    """A stored message as it was made: unpacked if pack_message made it, else as it is."""
    if stored is None or encoding is None:
        return stored
    if encoding != _PACKED:
        raise StoreError(f"a stored message is in {encoding!r}, which this paperbot cannot read: upgrade it")
    try:
        return _decompressed(stored)
    except zstandard.ZstdError as error:
        raise StoreError(f"a stored message cannot be read back ({error}): the database is damaged") from None


def _decompressed(packed: bytes) -> bytes:
    """What pack_message packed; zstandard.ZstdError for bytes it did not make whole."""
    decompressor = getattr(_CODECS, "decompressor", None)
    if decompressor is None:
        decompressor = _CODECS.decompressor = zstandard.ZstdDecompressor()
    size = zstandard.frame_content_size(packed)
    if not 0 <= size <= _LARGEST_MESSAGE:  # a damaged header: nothing to make room for
        raise zstandard.ZstdError(f"it says it unpacks to {size} bytes")
    return decompressor.decompress(packed)


def _migrate_6(db: sqlite_utils.Database) -> None:
    """Messages stored compressed (see pack_message), each saying so in `encoding`; those stored
    before stay as they were (no encoding). The table takes a new name, delivery_bodies, so
    that a paperbot before this one fails to read or store any message, and sends none: one
    that opens the database afterwards refuses its schema, but one that had it open already
    would have read packed bytes as the mail. Safe to run again after an interruption, and in
    two processes at once (the second finds the step done)."""
    if "delivery_bodies" not in db.table_names():
        try:
            db.execute("alter table delivery_messages rename to delivery_bodies")
        except sqlite3.OperationalError:
            if "delivery_bodies" not in db.table_names():  # not another process's doing
                raise
    if "encoding" not in db["delivery_bodies"].columns_dict:
        try:
            db.execute("alter table delivery_bodies add column encoding text")
        except sqlite3.OperationalError:
            if "encoding" not in db["delivery_bodies"].columns_dict:
                raise


def _migrate_7(db: sqlite_utils.Database) -> None:
    """Where each subscriber channel's last digest ended, and its last instant alert
    (digest_marks, asked of every subscriber at every run), read from an index of each in a few
    steps: they were found by reading every digest and alert of theirs, and after a year of
    daily digests that took a run of 2,000 subscribers 270 ms. Each index holds its own kind
    of row only (their condition is the very text digest_marks asks with: SQLite uses a partial
    index only then), so neither passes over the other's rows."""
    for name, kind in (("digest", "not like"), ("alert", "like")):
        db.execute(
            f"create index if not exists idx_deliveries_{name}_end"
            f" on deliveries (subscriber_id, channel, window_end) where period {kind} 'instant%'"
        )


# Each is safe to run again after an interruption: sqlite-utils commits its steps one by one,
# so a migration killed halfway is not undone, and the next open_store runs it again.
MIGRATIONS = [_migrate_1, _migrate_2, _migrate_3, _migrate_4, _migrate_5, _migrate_6, _migrate_7]
# A ledger row with its message (Store._delivery reads both).
_DELIVERIES = (
    "select deliveries.*, delivery_bodies.message as stored_message,"
    " delivery_bodies.encoding as stored_encoding from deliveries"
    " left join delivery_bodies on delivery_bodies.delivery_id = deliveries.id"
)
_DELIVERY_ROWS = "select deliveries.*, null as stored_message, null as stored_encoding from deliveries"
# Why a subscriber's channel is suppressed: its own row, else their "*" (an unsubscribe).
_SUPPRESSION = (
    "select reason from suppressions where subscriber_id = {who} and channel in ({channel}, '*')"
    " order by channel = '*' desc limit 1"
)
_SUPPRESSED_HERE = _SUPPRESSION.format(  # of the deliveries row at hand (claim_delivery)
    who="deliveries.subscriber_id", channel="deliveries.channel"
)
SCHEMA_VERSION = len(MIGRATIONS)
APPLICATION_ID = 0x70626F74  # "pbot": PRAGMA application_id of a database paperbot made

_PAPER_COLUMNS = (
    "id",
    "title",
    "abstract",
    "authors",
    "published_at",
    "featured_on",
    "upvotes",
    "num_comments",
    "github_repo",
    "github_stars",
    "project_page",
    "ai_summary",
    "ai_keywords",
    "organization",
    "organization_fullname",
    "thumbnail",
    "first_seen_at",
    "last_seen_at",
)
_INSERT_PAPER = (
    f"insert into papers ({', '.join(_PAPER_COLUMNS)}) values ({', '.join('?' * len(_PAPER_COLUMNS))})"
)
_UPDATE_PAPER = f"update papers set {', '.join(c + ' = ?' for c in _PAPER_COLUMNS[1:])} where id = ?"
_INSERT_SIGHTING = (
    "insert or ignore into sightings (paper_id, seen_at, source, rank, upvotes, stars, comments)"
    " values (?, ?, ?, ?, ?, ?, ?)"
)


class Store:
    """paperbot's database. Open it with `open_store`."""

    def __init__(self, db: sqlite_utils.Database, path: str):
        self.db = db
        self.path = path
        self._batched = False  # inside `batch`: each write is a savepoint of its transaction
        self._durable_in_batch = False
        self._syncing: threading.Thread | None = None  # a sync(wait=False) at work
        self._sync_again = False  # and asked to fsync once more
        self._sync_failed: OSError | None = None  # its error, for the next sync to raise
        self._sync_lock = threading.Lock()

    def close(self) -> None:
        """Close the connection (after any sync at work)."""
        syncing = self._syncing
        if syncing is not None:
            syncing.join()
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------

    def save_papers(self, papers: Iterable[Paper], seen_at: datetime, source: str) -> SaveStats:
        """Store a listing as seen at `seen_at` in `source`, in order (rank 1 first).

        Idempotent: the same listing saved twice at the same time changes nothing.
        """
        papers = list(papers)
        stamp = format_time(seen_at)
        ids = [p.id for p in papers]
        self._refuse_in_batch("save_papers")
        with self.db.conn:
            existing = self._rows_by_id(ids)
            inserts, updates = [], []
            for paper in papers:
                row = _paper_to_row(paper)
                old = existing.get(paper.id)
                if old is None:
                    row["first_seen_at"] = row["last_seen_at"] = stamp
                    inserts.append(row)
                else:
                    newer = stamp >= (old["last_seen_at"] or "")
                    merged = _merge(old, row, newer)
                    merged["first_seen_at"] = min(old["first_seen_at"] or stamp, stamp)
                    merged["last_seen_at"] = max(old["last_seen_at"] or stamp, stamp)
                    if merged == old:
                        continue
                    row = merged
                    updates.append(row)
                existing[paper.id] = row
            # Plain executemany in one transaction rather than sqlite-utils' upsert_all and
            # insert_all: each of those commits on its own, so a listing was stored in two
            # transactions (papers without their sightings after a crash) and two fsyncs.
            conn = self.db.conn
            if inserts:
                conn.executemany(_INSERT_PAPER, [[row[c] for c in _PAPER_COLUMNS] for row in inserts])
            if updates:
                conn.executemany(
                    _UPDATE_PAPER, [[row[c] for c in _PAPER_COLUMNS[1:]] + [row["id"]] for row in updates]
                )
            # total_changes rather than count(*): the sightings table only grows, and
            # counting it twice per listing gets slow on a long-lived database.
            before = conn.total_changes
            conn.executemany(
                _INSERT_SIGHTING,
                [
                    (paper.id, stamp, source, rank, paper.upvotes, paper.github_stars, paper.num_comments)
                    for rank, paper in enumerate(papers, 1)
                ],
            )
            added = conn.total_changes - before
        return SaveStats(len(papers), len(inserts), len(updates), added)

    def _rows_by_id(self, ids: list[str]) -> dict[str, dict]:
        rows: dict[str, dict] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.db.query(f"select * from papers where id in ({marks})", chunk):
                rows[row["id"]] = row
        return rows

    def record_fetch(
        self,
        *,
        url: str,
        source: str,
        listing: str,
        started_at: datetime,
        status: str,
        count: int = 0,
        new_count: int = 0,
        etag: str | None = None,
        last_modified: str | None = None,
        error: str | None = None,
    ) -> None:
        """Log one poll (successful or not) in the fetches table."""
        self._refuse_in_batch("record_fetch")
        with self.db.conn:
            self.db["fetches"].insert(
                {
                    "url": url,
                    "source": source,
                    "listing": listing,
                    "started_at": format_time(started_at),
                    "status": status,
                    "count": count,
                    "new_count": new_count,
                    "etag": etag,
                    "last_modified": last_modified,
                    "error": error,
                }
            )

    def save_fetch(self, result: FetchResult) -> SaveStats:
        """Store a successful poll: its papers and sightings, and the fetch itself."""
        if result.not_modified:
            stats = SaveStats(0, 0, 0, 0)
            status = "not-modified"
        else:
            stats = self.save_papers(result.papers, result.fetched_at, f"{result.source}:{result.listing}")
            status = "ok" if result.papers else "empty"
        self.record_fetch(
            url=result.url,
            source=result.source,
            listing=result.listing,
            started_at=result.fetched_at,
            status=status,
            count=len(result.papers),
            new_count=stats.new,
            etag=result.etag,
            last_modified=result.last_modified,
        )
        return stats

    # -- reading ---------------------------------------------------------------------

    def validators(self, source: str, listing: str) -> tuple[str | None, str | None]:
        """The ETag and Last-Modified of the last good fetch of a listing, for a conditional GET."""
        row = next(
            self.db.query(
                "select etag, last_modified from fetches where source = ? and listing = ?"
                " and status in ('ok', 'empty', 'not-modified') order by id desc limit 1",
                [source, listing],
            ),
            None,
        )
        return (row["etag"], row["last_modified"]) if row else (None, None)

    def get_paper(self, paper_id: str) -> Paper | None:
        """The stored paper with this canonical id, or None."""
        try:
            return _row_to_paper(self.db["papers"].get(paper_id))
        except NotFoundError:
            return None

    def count_papers(self) -> int:
        """How many papers are stored."""
        return self.db["papers"].count

    def count_sightings(self) -> int:
        """How many sightings are stored."""
        return self.db["sightings"].count

    def papers(
        self,
        *,
        since: date | None = None,
        until: date | None = None,
        search: str | None = None,
        limit: int | None = None,
    ) -> list[Paper]:
        """Stored papers featured between `since` and `until` (inclusive), newest first,
        optionally only those whose title, abstract, authors or keywords match `search`."""
        where, params = [], []
        if since:
            where.append("coalesce(featured_on, substr(first_seen_at, 1, 10)) >= ?")
            params.append(since.isoformat())
        if until:
            where.append("coalesce(featured_on, substr(first_seen_at, 1, 10)) <= ?")
            params.append(until.isoformat())
        if search:
            where.append("rowid in (select rowid from papers_fts where papers_fts match ?)")
            params.append(_fts_query(search))
        sql = "select * from papers"
        if where:
            sql += " where " + " and ".join(where)
        sql += " order by featured_on desc, upvotes desc, id"
        if limit:
            sql += f" limit {int(limit)}"
        return [_row_to_paper(row) for row in self.db.query(sql, params)]

    def iter_papers(self) -> Iterator[Paper]:
        """Every stored paper, by id."""
        for row in self.db.query("select * from papers order by id"):
            yield _row_to_paper(row)

    def new_papers(self, after: datetime, until: datetime | None = None) -> list[Paper]:
        """Papers first seen after `after` (and up to `until`): what is new since the last run."""
        sql = "select * from papers where first_seen_at > ?"
        params = [format_time(after)]
        if until:
            sql += " and first_seen_at <= ?"
            params.append(format_time(until))
        return [_row_to_paper(row) for row in self.db.query(sql + " order by first_seen_at, id", params)]

    def upvote_crossings(self, threshold: int, after: datetime) -> list[Crossing]:
        """Papers seen before `after` with fewer than `threshold` upvotes that have reached
        it since: "whose upvotes crossed N since the last run"."""
        stamp = format_time(after)
        sql = """
            select p.*, old.best as before
            from papers p
            join (select paper_id, max(coalesce(upvotes, 0)) as best from sightings
                  where seen_at <= ? group by paper_id) old on old.paper_id = p.id
            where old.best < ? and p.id in (
                select paper_id from sightings where seen_at > ? and upvotes >= ?)
            order by p.upvotes desc, p.id
        """
        crossings = []
        for row in self.db.query(sql, [stamp, threshold, stamp, threshold]):
            before = row.pop("before")
            paper = _row_to_paper(row)
            crossings.append(Crossing(paper, before, paper.upvotes or 0))
        return crossings

    # -- the delivery ledger ---------------------------------------------------------------

    @contextmanager
    def _immediate(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction taken at once, so two processes never interleave a decision.

        The database runs with synchronous=NORMAL (see open_store): a commit survives a crash
        of paperbot, and waits for the disk only when `durable`, as an unsubscribe does.
        Its fsync also makes every commit before it durable."""
        conn = self.db.conn
        if self._batched:
            self._durable_in_batch |= durable
            self._check_batch_open(conn)
            conn.execute("SAVEPOINT ledger_write")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # else SQLite undid the whole batch (disk full, I/O error)
                    conn.execute("ROLLBACK TO ledger_write")
                    conn.execute("RELEASE ledger_write")
                raise
            conn.execute("RELEASE ledger_write")
            return
        if conn.in_transaction:
            conn.commit()
        if durable:
            conn.execute("PRAGMA synchronous = FULL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        finally:
            if durable:
                conn.execute("PRAGMA synchronous = NORMAL")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The ledger writes made inside, in one transaction: each write is still whole or not
        at all (a savepoint), but they reach the database together, at the end, with one commit
        rather than one each. For writes that may be lost together, such as reserving and
        rendering the digests of a run (a crash re-plans them); never around a send. A durable
        write inside makes the whole batch wait for the disk."""
        if self._batched:
            yield
            return
        with self._immediate() as conn:
            self._batched, self._durable_in_batch = True, False
            try:
                yield
                self._check_batch_open(conn)
            finally:
                self._batched = False
        if self._durable_in_batch:
            self.sync()

    def _refuse_in_batch(self, what: str) -> None:
        if self._batched:
            raise RuntimeError(f"{what} commits on its own: call it outside Store.batch")

    @staticmethod
    def _check_batch_open(conn: sqlite3.Connection) -> None:
        if not conn.in_transaction:  # a bug: what came before would no longer be undone with the rest
            raise RuntimeError("something committed inside Store.batch: its writes are no longer one")

    @staticmethod
    def _delivery(row: dict, papers: Iterable[str]) -> Delivery:
        return Delivery(
            id=row["id"],
            subscriber_id=row["subscriber_id"],
            channel=row["channel"],
            kind=row["kind"],
            period=row["period"],
            recipient=row["recipient"] or "",
            state=row["state"],
            attempts=row["attempts"] or 0,
            paper_ids=tuple(papers),
            message_id=row["message_id"],
            message=_unpacked(row["stored_message"], row["stored_encoding"]),
            subject=row["subject"],
            last_error=row["last_error"],
            window_start=_parse_time(row["window_start"]),
            window_end=_parse_time(row["window_end"]),
            next_attempt_at=_parse_time(row["next_attempt_at"]),
            sent_at=_parse_time(row["sent_at"]),
            parts_sent=row.get("parts_sent") or 0,
        )

    def _deliveries(self, where: str, params: list, *, messages: bool = True) -> list[Delivery]:
        """The ledger rows `where` says, in that order, with their papers read in one query;
        without their messages (None) unless `messages`."""
        rows = list(self.db.query(f"{_DELIVERIES if messages else _DELIVERY_ROWS} {where}", params))
        papers: dict[int, list[str]] = {row["id"]: [] for row in rows}
        for start in range(0, len(rows), 500):
            ids = [row["id"] for row in rows[start : start + 500]]
            for delivery_id, paper_id in self.db.execute(
                "select delivery_id, paper_id from delivery_papers"
                f" where delivery_id in ({','.join('?' * len(ids))}) order by delivery_id, rank",
                ids,
            ):
                papers[delivery_id].append(paper_id)
        return [self._delivery(row, papers[row["id"]]) for row in rows]

    def get_delivery(self, delivery_id: int) -> Delivery | None:
        """One ledger row, with its papers."""
        found = self._deliveries("where id = ?", [delivery_id])
        return found[0] if found else None

    def find_delivery(self, subscriber_id: str, channel: str, period: str) -> Delivery | None:
        """The digest of this subscriber, channel and period, if the ledger has it (without its
        message: `stored_message` reads that)."""
        found = self._deliveries(
            "where subscriber_id = ? and channel = ? and period = ?",
            [subscriber_id, channel, period],
            messages=False,
        )
        return found[0] if found else None

    def reserve_delivery(
        self,
        *,
        subscriber_id: str,
        channel: str,
        kind: str,
        period: str,
        recipient: str,
        paper_ids: Iterable[str],
        window_start: datetime,
        window_end: datetime,
        now: datetime,
        message: tuple[bytes, str, str] | None = None,
        packed: PackedMessage | None = None,
    ) -> Delivery:
        """Create the ledger row of one digest and reserve its papers, in one transaction.

        Papers already reserved for this subscriber and channel (by any earlier digest) are
        left out, so no paper is ever sent twice. If the ledger already has this digest, it is
        returned unchanged: reserving is idempotent, and safe when two processes race.
        `message`: (bytes, message id, subject) rendered for exactly `paper_ids`, stored with
        them (pending, as attach_message leaves a row) when the ledger reserves them all;
        else the row is new, for the caller to render what it reserved. `packed`: the message as
        it was handed over packed (its `data` is message's bytes), stored as it is.
        """
        if packed is not None and (message is None or packed.data is not message[0]):
            raise ValueError("packed is not the message's: pass the PackedMessage whose data it is")
        with self._immediate() as conn:
            existing = conn.execute(
                "select id from deliveries where subscriber_id = ? and channel = ? and period = ?",
                [subscriber_id, channel, period],
            ).fetchone()
            if existing is not None:
                return self._deliveries("where id = ?", existing)[0]
            asked = list(paper_ids)
            wanted = list(dict.fromkeys(asked))
            taken = self.delivered_papers(subscriber_id, channel, wanted) if wanted else set()
            fresh = [paper_id for paper_id in wanted if paper_id not in taken]
            whole = message is not None and fresh == asked
            data, message_id, subject = message if whole else (None, None, None)
            cursor = conn.execute(
                "insert into deliveries (subscriber_id, channel, kind, period, recipient, state, attempts,"
                " message_id, subject, window_start, window_end, created_at)"
                " values (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?)",
                [
                    subscriber_id,
                    channel,
                    kind,
                    period,
                    recipient,
                    "new" if data is None else "pending",
                    message_id,
                    subject,
                    format_time(window_start),
                    format_time(window_end),
                    format_time(now),
                ],
            )
            delivery_id = cursor.lastrowid
            conn.executemany(
                "insert into delivery_papers (delivery_id, subscriber_id, channel, paper_id, rank)"
                " values (?, ?, ?, ?, ?)",
                [(delivery_id, subscriber_id, channel, pid, rank) for rank, pid in enumerate(fresh, 1)],
            )
            if data is not None:
                conn.execute(
                    "insert into delivery_bodies (delivery_id, message, encoding) values (?, ?, ?)",
                    [delivery_id, pack_message(data) if packed is None else packed.packed, _PACKED],
                )
        # The row as get_delivery would read it back, without reading it.
        return Delivery(
            id=delivery_id,
            subscriber_id=subscriber_id,
            channel=channel,
            kind=kind,
            period=period,
            recipient=recipient,
            state="new" if data is None else "pending",
            attempts=0,
            paper_ids=tuple(fresh),
            message_id=message_id,
            message=data,
            subject=subject,
            window_start=_as_stored(window_start),
            window_end=_as_stored(window_end),
        )

    def delivered_papers(self, subscriber_id: str, channel: str, paper_ids: list[str]) -> set[str]:
        """Which of these papers a digest of this subscriber and channel already holds."""
        taken: set[str] = set()
        for start in range(0, len(paper_ids), 500):
            chunk = paper_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            taken.update(
                row[0]
                for row in self.db.conn.execute(
                    "select paper_id from delivery_papers where subscriber_id = ? and channel = ?"
                    f" and paper_id in ({marks})",
                    [subscriber_id, channel, *chunk],
                )
            )
        return taken

    def attach_message(self, delivery_id: int, *, message: bytes, message_id: str, subject: str) -> bool:
        """Store the rendered message of a reserved digest: every retry sends these bytes. False
        when the digest had its message already (another process attached one first)."""
        with self._immediate() as conn:
            attached = conn.execute(
                "update deliveries set message_id = ?, subject = ?, state = 'pending', last_error = null"
                " where id = ? and state = 'new'",
                [message_id, subject, delivery_id],
            ).rowcount
            if attached:
                conn.execute(
                    "insert or replace into delivery_bodies (delivery_id, message, encoding)"
                    " values (?, ?, ?)",
                    [delivery_id, pack_message(message), _PACKED],
                )
        return bool(attached)

    def mark_skipped(self, delivery_id: int, reason: str) -> None:
        """A period with nothing to send: recorded, so it is not made again."""
        with self._immediate() as conn:
            conn.execute(
                "update deliveries set state = 'skipped', last_error = ? where id = ? and state = 'new'",
                [reason, delivery_id],
            )

    def note_render_error(self, delivery_id: int, error: str) -> None:
        """Why a reserved digest could not be rendered (for `paperbot status`); it stays `new`,
        and each run tries again."""
        with self._immediate() as conn:
            conn.execute(
                "update deliveries set last_error = ? where id = ? and state = 'new'", [error, delivery_id]
            )

    def deliveries_to_render(self) -> list[Delivery]:
        """Digests whose papers are reserved but whose message was never stored (a crash)."""
        return self._deliveries("where state = 'new' order by id", [])

    def deliveries_to_send(
        self, now: datetime, known: Mapping[int, Delivery] | None = None
    ) -> list[Delivery]:
        """Pending digests whose time has come, and those whose sender died mid-send; without
        their messages, which `stored_message` reads one at a time (a big run's messages
        need not all be in memory at once). `known`: rows as the caller wrote them moments
        ago (a run's digests just stored, messages and all): each of those that nobody has
        tried since (pending, no attempt, no part sent) is given as it is, not read again."""
        stamp = format_time(now)
        due = (
            "where (state = 'pending' and coalesce(next_attempt_at, '') <= ?)"
            " or (state = 'sending' and claimed_until < ?)"
        )
        if not known:
            return self._deliveries(f"{due} order by created_at, id", [stamp, stamp], messages=False)
        rows = self.db.conn.execute(
            f"select id, state, attempts, parts_sent from deliveries {due} order by created_at, id",
            [stamp, stamp],
        ).fetchall()
        found: dict[int, Delivery | None] = {}
        untried = ("pending", 0, 0)  # state, attempts, parts sent
        for delivery_id, *now_is in rows:
            held = known.get(delivery_id)
            as_written = held is not None and (held.state, held.attempts, held.parts_sent) == untried
            found[delivery_id] = held if as_written and tuple(now_is) == untried else None
        read = [delivery_id for delivery_id, held in found.items() if held is None]
        for start in range(0, len(read), 500):
            chunk = read[start : start + 500]
            for delivery in self._deliveries(
                f"where id in ({','.join('?' * len(chunk))})", chunk, messages=False
            ):
                found[delivery.id] = delivery
        return [delivery for delivery in found.values() if delivery is not None]

    def stored_message(self, delivery_id: int) -> bytes | None:
        """The rendered message of a digest, as attach_message stored it."""
        row = self.db.execute(
            "select message, encoding from delivery_bodies where delivery_id = ?", [delivery_id]
        ).fetchone()
        return _unpacked(*row) if row else None

    def claim_delivery(self, delivery_id: int, owner: str, now: datetime, lease: timedelta) -> bool:
        """Take one digest for sending. Only one process can hold it; a lease that runs out
        (its sender was killed) frees it again. Counts the attempt. Never while its subscriber's
        channel is suppressed (see `suppression`): False then, as when another process has it."""
        with self._immediate() as conn:
            return _claimed(conn, delivery_id, owner, now, lease)

    def mark_sent(
        self, delivery_id: int, now: datetime, then_claim: tuple[int, str, timedelta] | None = None
    ) -> int | None:
        """Record that the server accepted the digest: nothing sends it again. The record survives
        a crash of paperbot at once, and a power cut once on disk (`sync`; bot.deliver.send_due
        has the records reach it every tenth of a second of sending, not once per message).

        `then_claim`: (id, owner, lease) of the digest to send next, claimed in the same commit
        as claim_delivery would (one commit a message rather than two). Returns the ledger's
        version (see `version`) as of that claim, or None when it was not claimed. Its sender
        holds it then as it would once it had claimed it: a crash leaves it to its lease, a
        sender that does not send it after all lets it go (`unclaim`)."""
        with self._immediate() as conn:
            conn.execute(
                "update deliveries set state = 'sent', sent_at = ?, last_error = null, claimed_until = null"
                " where id = ?",
                [format_time(now), delivery_id],
            )
            if then_claim is None or not _claimed(conn, then_claim[0], then_claim[1], now, then_claim[2]):
                return None
            # Read while this transaction holds the write lock: a commit of anyone else's comes after.
            return self.version()

    def version(self) -> int:
        """A number that changes whenever another connection (another process, say) commits to
        the database, and only then (PRAGMA data_version): to tell whether what this one read
        or claimed may have changed since."""
        return self.db.conn.execute("PRAGMA data_version").fetchone()[0]

    def unclaim(self, delivery_id: int, owner: str) -> bool:
        """Let go of a digest `owner` claimed and did not try (see mark_sent's `then_claim`):
        pending again, due as it was, its attempt not counted. False when that claim no longer
        holds it (nothing is written then)."""
        return self._update_held(
            "state = 'pending', claimed_until = null, attempts = attempts - 1", [], delivery_id, owner
        )

    def _update_held(self, changes: str, args: list, delivery_id: int, owner: str | None) -> bool:
        """Set `changes` (SQL, with `args`) on one digest's row; with `owner`, only while that
        claim holds it. Whether it was written."""
        held, held_args = _held_by(owner)
        with self._immediate() as conn:
            sql = f"update deliveries set {changes} where id = ?{held}"
            return conn.execute(sql, [*args, delivery_id, *held_args]).rowcount == 1

    def sync(self, wait: bool = True) -> None:
        """Wait until every commit so far is on disk: an fsync of the write-ahead log, as
        synchronous=FULL does at each commit (the database file has its own at each checkpoint,
        before the log that held its pages is reused); of the database file when there is no log.
        Not `wait`: have a thread of its own do that meanwhile (once more when it is at work
        already), and return at once. Its error (a disk that failed) is raised by the next sync."""
        if not wait:
            with self._sync_lock:
                failed, self._sync_failed = self._sync_failed, None
                if failed is None and self._syncing is not None:
                    self._sync_again = True
                elif failed is None:
                    self._syncing = threading.Thread(target=self._fsync_aside, name="paperbot-sync")
                    self._syncing.daemon = True
                    self._syncing.start()
            if failed is not None:
                raise failed
            return
        with self._sync_lock:
            syncing = self._syncing
        if syncing is not None:
            syncing.join()
        with self._sync_lock:
            failed, self._sync_failed = self._sync_failed, None
        if failed is not None:
            raise failed
        self._fsync()

    def _fsync_aside(self) -> None:
        """sync(wait=False)'s thread: an fsync, and another for each sync asked meanwhile."""
        while True:
            try:
                self._fsync()
            except OSError as error:
                failed = error
            else:
                failed = None
            with self._sync_lock:
                self._sync_failed = self._sync_failed or failed
                if failed is not None or not self._sync_again:
                    self._syncing = None
                    return
                self._sync_again = False

    def _fsync(self) -> None:
        for path in (f"{self.path}-wal", self.path):
            try:
                descriptor = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            return

    def mark_part_sent(self, delivery_id: int, parts_sent: int) -> None:
        """Record that the first `parts_sent` parts of a message in several parts went out (see mark_sent)."""
        with self._immediate() as conn:
            conn.execute("update deliveries set parts_sent = ? where id = ?", [parts_sent, delivery_id])

    def mark_retry(
        self,
        delivery_id: int,
        error: str,
        next_attempt_at: datetime,
        counted: bool = True,
        owner: str | None = None,
    ) -> bool:
        """A transient failure: try again at `next_attempt_at`. Not `counted`: the attempt that
        claiming counted is taken back (it was not the digest's failure). With `owner`, only
        while that claim holds the row: False when it no longer does (nothing is written)."""
        return self._update_held(
            "state = 'pending', last_error = ?, next_attempt_at = ?, claimed_until = null,"
            " attempts = attempts - ?",
            [error, format_time(next_attempt_at), 0 if counted else 1],
            delivery_id,
            owner,
        )

    def mark_failed(self, delivery_id: int, error: str, owner: str | None = None) -> int | None:
        """A permanent failure. Returns how many digests to that subscriber and channel failed
        permanently since the last one that was sent; None when `owner`'s claim no longer
        holds the row (nothing is written then)."""
        held, args = _held_by(owner)
        with self._immediate() as conn:
            cursor = conn.execute(
                "update deliveries set state = 'failed', last_error = ?, claimed_until = null"
                f" where id = ?{held}",
                [error, delivery_id, *args],
            )
            if cursor.rowcount == 0 and owner is not None:
                return None
            row = conn.execute(
                "select subscriber_id, channel from deliveries where id = ?", [delivery_id]
            ).fetchone()
            last_sent = conn.execute(
                "select coalesce(max(id), 0) from deliveries where subscriber_id = ? and channel = ?"
                " and state = 'sent'",
                row,
            ).fetchone()[0]
            return conn.execute(
                "select count(*) from deliveries where subscriber_id = ? and channel = ?"
                " and state = 'failed' and id > ?",
                [*row, last_sent],
            ).fetchone()[0]

    def suppress(self, subscriber_id: str, channel: str, recipient: str, reason: str, now: datetime) -> None:
        """Stop sending to this subscriber's channel, saying why (shown by `paperbot status`)."""
        with self._immediate(durable=True) as conn:  # an unsubscribe confirmed must survive a power cut
            conn.execute(
                "insert or replace into suppressions (subscriber_id, channel, recipient, reason, created_at)"
                " values (?, ?, ?, ?, ?)",
                [subscriber_id, channel, recipient, reason, format_time(now)],
            )

    def suppression(self, subscriber_id: str, channel: str) -> str | None:
        """Why this subscriber's channel is suppressed (channel "*": all of them, as after an
        unsubscribe), or None. The suppression list wins over any subscription file."""
        row = self.db.execute(_SUPPRESSION.format(who="?", channel="?"), [subscriber_id, channel]).fetchone()
        return row[0] if row else None

    def unsuppress(self, subscriber_id: str, channel: str = "*") -> None:
        """Lift a suppression (a subscriber who subscribes again, an address fixed)."""
        with self._immediate(durable=True) as conn:
            conn.execute(
                "delete from suppressions where subscriber_id = ? and channel = ?", [subscriber_id, channel]
            )

    def suppressions(self) -> list[dict]:
        """Every suppressed subscriber channel, with its reason."""
        return list(self.db.query("select * from suppressions order by created_at"))

    def digest_marks(
        self, subscriber_id: str, channel: str, period: str | None, instant: bool = False
    ) -> DigestMarks:
        """`suppression`, the state of `find_delivery`'s digest for `period` (None: no period),
        and where the next digest's (or instant alert's) window starts: the end of the last
        one. In one query: planning asks all three of every subscriber channel."""
        kind = "like" if instant else "not like"  # as written in migration 7's partial indexes
        suppressed, state, last = self.db.conn.execute(
            f"select ({_SUPPRESSION.format(who='?1', channel='?2')}),"
            " (select state from deliveries where subscriber_id = ?1 and channel = ?2 and period = ?3),"
            " (select max(window_end) from deliveries where subscriber_id = ?1 and channel = ?2"
            f"        and period {kind} 'instant%')",
            [subscriber_id, channel, period],
        ).fetchone()
        return DigestMarks(suppressed, state, _parse_time(last))

    def delivery_counts(self) -> dict[str, int]:
        """How many ledger rows are in each state."""
        return {
            row["state"]: row["n"]
            for row in self.db.query("select state, count(*) as n from deliveries group by state")
        }

    def troubled_deliveries(self) -> list[Delivery]:
        """Digests waiting for a retry or failed for good, newest first, for `paperbot status`
        (without their messages)."""
        return self._deliveries(
            "where state = 'failed' or (state = 'pending' and attempts > 0)"
            " or state = 'sending' or (state = 'new' and last_error is not null) order by id desc limit 50",
            [],
            messages=False,
        )

    # -- the daemon's jobs and the operator's alerts ---------------------------------------

    def record_job(
        self,
        name: str,
        *,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        status: str | None = None,
        next_run_at: datetime | None = None,
    ) -> None:
        """Note a job's run (for `paperbot status`): what is given is updated."""
        values = {
            "last_started_at": started_at and format_time(started_at),
            "last_finished_at": finished_at and format_time(finished_at),
            "last_status": status,
            "next_run_at": next_run_at and format_time(next_run_at),
        }
        values = {k: v for k, v in values.items() if v is not None}
        with self._immediate() as conn:
            conn.execute("insert or ignore into jobs (name) values (?)", [name])
            if values:
                assignments = ", ".join(f"{k} = ?" for k in values)
                conn.execute(f"update jobs set {assignments} where name = ?", [*values.values(), name])

    def jobs(self) -> list[dict]:
        """Every job the daemon ran or planned, by name."""
        return list(self.db.query("select * from jobs order by name"))

    def open_alert(self, key: str, message: str, now: datetime) -> bool:
        """Open an alert unless it is open already. True when it is new (so: tell the operator)."""
        with self._immediate() as conn:
            row = conn.execute("select resolved_at from alerts where key = ?", [key]).fetchone()
            if row is not None and row[0] is None:
                return False
            conn.execute(
                "insert or replace into alerts (key, message, opened_at, resolved_at) values (?, ?, ?, null)",
                [key, message, format_time(now)],
            )
            return True

    def resolve_alert(self, key: str, now: datetime) -> str | None:
        """Close an open alert; its message when it was open (so: tell the operator), else None."""
        with self._immediate() as conn:
            row = conn.execute(
                "select message from alerts where key = ? and resolved_at is null", [key]
            ).fetchone()
            if row is None:
                return None
            conn.execute("update alerts set resolved_at = ? where key = ?", [format_time(now), key])
            return row[0]

    def open_alerts(self) -> list[dict]:
        """Alerts not resolved yet, oldest first."""
        return list(self.db.query("select * from alerts where resolved_at is null order by opened_at"))

    def get_meta(self, key: str) -> str | None:
        """A value paperbot keeps for itself (e.g. a generated signing key)."""
        row = next(self.db.query("select value from meta where key = ?", [key]), None)
        return row["value"] if row else None

    def set_meta_once(self, key: str, value: str) -> str:
        """Keep `value` under `key` unless one is there already; return the one kept."""
        with self._immediate() as conn:
            conn.execute("insert or ignore into meta (key, value) values (?, ?)", [key, value])
        return self.get_meta(key)

    def window(self, start: datetime, end: datetime) -> Window:
        """The papers first seen in [start, end), those seen before and again in it, and
        their upvotes, stars and comments as the last sighting before `end` had them, so a
        window of the past reads as it was then rather than as it is now."""
        first, last = format_time(start), format_time(end)
        sql = """
            select p.*,
              (select max(coalesce(b.upvotes, 0)) from sightings b
                 where b.paper_id = p.id and b.seen_at < :first) as seen_before,
              (select json_array(s.upvotes, s.stars, s.comments) from sightings s
                 where s.paper_id = p.id and s.seen_at < :last
                 order by s.seen_at desc, s.id desc limit 1) as counts_then
            from papers p
            where (p.first_seen_at >= :first and p.first_seen_at < :last)
               or (p.first_seen_at < :first and p.id in (
                     select paper_id from sightings where seen_at >= :first and seen_at < :last))
            order by p.first_seen_at, p.id
        """
        new, risers, before = [], [], {}
        for row in self.db.query(sql, {"first": first, "last": last}):
            seen_before, counts = row.pop("seen_before"), row.pop("counts_then")
            paper = _row_to_paper(row)
            if counts:
                upvotes, stars, comments = json.loads(counts)
                paper = paper.replace(
                    upvotes=paper.upvotes if upvotes is None else upvotes,
                    github_stars=paper.github_stars if stars is None else stars,
                    num_comments=paper.num_comments if comments is None else comments,
                )
            if seen_before is not None:
                before[paper.id] = seen_before
            (new if row["first_seen_at"] >= first else risers).append(paper)
        return Window(tuple(new), tuple(risers), before)

    def latest_day(self) -> date | None:
        """The UTC day of the most recent first sighting: the default day to look at."""
        row = next(self.db.query("select max(first_seen_at) as last from papers"), None)
        return date.fromisoformat(row["last"][:10]) if row and row["last"] else None

    def sightings(self, paper_id: str) -> list[dict]:
        """The history of one paper, oldest first."""
        return list(
            self.db.query(
                "select seen_at, source, rank, upvotes, stars, comments from sightings"
                " where paper_id = ? order by seen_at, source",
                [paper_id],
            )
        )

    def fetch_health(self) -> list[dict]:
        """Per source and listing: the last fetch, the last good one, errors in a row."""
        rows = list(
            self.db.query(
                "select source, listing, url, started_at, status, count, new_count, error"
                # id breaks ties: two polls stamped with the same clock stay in order.
                " from fetches order by started_at, id"
            )
        )
        health: dict[tuple[str, str], dict] = {}
        for row in rows:
            key = (row["source"], row["listing"])
            entry = health.setdefault(
                key,
                {
                    "source": row["source"],
                    "listing": row["listing"],
                    "last_good": None,
                    "errors_in_a_row": 0,
                    "fetches": 0,
                },
            )
            entry["fetches"] += 1
            entry["last"] = row
            if row["status"] == "error":
                entry["errors_in_a_row"] += 1
            else:
                entry["errors_in_a_row"] = 0
                entry["last_good"] = row["started_at"]
        return sorted(health.values(), key=lambda e: e["last"]["started_at"], reverse=True)


def _fts_query(text: str) -> str:
    """Quote each word so user text can never be FTS5 syntax (a '-' or ':' in it)."""
    words = [w for w in text.replace('"', " ").split() if w]
    return " ".join(f'"{w}"' for w in words) or '""'


def _claim_new_database(db: sqlite_utils.Database) -> None:
    """Mark a database paperbot is about to make as paperbot's (PRAGMA application_id), before
    its first table: a first migration killed halfway is finished on the next open, and a file
    of another program, which has tables but not that mark, is refused untouched."""
    if not db.table_names():
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    elif db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
        raise sqlite3.DatabaseError(
            "it has tables that paperbot did not make: is it a paperbot database? "
            "Give paperbot a file of its own (--db)"
        )


def _claimed(conn: sqlite3.Connection, delivery_id: int, owner: str, now: datetime, lease: timedelta) -> bool:
    """Claim one digest for `owner` in the transaction at hand (see Store.claim_delivery)."""
    stamp = format_time(now)
    cursor = conn.execute(
        "update deliveries set state = 'sending', claimed_by = ?, claimed_until = ?,"
        " attempts = attempts + 1 where id = ? and ("
        " (state = 'pending' and coalesce(next_attempt_at, '') <= ?)"
        " or (state = 'sending' and claimed_until < ?))"
        f" and not exists ({_SUPPRESSED_HERE})",
        [owner, format_time(now + lease), delivery_id, stamp, stamp],
    )
    return cursor.rowcount == 1


def _held_by(owner: str | None) -> tuple[str, list]:
    """The SQL condition (and its argument) that `owner`'s claim still holds a row."""
    return ("", []) if owner is None else (" and state = 'sending' and claimed_by = ?", [owner])


def open_store(path: str | Path) -> Store:
    """Open (creating and migrating as needed) the database at `path`."""
    path = str(path)
    if path != ":memory:":
        parent = Path(path).parent
        if not parent.exists():
            raise StoreError(f"cannot create the database {path}: folder {parent} does not exist")
    db = None
    try:
        db = sqlite_utils.Database(path)
        db.execute("PRAGMA busy_timeout = 10000")
        if path != ":memory:":
            db.enable_wal()
            # In WAL mode, NORMAL loses no commit when paperbot crashes, only the last ones
            # when the machine loses power; records of sends wait for the disk in batches
            # (Store.sync, bot.deliver.send_due). FULL everywhere cost four disk syncs per digest.
            db.execute("PRAGMA synchronous = NORMAL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            _claim_new_database(db)
    except sqlite3.Error as error:  # not a database, a folder, locked, ...
        if db is not None:
            db.close()
        raise StoreError(f"cannot open the database {path}: {error}") from error
    if version > SCHEMA_VERSION:
        db.close()
        raise StoreError(
            f"the database {path} has schema version {version}, newer than this paperbot "
            f"knows ({SCHEMA_VERSION}): upgrade paperbot"
        )
    for number in range(version, SCHEMA_VERSION):
        try:
            with db.conn:
                MIGRATIONS[number](db)
                db.execute(f"PRAGMA user_version = {number + 1}")
        except sqlite3.Error as error:
            # e.g. another program's database that already has a `papers` table
            db.close()
            raise StoreError(
                f"cannot migrate the database {path} to schema version {number + 1}: {error}: "
                "is it a paperbot database?"
            ) from error
        log.info("migrated %s to schema version %d", path, number + 1)
    return Store(db, path)
