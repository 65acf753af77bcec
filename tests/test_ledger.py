"""The delivery ledger and the email senders, with a real SQLite file and a real SMTP server.

What a subscriber would notice: a paper never reaches them twice, a message the server
did not take is tried again and arrives once, a dead address stops being tried.
"""

from __future__ import annotations

import dataclasses
import email
import os
from datetime import datetime, timedelta

import pytest

from bot.channels.email import OutboxSender, SmtpSender
from bot.deliver import RetryPolicy, Sending, release, send_due, settle
from bot.errors import PermanentError, StoreError, TransientError
from bot.store import format_time, open_store
from conftest import LEDGER_T0, reserve_row

T0 = LEDGER_T0
# Each SMTP test runs against a server that offers PIPELINING (paperbot sends MAIL, RCPT and
# DATA in one write) and one that does not (smtplib's one command at a time).
BOTH_SERVERS = pytest.mark.parametrize("smtp_server", ["pipelining", "no pipelining"], indirect=True)
MESSAGE = (
    b"From: paperbot <papers@example.org>\r\nTo: alice@example.org\r\nSubject: 2 papers\r\n"
    b"Message-ID: <paperbot.1@example.org>\r\n\r\nhello\r\n"
)


@pytest.fixture
def ledger(tmp_path):
    with open_store(tmp_path / "paperbot.db") as store:
        yield store


def reserve(store, sid="alice", period="2026-06-12", papers=("2606.1", "2606.2"), channel="email"):
    """A digest ready to send: reserved, its message attached, read back from the ledger."""
    delivery = reserve_row(store, sid, period, papers, channel)
    if delivery.state == "new":
        store.attach_message(delivery.id, message=MESSAGE, message_id=f"<{sid}.{period}@x>", subject="s")
    return store.get_delivery(delivery.id)


def smtp(server, **options) -> SmtpSender:
    return SmtpSender(
        host="127.0.0.1", port=server.port, sender="papers@example.org", security="none", timeout=5, **options
    )


# -- the ledger --------------------------------------------------------------------------------


def test_where_the_last_digest_and_alert_ended_is_read_in_as_many_steps_after_a_year_as_after_a_week(
    ledger,
):
    """Every run asks, of every subscriber channel, where its last digest ended (digest_marks),
    and of those with instant watches, where its last instant alert ended: the next one's
    papers start there; and which of the papers it would show went already. After a year of
    daily digests, with instant alerts in the first week only, the ledger must answer each in
    as many steps as after that week. Counted as the steps of SQLite's virtual machine (its
    progress handler), not timed: reading every digest and alert of the subscriber, as it did
    for the first two, took about 20 times as many after the year."""

    def digest(sid: str, day: int, period: str | None = None) -> None:
        end = T0 + timedelta(days=day, hours=0 if period is None else 2)
        ledger.reserve_delivery(
            subscriber_id=sid,
            channel="email",
            kind="email",
            period=period or f"{end:%Y-%m-%d}",
            recipient=f"{sid}@example.org",
            paper_ids=[f"{sid}.{day}.{period is not None}"],
            window_start=end - timedelta(days=1),
            window_end=end,
            now=end,
        )

    def answer_and_steps(ask):
        steps = [0]

        def step() -> int:
            steps[0] += 1
            return 0  # go on

        ledger.db.conn.set_progress_handler(step, 1)
        try:
            answer = ask()
        finally:
            ledger.db.conn.set_progress_handler(None, 1)
        return answer, steps[0]

    questions = [  # where the last digest ended, the last alert; which papers went already
        lambda: ledger.digest_marks("alice", "email", "2099-01-01").last_window_end,
        lambda: ledger.digest_marks("alice", "email", "2099-01-01", instant=True).last_window_end,
        lambda: ledger.delivered_papers("alice", "email", ["alice.3.False", "alice.3.True", "new"]),
    ]

    def days(start: int, stop: int) -> None:
        for day in range(start, stop):
            for sid in ("alice", "bob"):
                digest(sid, day)
            if day < 7:
                digest("alice", day, f"instant {day}")  # later than that day's digest

    days(0, 7)
    week = [answer_and_steps(ask) for ask in questions]
    days(7, 365)
    year = [answer_and_steps(ask) for ask in questions]
    sent = {"alice.3.False", "alice.3.True"}
    assert [answer for answer, _ in week] == [T0 + timedelta(days=6), T0 + timedelta(days=6, hours=2), sent]
    assert [answer for answer, _ in year] == [T0 + timedelta(days=364), T0 + timedelta(days=6, hours=2), sent]
    for (_, week_steps), (_, year_steps) in zip(week, year, strict=True):
        assert year_steps < 2 * week_steps, (week, year)


def test_a_message_is_stored_packed_and_read_back_byte_for_byte(ledger):
    """A digest's message is kept zstd-packed (the ledger grows a quarter as fast), and whoever
    reads it gets the very bytes that were made: the sender, a retry, the due list."""
    digest = MESSAGE + b"".join(b'<td style="padding:0 16px">card %d</td>\r\n' % n for n in range(800))
    made = reserve_row(ledger, papers=["a"])
    ledger.attach_message(made.id, message=digest, message_id="<a@x>", subject="s")
    whole = reserve_row(ledger, sid="bob", papers=["a"], message=(digest, "<b@x>", "s"))
    assert whole.state == "pending" and whole.message is digest  # as made, not read back
    for delivery_id in (made.id, whole.id):
        assert ledger.stored_message(delivery_id) == ledger.get_delivery(delivery_id).message == digest
    assert [d.message for d in ledger.deliveries_to_send(T0, {})] == [None, None]  # read when sent
    stored = ledger.db.execute("select length(message), encoding from delivery_bodies").fetchall()
    assert stored == [(stored[0][0], "zstd")] * 2 and stored[0][0] < len(digest) / 5


def test_a_message_handed_over_packed_is_stored_as_it_came(ledger):
    """A big run's helper hands its messages over packed (pack_message); the run stores those
    very bytes, and sends the message they unpack to, which the ledger reads back. (Packed here
    otherwise than pack_message packs, so that packing again would show.)"""
    import zstandard

    from bot.store import PackedMessage, pack_message

    digest = MESSAGE + b"".join(b"<p>card %d</p>\r\n" % n for n in range(300))
    assert len(pack_message(digest)) < len(digest) / 5
    handed = PackedMessage(zstandard.ZstdCompressor(level=19, write_checksum=True).compress(digest))
    assert handed.data == digest and handed.packed != pack_message(digest)
    whole = reserve_row(ledger, papers=["a"], message=(handed.data, "<a@x>", "s"), packed=handed)
    assert whole.state == "pending" and whole.message is handed.data
    (kept,) = ledger.db.execute("select message from delivery_bodies").fetchone()
    assert kept == handed.packed and ledger.stored_message(whole.id) == digest
    # Made for papers the ledger no longer gives it all of: neither stored nor sent.
    taken = reserve_row(
        ledger, period="2026-06-13", papers=["a", "b"], message=(handed.data, "<b@x>", "s"), packed=handed
    )
    assert taken.state == "new" and taken.paper_ids == ("b",) and taken.message is None
    assert ledger.db.execute("select count(*) from delivery_bodies").fetchone() == (1,)
    with pytest.raises(ValueError, match="packed is not the message's"):
        reserve_row(ledger, sid="carol", papers=["c"], message=(MESSAGE, "<c@x>", "s"), packed=handed)
    with pytest.raises(StoreError, match="handed over packed cannot be unpacked"):
        PackedMessage(handed.packed[:-9] + bytes(9))


def test_a_message_stored_unpacked_by_an_older_paperbot_is_read_as_it_is(ledger):
    delivery = reserve(ledger)
    ledger.db.execute(
        "update delivery_bodies set message = ?, encoding = null where delivery_id = ?",
        [MESSAGE, delivery.id],
    )
    assert ledger.stored_message(delivery.id) == ledger.get_delivery(delivery.id).message == MESSAGE


@pytest.mark.parametrize(
    ("message", "encoding", "error"),
    [(b"not zstd at all", "zstd", "the database is damaged"), (MESSAGE, "brotli", "'brotli'.*upgrade it")],
)
def test_a_stored_message_that_cannot_be_read_is_a_store_error(ledger, message, encoding, error):
    delivery = reserve(ledger)
    ledger.db.execute(
        "update delivery_bodies set message = ?, encoding = ? where delivery_id = ?",
        [message, encoding, delivery.id],
    )
    with pytest.raises(StoreError, match=error):
        ledger.stored_message(delivery.id)
    with pytest.raises(StoreError, match=error):
        ledger.get_delivery(delivery.id)


def damage(ledger, delivery_id: int, change) -> None:
    """Rewrite a stored (packed) message as `change` makes it, as a damaged disk might."""
    (packed,) = ledger.db.execute(
        "select message from delivery_bodies where delivery_id = ?", [delivery_id]
    ).fetchone()
    ledger.db.execute(
        "update delivery_bodies set message = ? where delivery_id = ?", [change(packed), delivery_id]
    )


@pytest.mark.parametrize("at", [0.3, 0.5, 0.7, 0.95])
def test_a_damaged_byte_in_a_stored_message_is_a_store_error_not_other_bytes(ledger, at):
    delivery = reserve(ledger)
    damage(
        ledger,
        delivery.id,
        lambda packed: (
            packed[: int(len(packed) * at)]
            + bytes([packed[int(len(packed) * at)] ^ 0x10])
            + packed[int(len(packed) * at) + 1 :]
        ),
    )
    with pytest.raises(StoreError, match="the database is damaged"):
        ledger.stored_message(delivery.id)


def test_a_damaged_header_claiming_a_huge_message_is_a_store_error(ledger):
    """Its frame header rewritten to read the next 8 bytes as its size: nothing is allocated for it."""
    delivery = reserve(ledger)
    damage(ledger, delivery.id, lambda packed: packed[:4] + b"\xe0" + packed[5:])
    with pytest.raises(StoreError, match="the database is damaged"):
        ledger.stored_message(delivery.id)


def test_a_digest_whose_stored_message_is_damaged_fails_and_the_others_go(ledger, tmp_path):
    damaged, fine = reserve(ledger, sid="alice"), reserve(ledger, sid="bob")
    damage(ledger, damaged.id, lambda packed: packed[:-6] + bytes([packed[-6] ^ 0xFF]) + packed[-5:])
    outbox = OutboxSender(tmp_path / "outbox")

    outcomes = {o.delivery.subscriber_id: o for o in send_due(ledger, {"email": outbox}, lambda: T0)}

    assert outcomes["bob"].status == "sent" and ledger.get_delivery(fine.id).state == "sent"
    assert outcomes["alice"].status == "failed" and "cannot be read back" in outcomes["alice"].detail
    state = ledger.db.execute("select state from deliveries where id = ?", [damaged.id]).fetchone()
    assert state == ("failed",)  # not retried forever
    assert [f.name for f in (tmp_path / "outbox").iterdir()] == ["2026-06-12-bob-email.eml"]


def test_a_paper_is_reserved_once_per_subscriber_and_channel(ledger):
    first = reserve(ledger, period="2026-06-12", papers=["a", "b"])
    second = reserve(ledger, period="2026-06-13", papers=["b", "c"])
    other_channel = reserve(ledger, period="2026-06-13", papers=["b"], channel="lab-slack")
    other_person = reserve(ledger, sid="bob", period="2026-06-13", papers=["b"])
    assert first.paper_ids == ("a", "b")
    assert second.paper_ids == ("c",)  # b went out in the first digest
    assert other_channel.paper_ids == ("b",) and other_person.paper_ids == ("b",)


def test_reserving_returns_the_row_as_the_ledger_reads_it_back(ledger):
    made = reserve_row(ledger, papers=["a", "b", "a"])
    assert made == ledger.get_delivery(made.id) and made.paper_ids == ("a", "b")


def test_a_message_made_beforehand_is_stored_with_its_papers_only_when_it_has_them_all(ledger):
    """A helper renders a digest before the ledger reserves its papers: the message goes in
    with them, pending, as attach_message would leave it; when a paper went out in another
    digest meanwhile, the row waits, new, for a message of what it holds."""
    made = (MESSAGE, "<m1@x>", "2 papers")

    def reserve_made(period: str, papers: list[str]):
        return ledger.reserve_delivery(
            subscriber_id="alice",
            channel="email",
            kind="email",
            period=period,
            recipient="alice@example.org",
            paper_ids=papers,
            window_start=T0 - timedelta(days=1),
            window_end=T0,
            now=T0,
            message=made,
        )

    whole = reserve_made("2026-06-12", ["a", "b"])
    assert (whole.state, whole.message, whole.message_id, whole.subject) == ("pending", *made)
    assert whole == ledger.get_delivery(whole.id)
    short = reserve_made("2026-06-13", ["b", "c"])
    assert (short.state, short.paper_ids, short.message, short.message_id) == ("new", ("c",), None, None)
    assert short == ledger.get_delivery(short.id) and ledger.stored_message(short.id) is None


def test_a_commit_inside_a_batch_is_refused(ledger):
    """Inside a batch, writes that commit on their own would end it: they are refused."""
    with pytest.raises(RuntimeError, match="outside Store.batch"):
        with ledger.batch():
            reserve(ledger, "alice")
            ledger.record_fetch(
                url="https://huggingface.co/api/daily_papers",
                source="api",
                listing="daily",
                started_at=T0,
                status="ok",
            )
    assert ledger.find_delivery("alice", "email", "2026-06-12") is None  # the batch was undone
    with pytest.raises(RuntimeError, match="committed inside Store.batch"):
        with ledger.batch():
            reserve(ledger, "bob")
            ledger.db.conn.commit()  # as `with conn:` in older sqlite-utils' writes does


def test_reserving_the_same_digest_again_returns_it_unchanged(ledger):
    first = reserve(ledger, papers=["a"])
    again = reserve(ledger, papers=["a", "z"])
    assert again.id == first.id and again.paper_ids == ("a",) and again.message == MESSAGE


def test_only_one_process_can_claim_a_digest_and_a_dead_claim_expires(ledger):
    delivery = reserve(ledger)
    lease = timedelta(minutes=5)
    assert ledger.claim_delivery(delivery.id, "one", T0, lease)
    assert not ledger.claim_delivery(delivery.id, "two", T0 + timedelta(minutes=1), lease)
    assert ledger.deliveries_to_send(T0 + timedelta(minutes=1)) == []
    # "one" was killed mid-send: once its lease runs out the digest is due again
    assert [d.id for d in ledger.deliveries_to_send(T0 + timedelta(minutes=6))] == [delivery.id]
    assert ledger.claim_delivery(delivery.id, "two", T0 + timedelta(minutes=6), lease)
    assert ledger.get_delivery(delivery.id).attempts == 2


def test_sent_claims_the_next_digest_in_the_same_commit_and_unclaim_lets_it_go_uncounted(ledger):
    """One commit a message: recording a send claims the digest to go next, as claim_delivery
    would (not one another process holds, nor one of a suppressed address); a sender that does
    not send it after all lets it go, pending and uncounted, and only its own claim."""
    first, second, third = (reserve(ledger, sid) for sid in ("alice", "bob", "carol"))
    lease = timedelta(minutes=5)
    assert ledger.claim_delivery(first.id, "one", T0, lease)
    assert ledger.mark_sent(first.id, T0, then_claim=(second.id, "one", lease)) == ledger.version()
    assert ledger.get_delivery(first.id).state == "sent"
    held = ledger.get_delivery(second.id)
    assert (held.state, held.attempts) == ("sending", 1)
    assert not ledger.claim_delivery(second.id, "two", T0, lease)  # held, as any claim
    assert not ledger.unclaim(second.id, "two")  # not two's to let go
    assert ledger.unclaim(second.id, "one")
    again = ledger.get_delivery(second.id)
    assert (again.state, again.attempts) == ("pending", 0)
    assert [d.id for d in ledger.deliveries_to_send(T0)] == [second.id, third.id]
    # Not one another process holds, nor one of an address suppressed meanwhile; the send is
    # recorded all the same.
    assert ledger.claim_delivery(second.id, "two", T0, lease)
    assert ledger.mark_sent(third.id, T0, then_claim=(second.id, "one", lease)) is None
    ledger.suppress("carol", "email", "carol@example.org", "unsubscribed", T0)
    fourth = reserve(ledger, "carol", period="2026-06-13", papers=("2606.3",))
    assert ledger.mark_sent(second.id, T0, then_claim=(fourth.id, "two", lease)) is None
    assert [ledger.get_delivery(d.id).state for d in (second, third, fourth)] == ["sent", "sent", "pending"]


def test_a_batch_waits_for_the_disk_every_tenth_of_a_second_and_at_its_end(ledger, tmp_path, monkeypatch):
    """Each "sent" is committed at once (synchronous=NORMAL: a crash of paperbot loses none); a
    power cut can undo at most the records of the last `sync_every` seconds (and of a wait for
    the disk then under way); a batch ends on disk."""
    import bot.store

    assert ledger.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL, from open_store
    synced = []
    real_fsync = bot.store.os.fsync
    monkeypatch.setattr(
        bot.store.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd)
    )
    outbox = OutboxSender(tmp_path / "outbox")
    for sid in ("a", "b", "c"):
        reserve(ledger, sid)
    outcomes = send_due(ledger, {"email": outbox}, lambda: T0, sync_every=3600)
    assert [o.status for o in outcomes] == ["sent"] * 3
    # Once, at the end: the write-ahead log, which holds the commits (the database file gets
    # its own fsync when a checkpoint copies them into it).
    assert synced == [f"{ledger.path}-wal"]
    with open_store(ledger.path) as again:  # another connection reads them all as sent
        assert again.delivery_counts().get("sent") == 3


def test_a_slow_disk_holds_up_no_message_but_sending_ends_on_disk(ledger, tmp_path, monkeypatch):
    """Between messages, the wait for the disk (once `sync_every` has passed: here at once) is
    left to a thread while the next messages go; send_due returns once every record is on disk."""
    import time

    import bot.store

    events = []
    real_fsync = bot.store.os.fsync

    def slow_fsync(fd):
        events.append("sync begins")
        time.sleep(0.3)
        real_fsync(fd)
        events.append("sync ends")

    class Recording(OutboxSender):
        def send(self, delivery):
            events.append("send")
            super().send(delivery)

    monkeypatch.setattr(bot.store.os, "fsync", slow_fsync)
    for sid in ("d", "e", "f"):
        reserve(ledger, sid)
    outcomes = send_due(ledger, {"email": Recording(tmp_path / "outbox")}, lambda: T0, sync_every=0)
    events.append("returned")
    assert [o.status for o in outcomes] == ["sent"] * 3
    # The first message's record went to the disk while the other two were sent...
    assert events.index("sync begins") < events.index("sync ends")
    assert [e for e in events[: events.index("sync ends")] if e == "send"] == ["send"] * 3
    # ...and the last ones before send_due returned: every sync that began had ended.
    assert events[-2:] == ["sync ends", "returned"] and events.count("sync begins") == events.count(
        "sync ends"
    )


def test_a_disk_that_fails_under_a_waiting_thread_stops_the_sending(ledger, tmp_path, monkeypatch):
    """An fsync that fails in the thread that waits for the disk (EIO: the records may be lost)
    is raised where the sending goes on, not only printed: nothing claims they are safe."""
    import errno

    import bot.store

    calls = []
    real_fsync = bot.store.os.fsync

    def failing_once(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(bot.store.os, "fsync", failing_once)
    for sid in ("d", "e", "f"):
        reserve(ledger, sid)
    with pytest.raises(OSError, match="Input/output error"):
        send_due(ledger, {"email": OutboxSender(tmp_path / "outbox")}, lambda: T0, sync_every=0)


def test_the_outcomes_of_a_send_do_not_keep_the_messages(ledger, smtp_server):
    """A run keeps every outcome to its end; the messages, sent from memory or read from the
    ledger, are let go once sent or refused (a run of 100,000 digests would hold them all)."""
    rows = [reserve(ledger, sid) for sid in ("alice", "bob", "carol")]
    smtp_server.handler.rcpt_replies = {"alice@example.org": RELAY_DENIED}  # judged once bob's goes
    sending = Sending()
    sending.stored.update((row.id, row) for row in rows[:2])  # two sent from memory, one read
    sender = smtp(smtp_server)
    outcomes = send_due(ledger, {"email": sender}, lambda: T0, sending=sending)
    sender.close()
    assert sorted((o.delivery.subscriber_id, o.status) for o in outcomes) == [
        ("alice", "failed"),
        ("bob", "sent"),
        ("carol", "sent"),
    ]
    assert [o.delivery.message for o in outcomes] == [None, None, None]


# -- SMTP, against a real server on 127.0.0.1 --------------------------------------------------


def test_writes_in_a_batch_reach_other_readers_together_and_a_failed_one_alone_is_undone(ledger):
    """A run reserves and renders its digests many to a commit (Store.batch): another process
    sees none of them until the batch ends, then all; a write that fails inside is undone
    alone; a batch that fails (a crash) leaves nothing half made."""
    with open_store(ledger.path) as other:
        with ledger.batch():
            kept = reserve(ledger, "alice")
            with pytest.raises(RuntimeError):
                with ledger._immediate() as conn:  # a write that fails halfway
                    conn.execute("update deliveries set state = 'failed' where id = ?", [kept.id])
                    raise RuntimeError("rendering failed")
            reserve(ledger, "bob")
            assert other.delivery_counts() == {}  # nothing committed yet
        assert other.delivery_counts() == {"pending": 2}
        assert ledger.stored_message(ledger.find_delivery("alice", "email", "2026-06-12").id) == MESSAGE

        with pytest.raises(KeyboardInterrupt):
            with ledger.batch():
                reserve(ledger, "carol")
                raise KeyboardInterrupt
        assert ledger.find_delivery("carol", "email", "2026-06-12") is None
        assert other.delivery_counts() == {"pending": 2}


def test_a_durable_write_in_a_batch_makes_the_batch_wait_for_the_disk(ledger, monkeypatch):
    import bot.store

    synced = []
    monkeypatch.setattr(bot.store.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))
    with ledger.batch():
        reserve(ledger, "alice")
    assert synced == []
    with ledger.batch():
        ledger.suppress("alice", "email", "alice@example.org", "asked to stop", T0)  # durable
    assert synced == [f"{ledger.path}-wal"]  # once the batch is committed: the log that holds it
    assert ledger.suppression("alice", "email") == "asked to stop"


@BOTH_SERVERS
def test_smtp_sends_the_stored_bytes_over_one_connection(ledger, smtp_server):
    a, b = reserve(ledger, "alice"), reserve(ledger, "bob")
    sender = smtp(smtp_server)
    sender.send(a)
    sender.send(b)
    sender.close()
    got = smtp_server.handler.messages
    assert [to for _, to, _ in got] == [["alice@example.org"], ["bob@example.org"]]
    assert got[0][0] == "papers@example.org"
    assert email.message_from_bytes(got[0][2])["Message-ID"] == "<paperbot.1@example.org>"
    assert smtp_server.handler.sessions == 1


@BOTH_SERVERS
def test_smtp_envelopes_name_each_address_as_written(ledger, smtp_server):
    """Plus, apostrophe and dotted addresses go as they are; a quoted local part as smtplib has it."""
    addresses = ["o'brien+papers@example.org", "a.b-c_d@mail.example.co.uk", '"john doe"@example.org']
    sender = smtp(smtp_server)
    for number, address in enumerate(addresses):
        row = reserve(ledger, f"reader{number}")
        sender.send(dataclasses.replace(row, recipient=address))
    sender.close()
    assert [to for _, to, _ in smtp_server.handler.messages] == [[a] for a in addresses]
    assert {sent_from for sent_from, _, _ in smtp_server.handler.messages} == {"papers@example.org"}


def test_the_envelope_brackets_an_address_as_smtplib_does():
    """The quick way for plain addresses gives what smtplib.quoteaddr gives, for those and the rest."""
    import random
    import smtplib

    from bot.channels.email import _bracketed

    written = [
        "alice@example.org",
        "o'brien+papers@example.org",
        "x!#$%&*/=?^_`{|}~-@a-b.example",
        '"john doe"@example.org',
        "Alice <alice@example.org>",
        "a..b@example.org",
        ".a@example.org",
        "a@example..org",
        "a@[127.0.0.1]",
        "not an address",
        "",
    ]
    rng = random.Random(4)
    made = ["".join(rng.choice("ab9!'.-+@ <>\"") for _ in range(rng.randint(1, 12))) for _ in range(20_000)]
    for address in written + made:
        assert _bracketed(address) == smtplib.quoteaddr(address), address


@BOTH_SERVERS
def test_the_next_messages_envelope_goes_ahead_and_each_message_arrives_whole(ledger, smtp_server):
    """With `expect`, the next message's MAIL, RCPT and DATA go out with the end of the one sent
    now; its content only when it is sent. Every message arrives once, whole, in one session."""
    rows = [reserve(ledger, sid) for sid in ("alice", "bob", "carol")]
    sender = smtp(smtp_server)
    for row, following in zip(rows, [*rows[1:], None], strict=True):
        if following is not None:
            sender.expect(following)
        sender.send(row)
    sender.close()
    got = smtp_server.handler.messages
    assert [to for _, to, _ in got] == [["alice@example.org"], ["bob@example.org"], ["carol@example.org"]]
    assert [data for _, _, data in got] == [MESSAGE] * 3
    assert smtp_server.handler.sessions == 1


@pytest.mark.parametrize("then", ["another message", "nothing", "close"])
def test_an_envelope_sent_ahead_for_a_message_that_does_not_follow_delivers_nothing(
    ledger, smtp_server, then
):
    """The expected message may not come next (another process claimed it, the run stopped):
    its envelope, which the server answered with 354, is ended by closing the connection, never
    by a bare "." (an empty message) or a command the server would take as its content."""
    alice, bob, carol = (reserve(ledger, sid) for sid in ("alice", "bob", "carol"))
    sender = smtp(smtp_server)
    sender.expect(bob)
    sender.send(alice)
    if then == "another message":
        sender.send(carol)
    elif then == "close":
        sender.close()
    sender.close()
    expected = [["alice@example.org"]] + ([["carol@example.org"]] if then == "another message" else [])
    assert [to for _, to, _ in smtp_server.handler.messages] == expected
    assert [data for _, _, data in smtp_server.handler.messages] == [MESSAGE] * len(expected)


@pytest.mark.parametrize("reply", ["451 4.3.0 try later", "550 5.7.1 rejected"])
def test_a_refused_message_with_the_next_envelope_ahead_leaves_the_next_one_whole(ledger, smtp_server, reply):
    """The server refuses a message's content after the next one's envelope went with it: the
    refusal is that message's own, and the next arrives whole (a RSET there would have been
    taken as its content)."""
    alice, bob = reserve(ledger, "alice"), reserve(ledger, "bob")
    smtp_server.handler.replies = [reply]
    sender = smtp(smtp_server)
    sender.expect(bob)
    with pytest.raises(TransientError if reply.startswith("4") else PermanentError, match=reply[:3]):
        sender.send(alice)
    sender.send(bob)
    sender.close()
    assert [(to, data) for _, to, data in smtp_server.handler.messages] == [(["bob@example.org"], MESSAGE)]


def test_a_refused_recipient_met_in_an_envelope_sent_ahead_is_its_own_failure(ledger, smtp_server):
    alice, bob, carol = (reserve(ledger, sid) for sid in ("alice", "bob", "carol"))
    smtp_server.handler.rcpt_replies = {"bob@example.org": "550 5.1.1 no such user"}
    sender = smtp(smtp_server)
    sender.expect(bob)
    sender.send(alice)
    sender.expect(carol)
    with pytest.raises(PermanentError, match="550 5.1.1"):
        sender.send(bob)
    sender.send(carol)
    sender.close()
    assert [to for _, to, _ in smtp_server.handler.messages] == [["alice@example.org"], ["carol@example.org"]]
    assert [data for _, _, data in smtp_server.handler.messages] == [MESSAGE] * 2


@BOTH_SERVERS
def test_smtp_doubles_a_leading_dot_so_the_message_arrives_as_stored(ledger, smtp_server):
    """paperbot's own messages have no line starting with "." (bot.message writes it =2E), but
    a message stored by an earlier version may: SMTP's dot-stuffing must keep it whole."""
    dotted = MESSAGE.replace(b"hello\r\n", b".hidden{color:red}\r\n.\r\n..\r\nhello.\r\n.")
    delivery = reserve_row(ledger)
    ledger.attach_message(delivery.id, message=dotted, message_id="<dots@x>", subject="s")
    sender = smtp(smtp_server)
    sender.send(ledger.get_delivery(delivery.id))
    sender.close()
    assert smtp_server.handler.messages[0][2] == dotted + b"\r\n"  # the last line ended for DATA


@BOTH_SERVERS
@pytest.mark.parametrize(
    ("reply", "error", "says"),
    [
        ("451 4.3.0 try again later", TransientError, "451"),
        ("drop", TransientError, "connection"),
        ("550 5.1.1 no such user", PermanentError, "550"),
    ],
)
def test_smtp_replies_sort_into_transient_and_permanent(ledger, smtp_server, reply, error, says):
    smtp_server.handler.replies = [reply]
    sender = smtp(smtp_server)
    with pytest.raises(error, match=says):
        sender.send(reserve(ledger))
    sender.send(reserve(ledger, "bob"))  # the same sender goes on (reconnecting after a drop)
    sender.close()
    assert [to for _, to, _ in smtp_server.handler.messages] == [["bob@example.org"]]


@BOTH_SERVERS
@pytest.mark.parametrize(
    ("reply", "error"),
    [("451 4.7.1 greylisted, try again later", TransientError), ("550 5.1.1 no such user", PermanentError)],
)
def test_a_recipient_refused_at_rcpt_is_sorted_and_the_connection_goes_on(ledger, smtp_server, reply, error):
    smtp_server.handler.rcpt_replies = {"alice@example.org": reply}
    sender = smtp(smtp_server)
    with pytest.raises(error, match=f"refused alice@example.org: {reply[:3]}"):
        sender.send(reserve(ledger))
    sender.send(reserve(ledger, "bob"))
    sender.close()
    assert [to for _, to, _ in smtp_server.handler.messages] == [["bob@example.org"]]
    assert smtp_server.handler.sessions == 1


class LaxSmtpServer:
    """A scripted SMTP server on 127.0.0.1 that offers PIPELINING and answers DATA with 354
    even when it refused every recipient (RFC 2920 lets it; aiosmtpd answers 503 instead).
    After the empty message's dot it answers 554, or, with `drop`, closes the connection."""

    def __init__(self, drop: bool):
        import socket
        import threading

        self.drop, self.messages, self.sessions = drop, [], 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.sessions += 1
            with connection, connection.makefile("rb") as lines:
                self._session(connection, lines)

    def _session(self, connection, lines) -> None:
        connection.sendall(b"220 lax.example.org ESMTP\r\n")
        accepted = []
        for line in lines:
            command = line.decode("ascii").strip().upper()
            if command.startswith("EHLO"):
                connection.sendall(b"250-lax.example.org\r\n250 PIPELINING\r\n")
            elif command.startswith(("MAIL", "RSET")):
                accepted = []
                connection.sendall(b"250 2.1.0 OK\r\n")
            elif command.startswith("RCPT"):
                if "ALICE" in command:
                    connection.sendall(b"550 5.1.1 no such user\r\n")
                else:
                    accepted.append(command)
                    connection.sendall(b"250 2.1.5 OK\r\n")
            elif command == "DATA":
                connection.sendall(b"354 go ahead\r\n")
                body = b"".join(iter(lines.readline, b".\r\n"))
                if accepted:
                    self.messages.append(body)
                    connection.sendall(b"250 2.0.0 queued\r\n")
                elif self.drop:
                    return
                else:
                    connection.sendall(b"554 5.5.1 no valid recipients\r\n")
            elif command == "QUIT":
                connection.sendall(b"221 2.0.0 bye\r\n")
                return

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("drop", [False, True], ids=["554 after the dot", "closed after the dot"])
def test_a_refused_recipient_stays_refused_when_the_server_takes_data_anyway(ledger, drop):
    """The 550 for the recipient decides, whatever the server does after the empty message:
    a permanent failure, never a retry; the next message still goes."""
    server = LaxSmtpServer(drop)
    sender = SmtpSender(host="127.0.0.1", port=server.port, sender="papers@example.org", security="none")
    try:
        with pytest.raises(PermanentError, match="refused alice@example.org: 550"):
            sender.send(reserve(ledger, "alice"))
        sender.send(reserve(ledger, "bob"))
        sender.close()
    finally:
        server.close()
    assert len(server.messages) == 1 and b"hello" in server.messages[0]
    assert server.sessions == (2 if drop else 1)


@BOTH_SERVERS
def test_lines_starting_with_a_dot_arrive_unchanged(ledger, smtp_server):
    body = b".\r\n..two\r\n.three\r\nend"  # no CRLF at the end: the sender adds it
    message = MESSAGE.replace(b"hello\r\n", body)
    delivery = reserve(ledger)
    sender = smtp(smtp_server)
    sender.send(dataclasses.replace(delivery, message=message))
    sender.close()
    ((_, _, data),) = smtp_server.handler.messages
    assert data.split(b"\r\n\r\n", 1)[1] == body + b"\r\n"


def test_an_unreachable_server_is_transient(ledger):
    sender = SmtpSender(host="127.0.0.1", port=1, sender="p@example.org", security="none", timeout=2)
    with pytest.raises(TransientError, match="cannot reach"):
        sender.send(reserve(ledger))


def test_messages_a_run_keeps_for_sending_are_let_go_when_their_transport_is_down(ledger):
    """A run keeps the messages it has just stored, to send them without reading them back.
    When the server cannot be reached, none is sent, and none stays in memory for the rest of
    the run (a big run would hold every digest): each waits in the ledger, pending."""
    rows = [reserve(ledger, sid) for sid in ("alice", "bob", "carol")]
    sending = Sending()
    sending.stored.update((row.id, row) for row in rows)
    down = SmtpSender(host="127.0.0.1", port=1, sender="p@example.org", security="none", timeout=2)
    outcomes = send_due(ledger, {"email": down}, lambda: T0, sending=sending)
    assert [o.status for o in outcomes] == ["down"]  # the first tells; the others are not tried
    assert sending.stored == {}
    assert ledger.delivery_counts() == {"pending": 3}


def test_a_digest_kept_in_memory_that_another_process_tried_since_is_read_again(ledger, smtp_server):
    """A run sends the digests it has just stored from memory, as it wrote them; one that
    another paperbot process has tried since (and that is due again) is read from the ledger,
    so its attempts count: here the second failure is its last."""
    policy = RetryPolicy(max_attempts=2, first_wait=timedelta(0))
    alice, bob = reserve(ledger, "alice"), reserve(ledger, "bob")
    sending = Sending()
    sending.stored.update({alice.id: alice, bob.id: bob})
    with open_store(ledger.path) as other:  # tried once by another process: 451, due again now
        assert other.claim_delivery(alice.id, "other", T0, policy.lease)
        assert other.mark_retry(alice.id, "451 4.3.0 later", T0)
    smtp_server.handler.replies = ["451 4.3.0 later again"]
    sender = smtp(smtp_server)
    outcomes = send_due(ledger, {"email": sender}, lambda: T0, policy, sending=sending)
    sender.close()
    assert [(o.delivery.subscriber_id, o.status) for o in outcomes] == [("alice", "failed"), ("bob", "sent")]
    assert "gave up after 2 attempts" in ledger.get_delivery(alice.id).last_error
    assert [to for _, to, _ in smtp_server.handler.messages] == [["bob@example.org"]]


def test_the_rate_limit_spaces_messages(ledger, smtp_server):
    # the clock as the sender reads it: before each send, and again after any wait
    waits, moments = [], iter([0.0, 0.1, 0.5, 0.7, 1.0])
    sender = smtp(smtp_server, rate=2.0, sleep=waits.append, clock=lambda: next(moments))
    for sid in ("a", "b", "c"):
        sender.send(reserve(ledger, sid))
    sender.close()
    assert waits == pytest.approx([0.4, 0.3])


def test_the_outbox_writes_one_file_per_digest_and_a_retry_rewrites_it(ledger, tmp_path):
    outbox = OutboxSender(tmp_path / "outbox")
    delivery = reserve(ledger)
    outbox.send(delivery)
    outbox.send(delivery)
    files = list((tmp_path / "outbox").iterdir())
    assert [f.name for f in files] == ["2026-06-12-alice-email.eml"]
    assert files[0].read_bytes() == MESSAGE


def test_a_subscriber_with_a_very_long_id_still_gets_an_outbox_file_of_their_own(ledger, tmp_path):
    outbox = OutboxSender(tmp_path / "outbox")
    long_ones = [reserve(ledger, sid="x" * 240 + tail) for tail in ("a", "b")]
    for delivery in long_ones:
        outbox.send(delivery)  # a name over 255 bytes: "File name too long"
    names = sorted(f.name for f in (tmp_path / "outbox").iterdir())
    assert len(names) == 2 and all(len(name) <= 210 for name in names)


def test_a_row_that_kept_an_address_as_its_variable_is_sent_to_the_address(ledger, smtp_server, monkeypatch):
    """Rows an older paperbot wrote kept an email channel's recipient as "${BOB_WORK_MAIL}"."""
    monkeypatch.setenv("BOB_WORK_MAIL", "bob@work.example.org")
    row = ledger.reserve_delivery(
        subscriber_id="bob",
        channel="work",
        kind="email",
        period="2026-06-12",
        recipient="${BOB_WORK_MAIL}",
        paper_ids=["2606.1"],
        window_start=T0 - timedelta(days=1),
        window_end=T0,
        now=T0,
    )
    ledger.attach_message(row.id, message=MESSAGE, message_id="<bob@x>", subject="s")
    sender = smtp(smtp_server)
    (outcome,) = send_due(ledger, {"email": sender}, lambda: T0)
    sender.close()
    assert outcome.status == "sent" and smtp_server.handler.messages[0][1] == ["bob@work.example.org"]


RELAY_DENIED = "554 5.7.1 <alice@example.org>: Relay access denied"


class MeddlingSender:
    """An SMTP sender that, as bob's digest goes, lets another paperbot process (a connection
    of its own, at `other_time`) send what is due through the same server. `clock`: this
    run's, which `slow` moves on 9 minutes once alice's digest was tried (a slow run)."""

    def __init__(self, ledger, server, other_time: datetime, slow: bool = False, at_once: bool = False):
        self.inner, self.ledger, self.server = smtp(server), ledger, server
        self.other_time, self.slow, self.at_once, self.others, self.clock = (
            other_time,
            slow,
            at_once,
            [],
            [T0],
        )

    def send(self, delivery):
        if delivery.subscriber_id == "alice":
            try:
                return self.inner.send(delivery)
            finally:
                if self.slow:
                    self.clock[0] = T0 + timedelta(minutes=9)
                    self.server.handler.rcpt_replies = {}  # and alice's server takes her mail now
                if self.at_once:  # the other process runs right after alice's refusal
                    self.meddle()
        self.meddle()
        return self.inner.send(delivery)

    def meddle(self):
        with open_store(self.ledger.path) as other:
            sender = smtp(self.server)
            self.others = send_due(other, {"email": sender}, lambda: self.other_time)
            sender.close()

    def close(self):
        self.inner.close()


def test_a_refusal_waiting_to_be_judged_stays_claimed(ledger, smtp_server):
    """Alice's refusal is judged by what follows: until then her digest stays claimed, so
    another process sending meanwhile leaves it alone; bob's going makes it her own failure."""
    reserve(ledger, sid="alice")
    reserve(ledger, sid="bob")
    smtp_server.handler.rcpt_replies = {"alice@example.org": RELAY_DENIED}
    sender = MeddlingSender(ledger, smtp_server, other_time=T0 + timedelta(minutes=1))
    mine = send_due(ledger, {"email": sender}, lambda: sender.clock[0])
    sender.close()
    assert sender.others == []  # nothing it could take
    assert sorted((o.delivery.subscriber_id, o.status) for o in mine) == [
        ("alice", "failed"),
        ("bob", "sent"),
    ]
    assert [to for _, to, _ in smtp_server.handler.messages] == [["bob@example.org"]]


def test_a_refusal_whose_claim_ran_out_is_not_written_over_what_another_process_did(ledger, smtp_server):
    """A slow run judges alice's refusal after her claim ran out, and another process sent
    her digest meanwhile: the judgement writes nothing, and it is not sent again."""
    alice, _ = reserve(ledger, sid="alice"), reserve(ledger, sid="bob")
    smtp_server.handler.rcpt_replies = {"alice@example.org": RELAY_DENIED}
    sender = MeddlingSender(ledger, smtp_server, other_time=T0 + timedelta(minutes=10), slow=True)
    mine = send_due(ledger, {"email": sender}, lambda: sender.clock[0])
    sender.close()
    assert [(o.delivery.subscriber_id, o.status) for o in sender.others] == [("alice", "sent")]
    assert sorted((o.delivery.subscriber_id, o.status) for o in mine) == [("alice", "busy"), ("bob", "sent")]
    assert ledger.get_delivery(alice.id).state == "sent"
    assert sorted(to[0] for _, to, _ in smtp_server.handler.messages) == [
        "alice@example.org",
        "bob@example.org",
    ]


def test_a_transport_is_not_called_down_by_a_refusal_whose_digest_another_process_sent(ledger, smtp_server):
    """Alice's refusal is the run's last: it would make the transport down, but her claim ran
    out and another process sent her digest through that very server: not down, no alert."""
    alice = reserve(ledger, sid="alice")
    smtp_server.handler.rcpt_replies = {"alice@example.org": RELAY_DENIED}
    sender = MeddlingSender(
        ledger, smtp_server, other_time=T0 + timedelta(minutes=10), slow=True, at_once=True
    )
    sending = Sending()
    mine = send_due(ledger, {"email": sender}, lambda: sender.clock[0], sending=sending)
    mine += settle(ledger, sending, lambda: sender.clock[0])
    sender.close()
    assert [(o.delivery.subscriber_id, o.status) for o in mine] == [("alice", "busy")]
    assert sending.down == {} and ledger.get_delivery(alice.id).state == "sent"


class RefusedOnce:
    """An SMTP sender whose server refuses `refused`'s RCPT TO once, then takes that address's
    mail again (as after a greylisting)."""

    def __init__(self, server, refused: str):
        self.inner, self.server = smtp(server), server
        server.handler.rcpt_replies = {f"{refused}@example.org": RELAY_DENIED}

    def send(self, delivery):
        try:
            return self.inner.send(delivery)
        finally:
            self.server.handler.rcpt_replies = {}

    def close(self):
        self.inner.close()


def test_the_next_digest_claimed_with_a_send_is_not_sent_once_a_judgement_suppressed_its_address(
    ledger, smtp_server
):
    """Alice's older digest is refused and held; bob's goes, claiming alice's newer one in the
    same commit, and so judges the refusal her own, which suppresses her address
    (suppress_after=1): her newer digest is claimed again, as any is, and not sent."""
    older = reserve(ledger, sid="alice", period="2026-06-11", papers=("2606.0",))
    reserve(ledger, sid="bob")
    newer = reserve(ledger, sid="alice")
    sender = RefusedOnce(smtp_server, "alice")
    outcomes = send_due(ledger, {"email": sender}, lambda: T0, RetryPolicy(suppress_after=1))
    sender.close()
    assert [(o.delivery.id, o.status) for o in outcomes if o.delivery.subscriber_id == "alice"] == [
        (older.id, "failed"),
        (newer.id, "suppressed"),
    ]
    assert [to for _, to, _ in smtp_server.handler.messages] == [["bob@example.org"]]


def test_the_next_digest_claimed_long_ago_is_claimed_again_and_not_sent_twice(ledger, smtp_server):
    """The run is held up after bob's send (a blocked terminal, a paused machine) longer than
    the lease of alice's digest, claimed with it: another process sends hers meanwhile. This
    run claims it again rather than trust the old claim, and leaves it to the other."""
    reserve(ledger, sid="bob")
    alice = reserve(ledger, sid="alice")
    clock = [T0]
    sender = smtp(smtp_server)

    def held_up(outcome):
        if outcome.delivery.subscriber_id == "bob":
            clock[0] = T0 + timedelta(minutes=6)  # the lease is 5
            with open_store(ledger.path) as other:
                theirs = smtp(smtp_server)
                assert [o.status for o in send_due(other, {"email": theirs}, lambda: clock[0])] == ["sent"]
                theirs.close()

    outcomes = send_due(ledger, {"email": sender}, lambda: clock[0], on_outcome=held_up)
    sender.close()
    assert [(o.delivery.subscriber_id, o.status) for o in outcomes] == [("bob", "sent"), ("alice", "busy")]
    assert sorted(to[0] for _, to, _ in smtp_server.handler.messages) == [
        "alice@example.org",
        "bob@example.org",
    ]
    assert ledger.get_delivery(alice.id).state == "sent"


def test_the_next_digest_claimed_with_a_send_is_not_sent_once_its_address_unsubscribed_meanwhile(
    ledger, smtp_server
):
    """Alice unsubscribes (the web app's link, another process) just after bob's send claimed
    her digest: anything another process writes to the ledger has the claim made again, and
    it is not sent."""
    reserve(ledger, sid="bob")
    reserve(ledger, sid="alice")
    sender = smtp(smtp_server)

    def unsubscribed(outcome):
        with open_store(ledger.path) as web:
            web.suppress("alice", "*", "alice@example.org", "unsubscribed", T0)

    outcomes = send_due(ledger, {"email": sender}, lambda: T0, on_outcome=unsubscribed)
    sender.close()
    assert [(o.delivery.subscriber_id, o.status) for o in outcomes] == [
        ("bob", "sent"),
        ("alice", "suppressed"),
    ]
    assert [to for _, to, _ in smtp_server.handler.messages] == [["bob@example.org"]]


def test_the_next_digest_claimed_a_while_ago_is_claimed_anew_for_a_whole_lease(ledger, smtp_server):
    """A run held up a minute between messages (of a 5-minute lease): the digest claimed with
    the last send is claimed again as it goes, so that its send has a whole lease before
    another process may take it over; it goes once, one attempt counted."""
    reserve(ledger, sid="bob")
    alice = reserve(ledger, sid="alice")
    clock = [T0]
    inner, leases = smtp(smtp_server), []

    class Watching:
        def send(self, delivery):
            row = "select claimed_until from deliveries where id = ?"
            leases.append(ledger.db.execute(row, [delivery.id]).fetchone()[0])
            return inner.send(delivery)

    def held_up(outcome):
        clock[0] += timedelta(minutes=1)

    outcomes = send_due(ledger, {"email": Watching()}, lambda: clock[0], on_outcome=held_up)
    inner.close()
    assert [o.status for o in outcomes] == ["sent", "sent"]
    assert leases == [format_time(T0 + timedelta(minutes=5)), format_time(T0 + timedelta(minutes=6))]
    row = ledger.get_delivery(alice.id)
    assert (row.state, row.attempts) == ("sent", 1) and len(smtp_server.handler.messages) == 2


def test_an_exception_between_messages_lets_go_of_the_next_digest_claimed(ledger, smtp_server):
    """Ctrl-C right after bob's send is recorded, which claimed alice's digest in the same
    commit: hers is not left claimed for the lease, with an attempt counted."""
    reserve(ledger, sid="bob")
    alice = reserve(ledger, sid="alice")
    sender = smtp(smtp_server)

    def interrupted(outcome):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        send_due(ledger, {"email": sender}, lambda: T0, on_outcome=interrupted)
    sender.close()
    row = ledger.get_delivery(alice.id)
    assert (row.state, row.attempts) == ("pending", 0)


def test_a_run_ended_by_an_exception_lets_go_of_the_refusals_it_held(ledger, smtp_server):
    """Ctrl-C while bob's digest goes, alice's refusal not judged yet: her digest is not left
    claimed for the lease, with an attempt counted; it is due again at once."""
    alice, _ = reserve(ledger, sid="alice"), reserve(ledger, sid="bob")
    smtp_server.handler.rcpt_replies = {"alice@example.org": RELAY_DENIED}
    inner = smtp(smtp_server)

    class Interrupted:
        def send(self, delivery):
            if delivery.subscriber_id == "bob":
                raise KeyboardInterrupt
            return inner.send(delivery)

    with pytest.raises(KeyboardInterrupt):
        send_due(ledger, {"email": Interrupted()}, lambda: T0)
    inner.close()
    row = ledger.get_delivery(alice.id)
    assert (row.state, row.attempts, row.next_attempt_at) == ("pending", 0, T0)


def test_refusals_a_failed_judgement_did_not_write_are_still_let_go(ledger, smtp_server, monkeypatch):
    """The database is locked as the run judges its refusals: those not written yet are
    still there for `release`, which lets them go, so no digest stays claimed."""
    import sqlite3

    rows = [reserve(ledger, sid=sid) for sid in ("alice", "carol")]
    smtp_server.handler.rcpt_replies = {f"{p}@example.org": RELAY_DENIED for p in ("alice", "carol")}
    sender, sending = smtp(smtp_server), Sending()
    send_due(ledger, {"email": sender}, lambda: T0, sending=sending)
    sender.close()
    real = ledger.mark_retry

    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(ledger, "mark_retry", locked)
    with pytest.raises(sqlite3.OperationalError):
        settle(ledger, sending, lambda: T0)
    monkeypatch.setattr(ledger, "mark_retry", real)
    release(ledger, sending, lambda: T0)
    assert [(d.state, d.attempts) for d in map(ledger.get_delivery, (r.id for r in rows))] == [
        ("pending", 0)
    ] * 2


# -- sending what is due: retries, permanent failures, suppression ------------------------------


@BOTH_SERVERS
def test_451_then_250_is_retried_later_and_arrives_once(ledger, smtp_server):
    delivery = reserve(ledger)
    smtp_server.handler.replies = ["451 4.3.0 greylisted"]
    policy = RetryPolicy(first_wait=timedelta(minutes=5))
    sender = smtp(smtp_server)

    first = send_due(ledger, {"email": sender}, lambda: T0, policy)
    assert [o.status for o in first] == ["retry"]
    row = ledger.get_delivery(delivery.id)
    assert row.state == "pending" and row.attempts == 1 and "greylisted" in row.last_error
    assert send_due(ledger, {"email": sender}, lambda: T0 + timedelta(minutes=1), policy) == []  # too early

    later = send_due(ledger, {"email": sender}, lambda: T0 + timedelta(minutes=6), policy)
    assert [o.status for o in later] == ["sent"]
    assert send_due(ledger, {"email": sender}, lambda: T0 + timedelta(days=1), policy) == []
    sender.close()
    assert len(smtp_server.handler.messages) == 1
    assert ledger.get_delivery(delivery.id).state == "sent"


@BOTH_SERVERS
def test_a_dropped_connection_mid_data_is_sent_again_with_the_same_message_id(ledger, smtp_server):
    reserve(ledger)
    smtp_server.handler.replies = ["drop"]
    sender = smtp(smtp_server)
    assert [o.status for o in send_due(ledger, {"email": sender}, lambda: T0)] == ["retry"]
    assert [o.status for o in send_due(ledger, {"email": sender}, lambda: T0 + timedelta(hours=1))] == [
        "sent"
    ]
    sender.close()
    ((_, _, body),) = smtp_server.handler.messages
    assert email.message_from_bytes(body)["Message-ID"] == "<paperbot.1@example.org>"


def test_a_digest_made_before_its_subscriber_unsubscribed_is_not_sent(ledger, smtp_server):
    """An unsubscribe (every channel) or a suppression of the channel that comes between making
    a digest and sending it wins: the digest fails as suppressed, the others go."""
    alice, bob, carol = (reserve(ledger, sid) for sid in ("alice", "bob", "carol"))
    ledger.suppress("alice", "*", "alice@example.org", "unsubscribed via the link", T0)
    ledger.suppress("carol", "email", "carol@example.org", "3 permanent failures", T0)
    sender = smtp(smtp_server)
    outcomes = send_due(ledger, {"email": sender}, lambda: T0)
    sender.close()
    assert [(o.delivery.subscriber_id, o.status) for o in outcomes] == [
        ("alice", "suppressed"),
        ("bob", "sent"),
        ("carol", "suppressed"),
    ]
    assert ledger.get_delivery(alice.id).state == ledger.get_delivery(carol.id).state == "failed"
    assert [to for _, to, _ in smtp_server.handler.messages] == [["bob@example.org"]]


@BOTH_SERVERS
def test_550_fails_for_good_and_repeated_failures_suppress_the_address(ledger, smtp_server):
    policy = RetryPolicy(suppress_after=2)
    smtp_server.handler.replies = ["550 5.1.1 no such user"]
    sender = smtp(smtp_server)
    reserve(ledger, period="2026-06-12", papers=["a"])
    reserve(ledger, "bob", period="2026-06-12", papers=["a"])  # bob is fine
    outcomes = send_due(ledger, {"email": sender}, lambda: T0, policy)
    assert {(o.delivery.subscriber_id, o.status) for o in outcomes} == {("alice", "failed"), ("bob", "sent")}
    assert ledger.suppression("alice", "email") is None

    reserve(ledger, period="2026-06-13", papers=["b"])
    smtp_server.handler.replies = ["550 5.1.1 no such user"]
    outcomes = send_due(ledger, {"email": sender}, lambda: T0 + timedelta(days=1), policy)
    assert [o.status for o in outcomes] == ["failed"]
    reason = ledger.suppression("alice", "email")
    assert reason and "2 permanent failures" in reason and "550" in reason
    # a later digest to a suppressed channel is not attempted
    reserve(ledger, period="2026-06-14", papers=["c"])
    outcomes = send_due(ledger, {"email": sender}, lambda: T0 + timedelta(days=2), policy)
    assert [o.status for o in outcomes] == ["suppressed"]
    sender.close()
    assert [to for _, to, _ in smtp_server.handler.messages] == [["bob@example.org"]]


def test_transient_failures_give_up_after_max_attempts(ledger, smtp_server):
    policy = RetryPolicy(max_attempts=2, first_wait=timedelta(0))
    smtp_server.handler.replies = ["421 4.7.0 busy"] * 2
    delivery = reserve(ledger)
    sender = smtp(smtp_server)
    statuses = [o.status for i in range(3) for o in send_due(ledger, {"email": sender}, lambda: T0, policy)]
    sender.close()
    assert statuses == ["retry", "failed"]
    assert "gave up after 2 attempts" in ledger.get_delivery(delivery.id).last_error
