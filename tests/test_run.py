"""`paperbot run --once` end to end: real captures, a real SQLite file, the outbox, and a real
SMTP server (aiosmtpd) on 127.0.0.1. What a subscriber notices: their digest arrives once,
with the papers their watches matched, at their time, and never again."""

from __future__ import annotations

import email
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path

import pytest
from click.testing import CliRunner

import bot.pipeline
from bot.channels.email import OutboxSender, SmtpSender
from bot.cli import main
from bot.deliver import plan_digests, reserve_digest
from bot.pipeline import import_files, run_once
from bot.store import open_store
from bot.subscriptions import load_subscriptions
from conftest import HF, free_port

DAY = HF / "api_daily_papers_2026-06-12.json"  # 30 papers, featured on Friday 2026-06-12
EXAMPLES = Path(__file__).parents[1] / "subscriptions"
FRIDAY_9AM_BERLIN = datetime(2026, 6, 12, 7, 0, tzinfo=UTC)


def subscription(folder: Path, sid: str, query: str = "attention", **top) -> Path:
    lines = [f'name = "{sid.title()}"', f'email = "{sid}@example.org"', 'timezone = "Europe/Berlin"']
    lines += [f"{k} = {v}" for k, v in top.items()]
    lines += ["", "[[watch]]", 'name = "w"', f"query = '{query}'"]
    path = folder / f"{sid}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def subscribed(tmp_path: Path, names: list[str]) -> Path:
    """A subscriptions folder holding a file for each of `names`, watching "attention"."""
    folder = tmp_path / "subscriptions"
    folder.mkdir()
    for sid in names:
        subscription(folder, sid)
    return folder


def settings_for(make_settings, **values):
    return make_settings(**values)


def run(store, settings, folder, senders, now, **options):
    return run_once(
        store,
        settings,
        list(load_subscriptions(folder).subscribers),
        fetch=lambda: "stored",
        senders=senders,
        clock=lambda: now,
        **options,
    )


def statuses(report) -> list[tuple[str, str]]:
    """Who each delivery of a run was for, and what became of it."""
    return [(o.delivery.subscriber_id, o.status) for o in report.outcomes]


@pytest.fixture
def world(tmp_path, make_settings):
    """A store holding the real 2026-06-12 listing, a subscriptions folder, an outbox."""
    folder = tmp_path / "subscriptions"
    folder.mkdir()
    with open_store(tmp_path / "paperbot.db") as store:
        import_files(store, [str(DAY)])
        yield store, folder, make_settings(), tmp_path / "outbox"


def test_a_runs_records_of_its_sends_are_on_disk_when_it_ends(world, monkeypatch):
    """The records of a run's sends wait for the disk together (an fsync of the write-ahead
    log), between messages once a tenth of a second has passed and once the run ends: the
    run's last act is that wait, whatever its batches."""
    import bot.store

    store, folder, settings, outbox = world
    for sid in ("alice", "bob", "carol", "dan", "eve"):
        subscription(folder, sid)
    events = []
    real_fsync = bot.store.os.fsync
    monkeypatch.setattr(bot.store.os, "fsync", lambda fd: events.append("sync") or real_fsync(fd))

    class Recording(OutboxSender):
        def send(self, delivery):
            events.append("send")
            super().send(delivery)

    real_render = bot.pipeline.render_message

    def slow_render(plan, *args):  # the second batch takes long to make
        if plan.subscriber.id in ("carol", "dan"):
            time.sleep(0.2)
        return real_render(plan, *args)

    monkeypatch.setattr(bot.pipeline, "render_message", slow_render)
    monkeypatch.setattr(bot.pipeline, "RESERVE_BATCH", 2)
    report = run(store, settings, folder, {"email": Recording(outbox)}, FRIDAY_9AM_BERLIN)
    assert [o.status for o in report.outcomes] == ["sent"] * 5
    assert events.count("send") == 5 and events[-1] == "sync"
    # The first batch's records go to the disk while the second batch is made, not after it.
    assert events.index("sync") < [n for n, e in enumerate(events) if e == "send"][2]
    assert all(o.delivery.message is None for o in report.outcomes)  # the report keeps no mail


def test_a_run_leaves_the_cycle_collector_as_it_found_it(world):
    """A run keeps what existed before it out of the cycle collector's passes while it works
    (bot.pipeline.frozen_objects): after it, nothing stays frozen for good (a daemon would
    never collect it), and a caller's own freeze is left alone. Also when the run fails."""
    import gc

    store, folder, settings, outbox = world
    subscription(folder, "alice", '"sparse attention"')
    during = []

    class Watching(OutboxSender):
        def send(self, delivery):
            during.append(gc.get_freeze_count())
            return super().send(delivery)

    assert gc.get_freeze_count() == 0
    report = run(store, settings, folder, {"email": Watching(outbox)}, FRIDAY_9AM_BERLIN)
    assert [o.status for o in report.outcomes] == ["sent"] and during[0] > 0
    assert gc.get_freeze_count() == 0
    gc.freeze()  # a caller's freeze, as before a fork
    try:
        mine = gc.get_freeze_count()
        run(store, settings, folder, {"email": Watching(outbox)}, FRIDAY_9AM_BERLIN + timedelta(days=1))
        # Left frozen, not frozen more: objects the run let go of (a cache's old entry) leave the
        # count, but an unfreeze would empty it and a freeze of the run's own would raise it.
        assert 0.9 * mine < gc.get_freeze_count() <= mine
    finally:
        gc.unfreeze()

    class Broken(OutboxSender):
        def send(self, delivery):
            raise KeyboardInterrupt

    subscription(folder, "bob", '"sparse attention"')
    with pytest.raises(KeyboardInterrupt):
        run(store, settings, folder, {"email": Broken(outbox)}, FRIDAY_9AM_BERLIN)
    assert gc.get_freeze_count() == 0


def parsed(path: Path) -> email.message.EmailMessage:
    return email.message_from_bytes(path.read_bytes(), policy=policy.default)


def test_an_unsubscribed_or_suppressed_channel_gets_nothing_and_the_others_go(world):
    """An unsubscribe (every channel, "*") and a suppressed address (one channel) keep their
    digests back whatever the subscription files say; the others go, once."""
    store, folder, settings, outbox = world
    for sid in ("alice", "bob", "carol"):
        subscription(folder, sid)
    store.suppress("bob", "*", "bob@example.org", "unsubscribed via the link", FRIDAY_9AM_BERLIN)
    store.suppress("carol", "email", "carol@example.org", "3 permanent failures", FRIDAY_9AM_BERLIN)
    report = run(store, settings, folder, {"email": OutboxSender(outbox)}, FRIDAY_9AM_BERLIN)
    assert [(o.delivery.subscriber_id, o.status) for o in report.outcomes] == [("alice", "sent")]
    skipped = {s.subscriber_id: s.reason for s in report.skipped}
    assert skipped["bob"] == "suppressed: unsubscribed via the link"
    assert skipped["carol"] == "suppressed: 3 permanent failures"
    assert len(list(outbox.iterdir())) == 1


def test_a_due_digest_reaches_the_outbox_once(world):
    store, folder, settings, outbox = world
    subscription(folder, "alice", '"sparse attention"')
    senders = {"email": OutboxSender(outbox)}

    report = run(store, settings, folder, senders, FRIDAY_9AM_BERLIN)

    assert [o.status for o in report.outcomes] == ["sent"]
    (path,) = outbox.iterdir()
    message = parsed(path)
    assert message["To"] == "Alice <alice@example.org>"
    assert "MiniMax Sparse Attention" in message["Subject"] and "Fri 12 Jun 2026" in message["Subject"]
    assert message.get_content_type() == "multipart/alternative"
    html = message.get_body(("html",)).get_content()
    assert "<mark" in html and "huggingface.co/papers/2606.13392" in html
    # the next runs that day, and the next day's, never send those papers again
    again = run(store, settings, folder, senders, FRIDAY_9AM_BERLIN + timedelta(hours=2))
    assert again.outcomes == () and "sent already" in again.skipped[0].reason
    next_day = run(store, settings, folder, senders, FRIDAY_9AM_BERLIN + timedelta(days=1))
    assert next_day.outcomes == () and next_day.skipped[0].reason.startswith("no new papers upstream")
    assert len(list(outbox.iterdir())) == 1


def test_nothing_is_due_before_the_subscribers_local_time(world):
    store, folder, settings, outbox = world
    subscription(folder, "alice", schedule='"daily 10:00"')
    senders = {"email": OutboxSender(outbox)}
    # 09:00 in Berlin on Friday: Thursday's 10:00 digest is the one due; it holds Friday's papers
    report = run(store, settings, folder, senders, FRIDAY_9AM_BERLIN)
    assert [d.delivery.period for d in report.outcomes] == ["2026-06-11"]
    later = run(store, settings, folder, senders, FRIDAY_9AM_BERLIN + timedelta(hours=1, minutes=1))
    assert [d.delivery.period for d in later.outcomes] == []  # made, but nothing new to put in it
    assert later.skipped[0].reason.startswith("no new papers upstream")


def test_empty_digests_only_for_those_who_ask(world):
    store, folder, settings, outbox = world
    subscription(folder, "quiet", "zzzunseenzzz")
    subscription(folder, "keen", "zzzunseenzzz", send_empty="true")
    report = run(store, settings, folder, {"email": OutboxSender(outbox)}, FRIDAY_9AM_BERLIN)
    assert [o.delivery.subscriber_id for o in report.outcomes] == ["keen"]
    assert [(s.subscriber_id, s.reason) for s in report.skipped] == [("quiet", "nothing new matched")]
    (path,) = outbox.iterdir()
    assert "No new papers" in parsed(path)["Subject"]


def eve_with_an_instant_watch(folder: Path, **top) -> None:
    """Eve's digest watch and her instant watch both find the "attention" papers (three)."""
    subscription(folder, "eve", **top)
    with (folder / "eve.toml").open("a") as file:
        file.write('\n[[watch]]\nname = "now"\nquery = "attention"\ndelivery = "instant"\n')


@pytest.mark.parametrize("max_papers", [10, 1])
def test_an_alert_leaves_out_the_papers_of_the_digest_sent_in_the_same_run(world, max_papers):
    """The digest, due in the same run as the alert, is made first: the alert holds only the
    papers the digest does not show, and is not sent at all (no "No new papers" alert) when
    it shows them all."""
    store, folder, settings, outbox = world
    eve_with_an_instant_watch(folder, max_papers=max_papers)
    report = run(store, settings, folder, {"email": OutboxSender(outbox)}, FRIDAY_9AM_BERLIN)
    sent = {o.delivery.period.split(" ")[0]: o.delivery.paper_ids for o in report.outcomes}
    assert len(sent["2026-06-12"]) == min(3, max_papers)
    if max_papers == 1:  # the first of the two papers the digest had no room for, and 1 more
        assert len(sent["instant"]) == 1 and sent["instant"] != sent["2026-06-12"]
        assert parsed(next(outbox.glob("instant_*")))["Subject"].startswith("2 papers")
    else:
        assert "instant" not in sent and [p.name for p in outbox.iterdir()] == ["2026-06-12-eve-email.eml"]
        assert ("eve", "email", "its papers are in this run's digest") in [
            (k.subscriber_id, k.channel, k.reason) for k in report.skipped
        ]
    assert run(store, settings, folder, {"email": OutboxSender(outbox)}, FRIDAY_9AM_BERLIN).outcomes == ()


def test_an_alert_whose_papers_another_process_took_since_it_was_planned_is_not_sent(world):
    """Between planning an alert and reserving its papers, another paperbot process sent them
    on the same channel: the alert is recorded as skipped, not sent empty."""
    store, folder, settings, outbox = world
    eve_with_an_instant_watch(folder)
    (eve,) = load_subscriptions(folder).subscribers
    (alert,), _ = plan_digests(store, [eve], FRIDAY_9AM_BERLIN, instant=True)
    with open_store(store.path) as other:  # the other process, on a connection of its own
        other.reserve_delivery(
            subscriber_id="eve",
            channel="email",
            kind="email",
            period="2026-06-12",
            recipient="eve@example.org",
            paper_ids=[m.paper.id for m in alert.matches],
            window_start=alert.window_start,
            window_end=alert.window_end,
            now=FRIDAY_9AM_BERLIN,
        )
    composed = []
    made = reserve_digest(store, alert, lambda *args: composed.append(args), FRIDAY_9AM_BERLIN)
    assert (made.state, composed) == ("skipped", [])
    assert (
        store.get_delivery(made.id).last_error
        == "its papers went out in another digest on this channel first"
    )


def test_the_first_digest_covers_the_latest_day_unless_asked_for_more(tmp_path, make_settings):
    folder = tmp_path / "subscriptions"
    folder.mkdir()
    subscription(folder, "alice", "model* OR agent*")
    days = [HF / "api_daily_papers_2026-05-08_prettyprinted.json", DAY]
    for backfill, expected in [(1, {"2026-06-12"}), (60, {"2026-05-08", "2026-06-12"})]:
        with open_store(tmp_path / f"b{backfill}.db") as store:
            import_files(store, [str(d) for d in days])
            run(
                store,
                make_settings(),
                folder,
                {"email": OutboxSender(tmp_path / f"o{backfill}")},
                FRIDAY_9AM_BERLIN,
                backfill_days=backfill,
            )
            (delivery,) = [store.get_delivery(1)]
            featured = {store.get_paper(p).featured_on.isoformat() for p in delivery.paper_ids}
            assert featured == expected, backfill


def test_a_dry_run_renders_and_records_nothing(world):
    store, folder, settings, outbox = world
    subscription(folder, "alice")
    report = run(store, settings, folder, {"email": OutboxSender(outbox)}, FRIDAY_9AM_BERLIN, dry_run=True)
    assert len(report.planned) == 1 and report.planned[0].shown > 0
    assert report.outcomes == () and store.delivery_counts() == {} and not outbox.exists()


def test_one_broken_subscriber_holds_up_nobody(world, monkeypatch):
    store, folder, settings, outbox = world
    subscription(folder, "alice")
    (folder / "bob.toml").write_text(
        'email = "bob@example.org"\n[channels]\nwork = { kind = "email", to = "${BOB_WORK_MAIL}" }\n'
        '[[watch]]\nname = "w"\nquery = "attention"\n'
    )
    (folder / "carol.toml").write_text('[[watch]]\nname = "w"\nmin_upvote = 3\n')  # invalid
    monkeypatch.delenv("BOB_WORK_MAIL", raising=False)
    report = run(store, settings, folder, {"email": OutboxSender(outbox)}, FRIDAY_9AM_BERLIN)
    assert [o.delivery.subscriber_id for o in report.outcomes] == ["alice"]
    assert ("bob", "work", "BOB_WORK_MAIL is not set in the environment") in [
        (k.subscriber_id, k.channel, k.reason) for k in report.skipped
    ]
    # once the operator sets the variable, bob's reserved digest is rendered and sent
    monkeypatch.setenv("BOB_WORK_MAIL", "bob@work.example.org")
    later = run(store, settings, folder, {"email": OutboxSender(outbox)}, FRIDAY_9AM_BERLIN)
    assert statuses(later) == [("bob", "sent")]
    # bob is on UTC, where today's 08:00 is still to come: yesterday's digest is the one due
    assert "bob@work.example.org" in parsed(outbox / "2026-06-11-bob-work.eml")["To"]


def test_a_digest_that_fails_to_render_holds_up_nobody_in_its_batch(world, monkeypatch):
    """Digests are reserved and rendered many to a ledger commit: one failing in the middle
    of the batch is reported, the others are sent, and it is rendered again on the next run."""
    import bot.pipeline

    store, folder, settings, outbox = world
    for sid in ("alice", "bob", "carol"):
        subscription(folder, sid)
    real_render = bot.pipeline.render_plan

    def failing_for_bob(plan, *args):
        if plan.subscriber.id == "bob":
            raise ValueError("bob's template broke")
        return real_render(plan, *args)

    monkeypatch.setattr(bot.pipeline, "render_plan", failing_for_bob)
    report = run(store, settings, folder, {"email": OutboxSender(outbox)}, FRIDAY_9AM_BERLIN)
    assert sorted(o.delivery.subscriber_id for o in report.outcomes) == ["alice", "carol"]
    assert report.errors == ("bob/email: bob's template broke",)
    # Still broken on the next run: reported again (the run does not end well), and the
    # operator's `paperbot status` says why bob's digest waits.
    again = run(store, settings, folder, {"email": OutboxSender(outbox)}, FRIDAY_9AM_BERLIN)
    assert again.outcomes == () and again.errors == (
        "bob/email 2026-06-12: cannot render it: bob's template broke",
    )
    status = CliRunner().invoke(main, ["--db", str(store.path), "status"])
    assert (
        "unmade   bob/email 2026-06-12 (attempt 0): cannot render it: bob's template broke" in status.output
    )
    monkeypatch.setattr(bot.pipeline, "render_plan", real_render)
    # The next run, even one for alice alone (as the daemon's job for her schedule is), finishes it.
    everyone = list(load_subscriptions(folder).subscribers)
    alice = [s for s in everyone if s.id == "alice"]
    later = run_once(
        store,
        settings,
        alice,
        fetch=lambda: "stored",
        senders={"email": OutboxSender(outbox)},
        clock=lambda: FRIDAY_9AM_BERLIN,
        everyone=everyone,
    )
    assert statuses(later) == [("bob", "sent")]
    assert len(list(outbox.iterdir())) == 3


# A run forks its helper only from a process with one thread, and this session's HTTP test
# server has one of its own: these runs are made in a fresh interpreter, as `paperbot run` is.
ALONE_RUN = """
import json, logging, os, sys, time
from datetime import datetime
import bot.pipeline
from bot.channels.email import OutboxSender
from bot.config import load_settings
from bot.pipeline import import_files, run_once
from bot.store import open_store
from bot.subscriptions import load_subscriptions

db, folder, outbox, day, now, options = sys.argv[1:]
options = json.loads(options)
logging.basicConfig(level=logging.INFO, format="%(message)s")
bot.pipeline.RESERVE_BATCH = options["batch"]
bot.pipeline.HELPER_PATIENCE = options["patience"]
real_render, real_batches, real_start = (
    bot.pipeline.render_message, bot.pipeline._rendered_batches, bot.pipeline._start_helper
)
parent, helpers = os.getpid(), []


def render_message(plan, *args):  # the forked helper inherits it
    if os.getpid() != parent and plan.subscriber.id in options["die"]:
        open("helper.died", "w").close()
        os._exit(9)  # as the OOM killer would kill it
    if os.getpid() != parent and plan.subscriber.id in options["hang"]:
        with open("helper.pid", "w") as file:  # a render that takes forever
            file.write(str(os.getpid()))
        time.sleep(300)
    if plan.subscriber.id in options["broken"]:
        raise ValueError(f"{plan.subscriber.id}'s template broke")
    where = "here" if os.getpid() == parent else "in the helper"
    print(f"rendered {plan.subscriber.id} {where}", file=sys.stderr, flush=True)
    return real_render(plan, *args)


real_pack = bot.pipeline.pack_message


def pack_message(data):  # the helper's: the message of a digest of options["damaged"] arrives damaged
    packed = real_pack(data)
    damaged = any(f"To: {who.title()} <".encode() in data for who in options["damaged"])
    return packed[:-9] + bytes(9) if damaged else packed


def start_helper(*args):
    started = real_start(*args)
    helpers.extend(started or ())
    return started


real_make_cards, real_made_cards = bot.pipeline._make_cards, bot.pipeline.made_cards


def make_cards(stop):  # the helper's share of the cards: with options["die_sharing"], it dies there
    if options["die_sharing"]:
        os._exit(9)
    return real_make_cards(stop)


def made_cards(keys):  # the run's share: with options["die_sharing"], done once its pool knows
    while options["die_sharing"] and not helpers[0]._broken:
        time.sleep(0.01)
    return real_made_cards(keys)


def rendered_batches(plans, *args):
    # Another paperbot process, on a connection of its own, sends the first paper of each
    # digest of options["racing"] after this run planned it.
    with open_store(db) as other:
        for plan in plans:
            if plan.subscriber.id in options["racing"]:
                kept = plan.matches[0].paper.id
                other.reserve_delivery(
                    subscriber_id=plan.subscriber.id, channel=plan.channel.name, kind="email",
                    period="racer", recipient="x@example.org", paper_ids=[kept],
                    window_start=plan.window_start, window_end=plan.window_start, now=plan.window_end,
                )
    yield from real_batches(plans, *args)


class Outbox(OutboxSender):
    def send(self, delivery):
        # With options["die"]: the first message waits until the helper died and its pool knows,
        # so that the run finds it dead when it asks for the next batch.
        while options["die"] and not (os.path.exists("helper.died") and helpers[0]._broken):
            time.sleep(0.01)
        return super().send(delivery)


bot.pipeline.render_message = render_message
bot.pipeline.pack_message = pack_message
bot.pipeline._start_helper = start_helper
bot.pipeline._make_cards = make_cards
bot.pipeline.made_cards = made_cards
bot.pipeline._rendered_batches = rendered_batches
with open_store(db) as store:
    import_files(store, [day])
    report = run_once(
        store,
        load_settings(None, environ=os.environ),
        list(load_subscriptions(folder).subscribers),
        fetch=lambda: "stored",
        senders={"email": Outbox(outbox)},
        clock=lambda: datetime.fromisoformat(now),
        dry_run=options["dry_run"],
    )
made = [[m.plan.subscriber.id, m.subject, m.shown] for m in report.planned]
print("made:", json.dumps(made), file=sys.stderr)
print(json.dumps([[[o.delivery.subscriber_id, o.status] for o in report.outcomes], report.errors]))
"""
# A helper is forked only where there are two CPUs or more.
NEEDS_TWO_CPUS = pytest.mark.skipif(
    bot.pipeline._cpus() < 2, reason="a run renders in a helper process only with 2 CPUs or more"
)


def alone_command(
    tmp_path: Path,
    name: str,
    folder: Path,
    batch: int = 64,
    die: tuple = (),
    broken: tuple = (),
    hang: tuple = (),
    racing: tuple = (),
    damaged: tuple = (),
    dry_run: bool = False,
    patience: float = 120.0,
    die_sharing: bool = False,
    **settings,
) -> dict:
    """How to run run_once in a fresh interpreter (subprocess arguments): `batch` digests to a
    ledger commit, its helper dying at the digests of `die` (once the first message waits for
    it) and hanging at those of `hang` (given up on after `patience` seconds), or dying as it
    makes its share of the cards (`die_sharing`), the digests of `broken` failing to render, the
    first paper of those of `racing` sent by another process after the run planned it, the
    messages of those of `damaged` damaged on their way from the helper; a dry run with `dry_run`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPERBOT_")}
    env.update({f"PAPERBOT_{k.upper()}": str(v) for k, v in settings.items()})
    env["PAPERBOT_WEB_SECRET"] = "the same secret for every run"
    options = {
        "batch": batch,
        "die": die,
        "broken": broken,
        "hang": hang,
        "racing": racing,
        "damaged": damaged,
        "dry_run": dry_run,
        "patience": patience,
        "die_sharing": die_sharing,
    }
    args = [tmp_path / f"{name}.db", folder, tmp_path / name, DAY, FRIDAY_9AM_BERLIN.isoformat()]
    command = [sys.executable, "-c", ALONE_RUN, *map(str, args), json.dumps(options)]
    return {"args": command, "env": env, "cwd": tmp_path}


def run_alone(tmp_path: Path, name: str, folder: Path, **options) -> tuple[list, list, str]:
    """run_once in a fresh interpreter (see alone_command): (the outcomes, the errors, its log)."""
    done = subprocess.run(
        **alone_command(tmp_path, name, folder, **options), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    outcomes, errors = json.loads(done.stdout.splitlines()[-1])
    return outcomes, errors, done.stderr


def topic_subscribers(tmp_path: Path, count: int) -> Path:
    """A folder of `count` subscribers, p0, p1, ..., each watching a topic of its own (their
    digests differ) and wanting even an empty digest."""
    folder = tmp_path / "subscriptions"
    folder.mkdir()
    for number, query in enumerate(["attention", "diffusion", "agent*", "video", "reasoning", "3D"][:count]):
        subscription(folder, f"p{number}", query, send_empty="true")
    return folder


@NEEDS_TWO_CPUS
def test_a_big_run_renders_in_a_helper_process_the_very_mail_it_renders_alone(tmp_path):
    """From `run.helper_from` digests a forked helper renders while the run sends; what
    arrives is byte for byte what a run rendering alone sends. Among them, p0's digest: another
    process sent its first paper after the run planned it, so the message the helper made is
    not the one sent, but one made again for the papers the ledger gave it."""
    folder = topic_subscribers(tmp_path, 6)
    alone, _, log_alone = run_alone(tmp_path, "alone", folder, racing=["p0"], run_helper_from=0)
    helped, _, log_helped = run_alone(tmp_path, "helped", folder, racing=["p0"], run_helper_from=4)
    assert "helper process" not in log_alone
    assert "rendering 6 digests in a helper process" in log_helped
    assert "the helper process failed" not in log_helped and "came damaged" not in log_helped
    # Each rendered once, by the helper, but p0's, rendered again here for the papers it got.
    rendered = sorted(line for line in log_helped.splitlines() if line.startswith("rendered "))
    assert rendered == ["rendered p0 here", *(f"rendered p{n} in the helper" for n in range(6))]
    assert alone == helped == [[f"p{n}", "sent"] for n in range(6)]
    made = [line for line in log_alone.splitlines() if line.startswith("made: ")]
    assert len(json.loads(made[0][6:])) == 6 and made == [
        line for line in log_helped.splitlines() if line.startswith("made: ")
    ]  # the same digests reported made, with the same subjects and papers
    mine, its = (sorted((tmp_path / name).iterdir()) for name in ("alone", "helped"))
    assert [p.name for p in mine] == [p.name for p in its]
    assert len({p.read_bytes() for p in mine}) == 6  # six different digests
    for ours, theirs in zip(mine, its, strict=True):
        assert ours.read_bytes() == theirs.read_bytes(), ours.name
    with open_store(tmp_path / "helped.db") as store:
        (raced,) = store.find_delivery("p0", "email", "racer").paper_ids
        # The helper hands its messages over packed, and the ledger keeps them as they came:
        # what a retry would read back is what went.
        rows = store.db.execute(
            "select id, subscriber_id from deliveries where state = 'sent' and period != 'racer'"
        ).fetchall()
        stored = {who: store.stored_message(number) for number, who in rows}
    assert stored == {path.name.split("-")[3]: path.read_bytes() for path in its}
    html = parsed(its[0]).get_body(("html",)).get_content()
    assert its[0].name == "2026-06-12-p0-email.eml" and "<mark" in html and raced not in html


@NEEDS_TWO_CPUS
def test_a_helper_that_makes_fewer_of_the_cards_renders_the_very_mail_too(tmp_path):
    """Two digests to a batch, each of a topic of its own: the first batch shows fewer than half
    of the run's cards, so the helper makes fewer than half (it renders that batch after them,
    while the run waits) and the run hands it the others. What arrives is byte for byte what a
    run rendering alone sends, each digest rendered once, by the helper."""
    folder = topic_subscribers(tmp_path, 6)
    alone, _, _ = run_alone(tmp_path, "alone", folder, run_helper_from=0)
    helped, errors, log = run_alone(tmp_path, "helped", folder, batch=2, run_helper_from=2)
    made, cards = map(int, re.search(r"it makes (\d+) of their (\d+) cards", log).groups())
    assert 0 < made < cards // 2, log
    rendered = sorted(line for line in log.splitlines() if line.startswith("rendered "))
    assert rendered == [f"rendered p{n} in the helper" for n in range(6)]
    assert alone == helped == [[f"p{n}", "sent"] for n in range(6)] and not errors
    mine, its = (sorted((tmp_path / name).iterdir()) for name in ("alone", "helped"))
    assert [p.name for p in mine] == [p.name for p in its]
    for ours, theirs in zip(mine, its, strict=True):
        assert ours.read_bytes() == theirs.read_bytes(), ours.name


@NEEDS_TWO_CPUS
def test_a_message_damaged_on_its_way_from_the_helper_is_rendered_here(tmp_path):
    """The helper hands its messages over packed: one that does not unpack (damaged on its way)
    is rendered again by the run, said in the log, and sent as a run rendering alone sends it."""
    folder = topic_subscribers(tmp_path, 4)
    alone, _, _ = run_alone(tmp_path, "alone", folder, run_helper_from=0)
    helped, errors, log = run_alone(tmp_path, "helped", folder, damaged=["p2"], run_helper_from=2)
    assert alone == helped == [[f"p{n}", "sent"] for n in range(4)] and not errors
    assert log.count("came damaged") == 1 and "rendered p2 here" in log and "rendered p1 here" not in log
    for ours, theirs in zip(
        *(sorted((tmp_path / name).iterdir()) for name in ("alone", "helped")), strict=True
    ):
        assert ours.read_bytes() == theirs.read_bytes(), ours.name


@NEEDS_TWO_CPUS
def test_a_big_dry_run_reports_what_the_helper_renders_and_writes_nothing(tmp_path):
    """A dry run renders every digest (the helper's, from a big run on) and reports them as a
    run rendering alone does, and sends and records nothing."""
    folder = topic_subscribers(tmp_path, 4)
    reports = []
    for name, helper_from in (("alone", 0), ("helped", 2)):
        outcomes, errors, log = run_alone(tmp_path, name, folder, dry_run=True, run_helper_from=helper_from)
        assert outcomes == [] and not errors and not list((tmp_path / name).glob("*.eml"))
        with open_store(tmp_path / f"{name}.db") as store:
            assert store.db.execute("select count(*) from deliveries").fetchone() == (0,)
        reports.append([line for line in log.splitlines() if line.startswith("made: ")])
        rendered = sorted(line for line in log.splitlines() if line.startswith("rendered "))
        where = "here" if helper_from == 0 else "in the helper"
        assert rendered == [f"rendered p{n} {where}" for n in range(4)]
    assert reports[0] == reports[1] and len(json.loads(reports[0][0][6:])) == 4


@NEEDS_TWO_CPUS
def test_a_helper_that_dies_mid_run_loses_no_digest(tmp_path):
    """The helper renders two digests to a batch, a few batches ahead of the sending, and dies
    (as the OOM killer would kill it) in its third batch, while the first is sent: the run
    finds it dead, sends what it made, renders the rest itself, and every digest is sent, once."""
    folder = subscribed(tmp_path, [f"p{n:02}" for n in range(12)])
    outcomes, errors, log = run_alone(tmp_path, "out", folder, batch=2, die=["p04"], run_helper_from=2)
    assert "rendering 12 digests in a helper process" in log
    assert "the helper process failed" in log and not errors
    assert outcomes == [[f"p{n:02}", "sent"] for n in range(12)]
    assert len(list((tmp_path / "out").iterdir())) == 12


@NEEDS_TWO_CPUS
def test_a_helper_that_dies_while_the_cards_are_shared_loses_no_digest(tmp_path):
    """The helper dies as it makes its share of the cards, before the run hands it the
    others: the run renders every digest itself, and each is sent once."""
    folder = subscribed(tmp_path, [f"p{n}" for n in range(6)])
    outcomes, errors, log = run_alone(tmp_path, "out", folder, batch=2, die_sharing=True, run_helper_from=2)
    assert "the helper process failed" in log and not errors
    assert outcomes == [[f"p{n}", "sent"] for n in range(6)]
    assert len(list((tmp_path / "out").iterdir())) == 6


@NEEDS_TWO_CPUS
def test_a_stuck_helper_is_killed_and_its_digests_made_here(tmp_path):
    folder = subscribed(tmp_path, [f"p{n}" for n in range(4)])
    outcomes, errors, log = run_alone(
        tmp_path, "out", folder, batch=1, hang=["p2"], patience=1, run_helper_from=2
    )
    assert "the helper process failed (it rendered nothing for 1 s)" in log and not errors
    assert outcomes == [[f"p{n}", "sent"] for n in range(4)]
    assert not alive(int((tmp_path / "helper.pid").read_text()))


@NEEDS_TWO_CPUS
def test_a_killed_run_takes_its_helper_with_it(tmp_path):
    """`kill -9` of a run leaves no helper behind, rendering on for nobody and holding the
    database and the log open."""
    folder = subscribed(tmp_path, [f"p{n}" for n in range(4)])
    command = alone_command(tmp_path, "out", folder, batch=1, hang=["p2"], run_helper_from=2)
    with subprocess.Popen(**command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as parent:
        pid_file = tmp_path / "helper.pid"
        for _ in range(600):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.05)
        helper = int(pid_file.read_text())
        parent.kill()
        parent.wait()
    try:
        for _ in range(100):
            if not alive(helper):
                break
            time.sleep(0.05)
        assert not alive(helper), "the helper outlived the run"
    finally:
        if alive(helper):
            os.kill(helper, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not reaped yet, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@NEEDS_TWO_CPUS
def test_a_digest_the_helper_cannot_render_is_reported_and_holds_up_nobody(tmp_path):
    folder = subscribed(tmp_path, [f"p{n}" for n in range(6)])
    outcomes, errors, log = run_alone(tmp_path, "out", folder, batch=4, broken=["p1"], run_helper_from=2)
    assert "rendering 6 digests in a helper process" in log and "helper process failed" not in log
    assert errors == ["p1/email: p1's template broke"]
    assert outcomes == [[f"p{n}", "sent"] for n in (0, 2, 3, 4, 5)]


def test_a_run_tries_each_delivery_once_however_many_batches_it_sends(
    world, smtp_server, monkeypatch, make_settings
):
    """A run sends after each batch of digests it makes; a delivery that fails (bob's server
    says "try later", and retries are due at once) is tried once in the run, not once a batch,
    and its outcome told once: later runs retry it, and it is not given up on in one run."""
    import bot.pipeline

    store, folder, _, _ = world
    settings = make_settings(delivery_retry_minutes=0, delivery_max_attempts=2)
    monkeypatch.setattr(bot.pipeline, "RESERVE_BATCH", 1)
    for sid in ("alice", "bob", "carol", "dave"):
        subscription(folder, sid)
    smtp_server.handler.rcpt_replies["bob@example.org"] = "451 4.7.1 greylisted"
    sender = smtp_sender(smtp_server)
    report = run(store, settings, folder, {"email": sender}, FRIDAY_9AM_BERLIN)
    assert statuses(report) == [
        ("alice", "sent"),
        ("bob", "retry"),
        ("carol", "sent"),
        ("dave", "sent"),
    ]
    bob = store.find_delivery("bob", "email", "2026-06-12")
    assert (bob.state, bob.attempts) == ("pending", 1)
    del smtp_server.handler.rcpt_replies["bob@example.org"]
    later = run(store, settings, folder, {"email": sender}, FRIDAY_9AM_BERLIN)
    sender.close()
    assert statuses(later) == [("bob", "sent")]


PEOPLE = ("alice", "bob", "carol")
# How servers refuse paperbot itself rather than one recipient: at MAIL FROM, or (Postfix's
# default) only at RCPT TO, or at DATA.
REFUSALS = {
    "530 at MAIL FROM": ("mail", "530 5.7.0 Authentication required"),
    "530 at DATA": ("data", "530 5.7.0 Authentication required"),
    "relay denied at RCPT": ("rcpt", "554 5.7.1 <{who}@example.org>: Relay access denied"),
    "sender rejected at RCPT": ("rcpt", "553 5.7.1 <papers@example.org>: Sender address rejected: not owned"),
}


def refuse(handler, where: str, reply: str) -> None:
    """Make the test server answer `reply` to every message, at `where` (or stop, with "")."""
    handler.mail_reply = reply if where == "mail" else ""
    handler.replies = [reply] * 100 if where == "data" and reply else []
    handler.rcpt_replies = (
        {f"{p}@example.org": reply.format(who=p) for p in PEOPLE} if where == "rcpt" else {}
    )


@pytest.mark.parametrize("smtp_server", ["pipelining", "no pipelining"], indirect=True)
@pytest.mark.parametrize("refusal", REFUSALS)
def test_a_server_refusing_paperbot_holds_every_digest_and_blames_no_subscriber(world, smtp_server, refusal):
    """The server wants a login paperbot was not given, or will not relay for it: no
    subscriber's fault. No digest goes, so every one waits, pending, run after run, nobody is
    suppressed, the operator is alerted; once the setup is fixed, each digest goes, once, and
    the alert is resolved."""
    store, folder, settings, _ = world
    for sid in PEOPLE:
        subscription(folder, sid)
    where, reply = REFUSALS[refusal]
    refuse(smtp_server.handler, where, reply)
    sender = smtp_sender(smtp_server)
    for hours in range(5):  # more runs than delivery.suppress_after (3) and retries due
        report = run(store, settings, folder, {"email": sender}, FRIDAY_9AM_BERLIN + timedelta(hours=hours))
        # At MAIL FROM it is plainly paperbot that is refused: the run stops at once.
        assert statuses(report) == [(p, "down") for p in (PEOPLE[:1] if where == "mail" else PEOPLE)], hours
        assert reply.format(who="alice") in report.outcomes[0].detail
    rows = [store.find_delivery(sid, "email", "2026-06-12") for sid in PEOPLE]
    assert [(d.state, d.attempts) for d in rows] == [("pending", 0)] * 3
    assert store.suppressions() == []
    (alert,) = store.open_alerts()
    assert alert["key"] == "transport email" and "PAPERBOT_SMTP_PASSWORD" in alert["message"]
    refuse(smtp_server.handler, "", "")
    fixed = run(store, settings, folder, {"email": sender}, FRIDAY_9AM_BERLIN + timedelta(hours=6))
    sender.close()
    assert statuses(fixed) == [(p, "sent") for p in PEOPLE]
    assert len(smtp_server.handler.messages) == 3 and store.open_alerts() == []


def test_a_refusal_of_the_only_digest_due_is_alerted_too(world, smtp_server):
    """With one digest due there is no other to tell a refusal of paperbot from one of its
    recipient: nothing went, so the transport is down, and the operator hears of it."""
    store, folder, settings, _ = world
    subscription(folder, "alice")
    smtp_server.handler.mail_reply = "530 5.7.0 Authentication required"
    sender = smtp_sender(smtp_server)
    report = run(store, settings, folder, {"email": sender}, FRIDAY_9AM_BERLIN)
    sender.close()
    assert statuses(report) == [("alice", "down")]
    assert [a["key"] for a in store.open_alerts()] == ["transport email"]


def test_a_server_that_refuses_paperbot_from_the_middle_of_a_run_is_down(world, smtp_server):
    """Alice's digest goes, then the server wants a login for the rest: nothing went after
    those refusals, so they are the server's, not bob's and carol's: down, uncounted, alerted."""
    store, folder, settings, _ = world
    for sid in PEOPLE:
        subscription(folder, sid)
    smtp_server.handler.replies = ["250 2.0.0 OK"] + ["530 5.7.0 Authentication required"] * 5
    sender = smtp_sender(smtp_server)
    report = run(store, settings, folder, {"email": sender}, FRIDAY_9AM_BERLIN)
    sender.close()
    assert statuses(report) == [("alice", "sent"), ("bob", "down"), ("carol", "down")]
    assert [
        (d.state, d.attempts) for d in (store.find_delivery(p, "email", "2026-06-12") for p in PEOPLE)
    ] == [
        ("sent", 1),
        ("pending", 0),
        ("pending", 0),
    ]
    assert [a["key"] for a in store.open_alerts()] == ["transport email"]


def test_a_run_stopped_before_it_could_judge_a_refusal_lets_it_go_untold(world, smtp_server):
    """SIGTERM right after alice's refusal: nothing tells whose it was, so it counts against
    no one, raises no alert, and her digest is due again at once."""
    store, folder, settings, _ = world
    for sid in PEOPLE:
        subscription(folder, sid)
    smtp_server.handler.rcpt_replies = {
        "alice@example.org": "554 5.7.1 <alice@example.org>: Relay access denied"
    }
    stop = []
    inner = smtp_sender(smtp_server)

    class Stopping:  # the SIGTERM arrives while alice's digest is in flight
        def send(self, delivery):
            stop.append(True)
            return inner.send(delivery)

        def close(self):
            inner.close()

    report = run(
        store, settings, folder, {"email": Stopping()}, FRIDAY_9AM_BERLIN, should_stop=lambda: bool(stop)
    )
    inner.close()
    assert (
        statuses(report) == [("alice", "retry")]
        and "stopped before it was judged" in report.outcomes[0].detail
    )
    alice = store.find_delivery("alice", "email", "2026-06-12")
    assert (alice.state, alice.attempts, alice.next_attempt_at) == ("pending", 0, FRIDAY_9AM_BERLIN)
    assert store.open_alerts() == []


def test_a_refusal_of_one_recipient_is_that_digests_failure_and_holds_up_nobody(world, smtp_server):
    """Replies that read like a refusal of paperbot but concern one recipient (a group that
    takes mail from its members only; a relay that serves some domains), while mail after
    them goes: each is that digest's own failure, counted as any is, and there is no alert.
    A recipient unknown "in relay recipient table" is no relay refusal at all."""
    store, folder, settings, _ = world
    for sid in ("alice", "bob", "carol", "dave", "erin"):
        subscription(folder, sid)
    smtp_server.handler.rcpt_replies = {
        "alice@example.org": "550 5.7.133 RESOLVER.RST.SenderNotAuthenticatedForGroup;"
        " authentication required",
        "carol@example.org": "550 5.1.1 <carol@example.org>: Recipient address rejected: "
        "User unknown in relay recipient table",
        "dave@example.org": "454 4.7.1 <dave@example.org>: Relay access denied",
    }
    sender = smtp_sender(smtp_server)
    report = run(store, settings, folder, {"email": sender}, FRIDAY_9AM_BERLIN)
    sender.close()
    assert sorted(statuses(report)) == [
        ("alice", "failed"),
        ("bob", "sent"),
        ("carol", "failed"),
        ("dave", "retry"),
        ("erin", "sent"),
    ]
    rows = {sid: store.find_delivery(sid, "email", "2026-06-12") for sid in ("alice", "dave")}
    assert [(d.state, d.attempts) for d in rows.values()] == [("failed", 1), ("pending", 1)]
    assert store.open_alerts() == []


def test_an_unreachable_mail_server_is_tried_once_a_run_not_once_a_digest(world):
    store, folder, settings, _ = world
    for sid in ("alice", "bob", "carol"):
        subscription(folder, sid)
    sender = SmtpSender(
        host="127.0.0.1", port=free_port(), sender="p@example.org", security="none", timeout=2
    )
    report = run(store, settings, folder, {"email": sender}, FRIDAY_9AM_BERLIN)
    assert (
        statuses(report) == [("alice", "down")]
        and "cannot reach the SMTP server" in report.outcomes[0].detail
    )
    assert store.delivery_counts() == {"pending": 3}


def test_an_address_from_the_environment_is_the_one_mail_goes_to(world, smtp_server, monkeypatch):
    """Bob's work channel takes its address from BOB_WORK_MAIL: the server is asked to deliver
    to that address (its domain in ASCII), not to the words "${BOB_WORK_MAIL}"."""
    store, folder, settings, _ = world
    (folder / "bob.toml").write_text(
        'email = "bob@example.org"\n[channels]\nwork = { kind = "email", to = "${BOB_WORK_MAIL}" }\n'
        '[[watch]]\nname = "w"\nquery = "attention"\n'
    )
    monkeypatch.setenv("BOB_WORK_MAIL", "bob@wörk.example")
    sender = smtp_sender(smtp_server)
    report = run(store, settings, folder, {"email": sender}, FRIDAY_9AM_BERLIN)
    sender.close()
    assert statuses(report) == [("bob", "sent")]
    ((_, to, data),) = smtp_server.handler.messages
    assert to == ["bob@xn--wrk-sna.example"]
    assert email.message_from_bytes(data, policy=policy.default)["To"] == "bob <bob@xn--wrk-sna.example>"


def test_smtp_delivery_with_a_greylisting_server(world, smtp_server):
    store, folder, settings, _ = world
    for sid in ("alice", "bob", "carol"):
        subscription(folder, sid)
    smtp_server.handler.replies = ["250 ok", "451 4.7.1 greylisted", "550 5.1.1 no such user"]
    sender = smtp_sender(smtp_server)
    first = run(store, settings, folder, {"email": sender}, FRIDAY_9AM_BERLIN)
    assert statuses(first) == [
        ("alice", "sent"),
        ("bob", "retry"),
        ("carol", "failed"),
    ]
    second = run(store, settings, folder, {"email": sender}, FRIDAY_9AM_BERLIN + timedelta(minutes=10))
    sender.close()
    assert statuses(second) == [("bob", "sent")]
    received = [to[0] for _, to, _ in smtp_server.handler.messages]
    assert received == ["alice@example.org", "bob@example.org"]
    # Each went out as the ledger holds it: alice's as it was stored moments before (a run
    # sends what it just stored without reading it back), bob's retry read from the ledger.
    sent = [o.delivery.id for o in first.outcomes + second.outcomes if o.status == "sent"]
    assert [store.stored_message(i) for i in sent] == [data for _, _, data in smtp_server.handler.messages]
    for _, _, data in smtp_server.handler.messages:
        assert b"\r\n" in data and max(len(line) for line in data.split(b"\r\n")) <= 998
        message = email.message_from_bytes(data, policy=policy.default)
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "mailto:" in message["List-Unsubscribe"] and "https://" in message["List-Unsubscribe"].replace(
            "http://", "https://"
        )


# -- as a user runs it: the command, the quick start, a crash -----------------------------------


def paperbot(cwd: Path, *args: str, env: dict | None = None, **options) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PAPERBOT_")}
    return subprocess.Popen(
        [sys.executable, "-m", "bot", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **options,
    )


def test_the_quick_start_leaves_a_real_email_in_the_outbox_and_sends_it_once(tmp_path):
    (tmp_path / "subscriptions").mkdir()
    (tmp_path / "subscriptions" / "example-alice.toml").write_bytes(
        (EXAMPLES / "example-alice.toml").read_bytes()
    )
    first = paperbot(tmp_path, "run", "--once", "--offline")
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert "sent example-alice/email" in out
    files = sorted(p.name for p in (tmp_path / "outbox").iterdir())
    # her daily digest, and the instant alert of her "RL for reasoning" watch
    assert (
        len(files) == 2 and files[1].startswith("instant_") and files[0].endswith("-example-alice-email.eml")
    )
    message = parsed(tmp_path / "outbox" / files[0])
    assert message["To"] == "Alice Example <alice@example.org>" and message["Message-ID"]
    assert "ALICE_SLACK_WEBHOOK_URL is not set" in out  # her Slack is not set up here: said, not an error
    second = paperbot(tmp_path, "run", "--once", "--offline")
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 0 and "sent already" in out
    assert len(list((tmp_path / "outbox").iterdir())) == 2


def smtp_sender(smtp_server) -> SmtpSender:
    """paperbot's SMTP sender, to the test's server (plain, no login)."""
    return SmtpSender(host="127.0.0.1", port=smtp_server.port, sender="papers@example.org", security="none")


def smtp_env(smtp_server, **more: str) -> dict[str, str]:
    """The environment of a paperbot sending through the test's SMTP server (plain, no login)."""
    return {
        "PAPERBOT_MAIL_TRANSPORT": "smtp",
        "PAPERBOT_SMTP_HOST": "127.0.0.1",
        "PAPERBOT_SMTP_PORT": str(smtp_server.port),
        "PAPERBOT_SMTP_SECURITY": "none",
        **more,
    }


def run_sending_slowly(tmp_path: Path, smtp_server, people: list[str]) -> tuple[subprocess.Popen, dict]:
    """`paperbot run --once` sending the digests of `people` to a server that takes 0.3 s a
    message, once two have arrived; and its environment, for the next run."""
    subscribed(tmp_path, people)
    env = smtp_env(smtp_server, PAPERBOT_DB=str(tmp_path / "paperbot.db"))
    smtp_server.handler.delay = 0.3
    running = paperbot(tmp_path, "run", "--once", "--offline", env=env)
    deadline = time.monotonic() + 60
    while len(smtp_server.handler.messages) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    return running, env


def test_killed_between_messages_then_run_again_each_digest_arrives_once(tmp_path, smtp_server):
    """SIGKILL while a batch of 6 digests goes out over SMTP; the next run sends the rest.

    The server takes 0.3 s per message, so the kill lands mid-batch. A duplicate is only
    possible for the one message the server accepted while the process died before it
    recorded "sent" (the window the README names); the test counts them."""
    people = [f"p{n}" for n in range(6)]
    victim, env = run_sending_slowly(tmp_path, smtp_server, people)
    victim.send_signal(signal.SIGKILL)
    out, _ = victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    before = len(smtp_server.handler.messages)
    assert before < len(people), "the kill came too late to test anything"
    # It said what it did as it went: a line for each digest it sent (but the one in flight).
    assert out.startswith("offline: stored 30 papers") and before - 1 <= out.count("\nsent p") <= before

    time.sleep(0.5)  # let the server finish the message in flight, as a real one would
    env["PAPERBOT_DELIVERY_RETRY_MINUTES"] = "0"
    for _ in range(2):  # the second run picks up a digest whose sender died mid-send, once its lease ends
        again = paperbot(tmp_path, "run", "--once", "--offline", env=env)
        again.communicate(timeout=120)
        with open_store(tmp_path / "paperbot.db") as store:
            if store.delivery_counts().get("sent") == len(people):
                break
            # the killed run's claim: expire it as the clock would after the lease
            store.db.execute("update deliveries set claimed_until = '2000-01-01' where state = 'sending'")
            store.db.conn.commit()
    received = [to[0].split("@")[0] for _, to, _ in smtp_server.handler.messages]
    duplicates = len(received) - len(set(received))
    print(f"killed after {before} messages; {len(received)} received in all, {duplicates} duplicates")
    assert set(received) == set(people)  # none lost
    assert duplicates <= 1  # only the message in flight at the kill can come twice


def test_sigterm_finishes_the_message_in_flight_and_the_next_run_sends_the_rest(tmp_path, smtp_server):
    """`systemctl stop` mid-batch: the run sends the message in flight, records it, and stops,
    leaving no digest claimed; the next run, at once, sends the rest, each once."""
    people = [f"p{n}" for n in range(6)]
    stopped, env = run_sending_slowly(tmp_path, smtp_server, people)
    stopped.send_signal(signal.SIGTERM)
    out, err = stopped.communicate(timeout=30)
    assert stopped.returncode == 143, err
    assert "stopped by SIGTERM after the message in flight" in err
    before = len(smtp_server.handler.messages)
    assert before < len(people), "the stop came too late to test anything"
    with open_store(tmp_path / "paperbot.db") as store:
        counts = store.delivery_counts()
        pending = store.db.execute("select attempts from deliveries where state = 'pending'")
        tries = [row[0] for row in pending]
    assert counts == {"sent": before, "pending": len(people) - before}  # none left 'sending'
    assert tries == [0] * len(tries)  # not one counted: the next claimed with the last "sent" was let go
    assert out.count("sent p") == before
    again = paperbot(tmp_path, "run", "--once", "--offline", env=env)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    received = sorted(to[0].split("@")[0] for _, to, _ in smtp_server.handler.messages)
    assert received == people  # each once


def test_the_link_warning_is_given_once_a_process(make_settings, caplog):
    """The daemon makes its senders every run, the web app for every sign-up mail: the
    operator reads the warning once, not once a mail."""
    from bot.pipeline import make_email_sender

    settings = make_settings(mail_transport="smtp", web_base_url="http://once.example.org")
    for _ in range(3):
        make_email_sender(settings)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "web.base_url is http://once.example.org"
    ]


def test_sigterm_while_polling_a_silent_site_ends_the_run_at_once(tmp_path):
    """Nothing is claimed while paperbot polls: SIGTERM then ends it at once, not after the
    poll's timeouts and retries (minutes, more than systemd waits before a SIGKILL)."""
    import socket

    (tmp_path / "subscriptions").mkdir()
    subscription(tmp_path / "subscriptions", "alice")
    with socket.socket() as silent:  # takes the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(60)
        env = {
            "PAPERBOT_HF_BASE_URL": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "PAPERBOT_HF_TIMEOUT": "30",
            "PAPERBOT_DB": str(tmp_path / "paperbot.db"),
        }
        polling = paperbot(tmp_path, "run", "--once", env=env)
        connection, _ = silent.accept()  # it is polling now
        started = time.monotonic()
        polling.send_signal(signal.SIGTERM)
        polling.communicate(timeout=20)
        connection.close()
    assert polling.returncode == -signal.SIGTERM and time.monotonic() - started < 5


def test_run_cli_reports_and_exits_non_zero_when_a_send_fails(tmp_path, smtp_server):
    folder = tmp_path / "subscriptions"
    folder.mkdir()
    subscription(folder, "alice")
    smtp_server.handler.replies = ["451 4.3.0 later"]
    env = smtp_env(smtp_server, PAPERBOT_CONFIG="")
    base = ["--db", str(tmp_path / "p.db"), "--subscriptions", str(folder)]
    result = CliRunner().invoke(main, [*base, "run", "--once", "--offline"], env=env)
    assert result.exit_code == 5
    assert "retry alice/email" in result.output and "451" in result.output
    status = CliRunner().invoke(main, [*base, "status"], env=env)
    assert "1 pending" in status.output and "retrying alice/email" in status.output


@pytest.mark.parametrize(
    ("base_url", "warned"),
    [
        ("http://localhost:8000", "a local address"),
        ("https://127.0.0.1:8443", "a local address"),
        ("https://[::1]", "a local address"),
        ("http://papers.example.org", "not https"),
        ("https://papers.example.org", None),
    ],
)
def test_real_mail_with_links_nobody_can_follow_is_warned_about(tmp_path, smtp_server, base_url, warned):
    """Mail through SMTP goes to real readers: unsubscribe links to this machine, or not over
    https (one-click unsubscribing needs it, RFC 8058), are warned about as the run starts."""
    folder = tmp_path / "subscriptions"
    folder.mkdir()
    subscription(folder, "alice")
    env = smtp_env(smtp_server, PAPERBOT_CONFIG="", PAPERBOT_WEB_BASE_URL=base_url)
    started = paperbot(tmp_path, "--db", "p.db", "run", "--once", "--offline", env=env)
    _, err = started.communicate(timeout=120)
    assert started.returncode == 0, err
    if warned:
        assert f"web.base_url is {base_url}, {warned}" in err and "PAPERBOT_WEB_BASE_URL" in err
    else:
        assert "web.base_url" not in err


def test_a_cold_start_forgets_all_that_planning_keeps(world):
    """bench/render_send.py starts each run cold, as a fresh `paperbot run --once`: it calls
    bot.deliver.forget_planning, which names what it clears. A cache that planning fills and
    that is left out of it would survive into the next run and flatter the figures: every
    functools cache of the planning modules must be empty after it."""
    import functools

    import bot.deliver
    import bot.match
    import bot.query
    import bot.schedule
    import bot.words

    modules = (bot.deliver, bot.match, bot.query, bot.schedule, bot.words)

    def filled() -> set[str]:
        return {
            f"{module.__name__}.{name}"
            for module in modules
            for name, value in vars(module).items()
            if isinstance(value, functools._lru_cache_wrapper) and value.cache_info().currsize
        }

    store, folder, _, _ = world
    subscription(folder, "alice", '"sparse attention"', schedule='"daily 08:00"')
    subscription(folder, "bob", "agents", schedule='"weekly friday 08:00"')
    bot.deliver.forget_planning()
    assert filled() == set()
    plans, _ = plan_digests(store, load_subscriptions(folder).subscribers, FRIDAY_9AM_BERLIN)
    assert plans and {"bot.schedule.due_period", "bot.words._fold_parts"} <= filled()
    bot.deliver.forget_planning()
    assert filled() == set()
