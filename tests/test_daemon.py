"""The daemon: digests at each subscriber's local time across daylight saving, catch-up after
downtime, reload on SIGHUP, clean stop on SIGTERM, and no lost or doubled digest when killed.

Time-travel tests step a fixed clock through 2026 and run the daemon's pass at each step,
with a real SQLite file and the outbox; process tests run `paperbot run` for real.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bot.captures import read_capture
from bot.channels.email import OutboxSender
from bot.pipeline import run_once
from bot.schedule import parse_schedule, trigger_for
from bot.store import open_store
from bot.subscriptions import load_subscriptions
from conftest import HF


def real_papers():
    """67 real papers (two real API captures); the tests give them new days of first sighting."""
    names = ["api_daily_papers_2026-05-08_prettyprinted.json", "api_daily_papers_2026-06-12.json"]
    return [p for name in names for capture in read_capture(HF / name) for p in capture.papers]


def write_subscriber(folder: Path, sid: str, zone: str, schedule: str = "daily 08:00") -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{sid}.toml").write_text(
        f'email = "{sid}@example.org"\ntimezone = "{zone}"\nschedule = "{schedule}"\nsend_empty = true\n'
        '[[watch]]\nname = "anything about models"\nquery = "model*"\n'
    )


def simulate(tmp_path, make_settings, ticks, new_paper_at, **settings):
    """Run the daemon's pass at each tick (a fixed clock); a new paper appears at `new_paper_at`
    hours UTC each day. Returns the store's deliveries as (subscriber, period, sent_at)."""
    folder = tmp_path / "subscriptions"
    people = list(load_subscriptions(folder).subscribers)
    papers = iter(real_papers())
    config = make_settings(**settings)
    sender = OutboxSender(tmp_path / "outbox")
    published = None  # the last hour a paper came out upstream that the store has
    with open_store(tmp_path / "paperbot.db") as store:
        for tick in ticks:
            # A paper comes out upstream every day at `new_paper_at` UTC; a poll at this tick
            # stores what came out since the last one (all of it, after downtime).
            while True:
                due = (published or tick.replace(hour=0, minute=0) - timedelta(days=1)) + timedelta(days=1)
                due = due.replace(hour=new_paper_at, minute=0)
                if due > tick:
                    break
                store.save_papers([next(papers)], tick - timedelta(minutes=1), "api:latest")
                published = due
            run_once(
                store, config, people, fetch=lambda: "", senders={"email": sender}, clock=lambda t=tick: t
            )
        rows = store.db.query("select subscriber_id, period, state, sent_at, id from deliveries order by id")
        return [
            (r["subscriber_id"], r["period"], r["state"], r["sent_at"], r["id"]) for r in rows
        ], store.path


def hourly(start: datetime, end: datetime):
    moment = start
    while moment < end:
        yield moment
        moment += timedelta(hours=1)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (datetime(2026, 3, 5, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)),  # US Mar 8, EU Mar 29
        (datetime(2026, 10, 22, tzinfo=UTC), datetime(2026, 11, 4, tzinfo=UTC)),  # EU Oct 25, US Nov 1
    ],
    ids=["spring", "autumn"],
)
def test_each_daily_digest_goes_out_once_at_local_time_across_daylight_saving(
    tmp_path, make_settings, start, end
):
    write_subscriber(tmp_path / "subscriptions", "berlin", "Europe/Berlin")
    write_subscriber(tmp_path / "subscriptions", "la", "America/Los_Angeles")

    rows, _ = simulate(tmp_path, make_settings, hourly(start, end), new_paper_at=1)

    for sid, zone in (("berlin", "Europe/Berlin"), ("la", "America/Los_Angeles")):
        mine = [r for r in rows if r[0] == sid]
        periods = [r[1] for r in mine]
        assert len(periods) == len(set(periods)), f"{sid} got a period twice"
        sent = [r for r in mine if r[2] == "sent"]
        local = {r[1]: datetime.fromisoformat(r[3]).astimezone(ZoneInfo(zone)) for r in sent}
        # one catch-up at the start (the day before's digest, with the first paper), then one
        # digest every day at 08:00 local, each holding that day's paper
        catch_up, *daily = sent
        assert [(local[r[1]].hour, local[r[1]].minute) for r in daily] == [(8, 0)] * len(daily), sid
        days = [local[r[1]].date() for r in daily]
        assert [d.isoformat() for d in days] == [r[1] for r in daily]
        assert days == [days[0] + timedelta(days=n) for n in range(len(days))], sid
        assert len(days) >= (end - start).days - 3
        after_catch_up = date.fromisoformat(catch_up[1]) + timedelta(days=1)
        assert [r[1] for r in mine if r[2] == "skipped"] == [after_catch_up.isoformat()], sid
        assert days[0] == after_catch_up + timedelta(days=1)


def test_the_scheduler_fires_at_local_8_on_every_day_of_2026():
    """APScheduler's trigger, as the daemon uses it, across both changes in both zones."""
    for zone in ("Europe/Berlin", "America/Los_Angeles"):
        trigger = trigger_for(parse_schedule("daily 08:00"), zone)
        fire = trigger.get_next_fire_time(None, datetime(2026, 1, 1, tzinfo=UTC))
        days = []
        while fire.year == 2026:
            local = fire.astimezone(ZoneInfo(zone))
            assert (local.hour, local.minute) == (8, 0)
            days.append(local.date())
            fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
        assert len(days) == 365 == len(set(days))


@pytest.mark.parametrize(
    ("grace", "expected"),
    [
        # the first pass catches up Wednesday's digest with Thursday's paper; Thursday's then has
        # nothing new and is skipped. Back on Monday at 07:30: Sunday's digest is 23.5 h late.
        ("24", ["2026-06-10", "2026-06-12", "2026-06-14"]),  # Sunday's sent at once; Monday's: nothing new
        # with 12 h, Wednesday's is too late at the first pass as well; Thursday's has its paper
        ("12", ["2026-06-11", "2026-06-12", "2026-06-15"]),  # past the window: Monday's has it all
    ],
)
def test_down_from_friday_evening_to_monday_morning(tmp_path, make_settings, grace, expected):
    write_subscriber(tmp_path / "subscriptions", "berlin", "Europe/Berlin")
    up = list(
        hourly(datetime(2026, 6, 11, 0, tzinfo=UTC), datetime(2026, 6, 12, 17, tzinfo=UTC))
    )  # Fri 19:00
    back = [datetime(2026, 6, 15, 5, 30, tzinfo=UTC)]  # Monday 07:30 in Berlin
    back += hourly(datetime(2026, 6, 15, 6, tzinfo=UTC), datetime(2026, 6, 15, 12, tzinfo=UTC))
    # papers keep coming while paperbot is down: stored by a poll at start, as if just fetched
    rows, db = simulate(tmp_path, make_settings, up + back, new_paper_at=1, schedule_grace_hours=grace)
    sent = [r for r in rows if r[2] == "sent"]
    assert [r[1] for r in sent] == expected
    with open_store(db) as store:
        friday, coalesced = store.get_delivery(sent[-2][4]), store.get_delivery(sent[-1][4])
        # one digest covers Saturday, Sunday and Monday morning: nothing lost, nothing twice
        assert coalesced.window_start == friday.window_end == datetime(2026, 6, 12, 6, tzinfo=UTC)
        assert coalesced.window_end >= datetime(2026, 6, 15, 5, 30, tzinfo=UTC)
        assert len(coalesced.paper_ids) >= 2
    last = sent[-1][3]
    if grace == "24":
        assert last.startswith("2026-06-15T05:30")  # Sunday's went out the moment it was back
    else:
        assert last.startswith("2026-06-15T06:00")  # Monday's, at 08:00 in Berlin


# -- the real process -----------------------------------------------------------------------------


def start_daemon(cwd: Path, env: dict) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PAPERBOT_")}
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "-v", "run", "--offline"],
        cwd=cwd,
        env={**clean, "PAPERBOT_POLL_JITTER_SECONDS": "0", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def smtp_env(smtp_server, tmp_path: Path) -> dict:
    return {
        "PAPERBOT_MAIL_TRANSPORT": "smtp",
        "PAPERBOT_SMTP_HOST": "127.0.0.1",
        "PAPERBOT_SMTP_PORT": str(smtp_server.port),
        "PAPERBOT_SMTP_SECURITY": "none",
        "PAPERBOT_DB": str(tmp_path / "paperbot.db"),
    }


def test_sighup_reloads_and_sigterm_stops_cleanly(tmp_path, smtp_server):
    folder = tmp_path / "subscriptions"
    write_subscriber(folder, "alice", "Europe/Berlin")
    daemon = start_daemon(tmp_path, smtp_env(smtp_server, tmp_path))
    assert wait_for(lambda: len(smtp_server.handler.messages) == 1), "alice's catch-up digest never came"

    write_subscriber(folder, "bob", "Europe/Berlin")
    (folder / "alice.toml").write_text((folder / "alice.toml").read_text().replace("model*", "(model*"))
    daemon.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    daemon.send_signal(signal.SIGTERM)
    out, err = daemon.communicate(timeout=30)

    assert daemon.returncode == 0, err
    assert "reloaded subscriptions: 2 in use (1 from a last good version), 1 invalid files" in err
    assert "alice.toml" in err and "last good version keeps working" in err
    assert "paperbot stopped" in err


def test_killed_at_random_points_nothing_is_lost_and_duplicates_stay_in_the_window(tmp_path, smtp_server):
    """SIGKILL the daemon 20 times at random moments of its work, restarting it each time.

    Three new subscribers join before each start, so every run has digests to send and the
    kills land in start-up, the poll, rendering, and mid-batch."""
    seed = int(os.environ.get("PAPERBOT_FAULT_SEED", random.randrange(1 << 30)))
    print(f"fault-injection seed: {seed} (PAPERBOT_FAULT_SEED={seed} repeats this run)")
    chance = random.Random(seed)
    folder = tmp_path / "subscriptions"
    people = [f"p{n:02d}" for n in range(6)]
    for sid in people:
        write_subscriber(folder, sid, "Europe/Berlin")
    env = {**smtp_env(smtp_server, tmp_path), "PAPERBOT_DELIVERY_LEASE_SECONDS": "1"}
    smtp_server.handler.delay = 0.08
    kills = []
    for round_ in range(20):
        for n in range(3):
            people.append(f"r{round_:02d}{n}")
            write_subscriber(folder, people[-1], "Europe/Berlin")
        daemon = start_daemon(tmp_path, env)
        delay = chance.uniform(0.5, 2.2)  # from start-up (imports, the poll) into the sending
        time.sleep(delay)
        daemon.send_signal(signal.SIGKILL)
        daemon.communicate(timeout=30)
        kills.append((round(delay, 2), len(smtp_server.handler.messages)))
        time.sleep(1.1)  # the lease of the message the killed daemon held runs out
    daemon = start_daemon(tmp_path, env)
    done = wait_for(
        lambda: {to[0].split("@")[0] for _, to, _ in smtp_server.handler.messages} >= set(people), 60
    )
    daemon.send_signal(signal.SIGTERM)
    daemon.communicate(timeout=30)

    received = [to[0].split("@")[0] for _, to, _ in smtp_server.handler.messages]
    duplicates = len(received) - len(set(received))
    print(f"kills (seconds after start, messages by then): {kills}")
    print(f"{len(received)} messages for {len(people)} digests: {duplicates} duplicates")
    assert done and set(received) == set(people), f"lost digests (seed {seed})"
    # a duplicate needs a kill between the server's 250 and the commit of "sent"
    assert duplicates <= len(kills), f"seed {seed}"
    with open_store(tmp_path / "paperbot.db") as store:
        assert store.delivery_counts() == {"sent": len(people)}


def test_two_processes_on_one_database_never_send_the_same_digest(tmp_path, smtp_server):
    folder = tmp_path / "subscriptions"
    people = [f"p{n:02d}" for n in range(12)]
    for sid in people:
        write_subscriber(folder, sid, "Europe/Berlin")
    env = smtp_env(smtp_server, tmp_path)
    smtp_server.handler.delay = 0.05
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PAPERBOT_")}
    command = [sys.executable, "-m", "bot", "run", "--once", "--offline"]
    runs = [
        subprocess.Popen(
            command, cwd=tmp_path, env={**clean, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    for run in runs:
        run.communicate(timeout=120)
    received = [to[0] for _, to, _ in smtp_server.handler.messages]
    assert sorted(received) == sorted(f"{sid}@example.org" for sid in people)


def test_status_shows_jobs_after_the_daemon_ran(tmp_path, smtp_server):
    write_subscriber(tmp_path / "subscriptions", "alice", "Europe/Berlin")
    daemon = start_daemon(tmp_path, smtp_env(smtp_server, tmp_path))
    assert wait_for(lambda: len(smtp_server.handler.messages) == 1)
    time.sleep(0.5)
    daemon.send_signal(signal.SIGTERM)
    daemon.communicate(timeout=30)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PAPERBOT_")}
    status = subprocess.run(
        [sys.executable, "-m", "bot", "--db", str(tmp_path / "paperbot.db"), "status"],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "job poll" in status.stdout and "ok" in status.stdout
    assert "job digest alice" in status.stdout and "next 20" in status.stdout
    assert "1 sent" in status.stdout


def latest_local_time(
    hour: int, minute: int, zone: ZoneInfo, now: datetime, weekday: int | None = None
) -> datetime:
    """The latest moment at or before `now` whose local time in `zone` reads hour:minute (either
    pass of a repeated hour), on `weekday` if given (0: Monday), found by trying each nearby day
    both ways: the reference."""
    moment = now.astimezone(UTC)
    found = []
    for days in range(-10, 2):
        day = moment.astimezone(zone).date() + timedelta(days=days)
        if weekday is not None and day.weekday() != weekday:
            continue
        for fold in (0, 1):
            wall = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone, fold=fold)
            back = wall.astimezone(UTC).astimezone(zone)  # a time the clock skipped reads otherwise
            if (back.date(), back.hour, back.minute) == (day, hour, minute) and back <= moment:
                found.append(wall)
    return max(found, key=lambda wall: wall.astimezone(UTC))


WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def test_a_daily_or_weekly_schedule_fired_last_at_the_latest_local_time_across_daylight_saving():
    """paperbot finds a daily or weekly schedule's latest firing without APScheduler's search
    (its trigger took a sixth of planning a big run). What it finds must be the latest moment at
    or before now when the local clock read the schedule's time (on its day), and one
    APScheduler's trigger fires at: every 20 minutes of the three days around each
    daylight-saving change of 2026, in zones that move by an hour, by half an hour, or not at
    all, and of 2005 in St. John's, whose clocks went back from 00:01 to the day before. On a
    day the change skips or repeats the time (02:30 in Berlin in March, 01:30 in Los Angeles
    in November), it leaves the answer to APScheduler."""
    from bot.schedule import _latest_local

    zones = ["Europe/Berlin", "America/Los_Angeles", "Australia/Lord_Howe", "America/Sao_Paulo", "UTC"]
    times = ["00:00", "00:30", "01:30", "02:30", "03:00", "23:59"]
    texts = [f"daily {at}" for at in times] + [
        f"weekly {day} {at}" for day in ("sunday", "monday") for at in times
    ]
    texts += [f"weekly {day} 08:00" for day in WEEKDAYS]
    second = timedelta(seconds=1)
    found = left = 0
    for zone, year in [(zone, 2026) for zone in zones] + [("America/St_Johns", 2005)]:
        tz = ZoneInfo(zone)
        noon = [datetime(year, 1, 1, 12, tzinfo=tz) + timedelta(days=d) for d in range(365)]
        changes = [b for a, b in zip(noon, noon[1:], strict=False) if a.utcoffset() != b.utcoffset()]
        moments = [c.astimezone(UTC) + timedelta(minutes=20 * i) for c in changes for i in range(-108, 108)]
        moments += [datetime(year, 6, 15, 7, 1, tzinfo=UTC), datetime(year, 12, 31, 23, 59, tzinfo=UTC)]
        for text in texts:
            trigger = trigger_for(parse_schedule(text), zone)
            *day, at = text.split()[1:]
            hour, minute = map(int, at.split(":"))
            weekday = WEEKDAYS.index(day[0]) if day else None
            for now in moments:
                fire = _latest_local(hour, minute, tz, now, weekday)
                if fire is None:
                    left += 1
                    continue
                found += 1
                expected = latest_local_time(hour, minute, tz, now, weekday)
                assert (fire.astimezone(UTC), fire.tzinfo, fire.hour, fire.minute, fire.weekday()) == (
                    expected.astimezone(UTC),
                    tz,
                    hour,
                    minute,
                    expected.weekday(),
                ), (zone, text, now)
                assert weekday is None or fire.weekday() == weekday, (zone, text, now)
                assert trigger.get_next_fire_time(None, fire - second) == fire, (zone, text, now)
    assert found > 25_000 and left > 100  # the days of a change were met, and left to APScheduler


@pytest.mark.parametrize(
    ("schedule", "key"),
    [
        ("daily 00:00", "2026-03-30"),
        ("daily 00:30", "2026-03-30"),
        ("weekly monday 00:00", "2026-W14"),
        ("weekly monday 00:30", "2026-W14"),
    ],
)
def test_a_digest_just_after_midnight_is_due_on_the_day_after_clocks_go_forward(schedule, key):
    """Searching from an earlier day, APScheduler 3's trigger skips the times of the first hour
    after midnight on the day after clocks go forward (agronholm/apscheduler#606): a run at 09:00
    on Monday 30 March 2026 in Berlin took the day before's digest (or the week before's) as
    the one due, and that day's (that week's) digest never went."""
    from bot.schedule import due_period

    now = datetime(2026, 3, 30, 7, tzinfo=UTC)
    assert due_period(parse_schedule(schedule), "Europe/Berlin", now).key == key


def test_a_schedule_asked_about_a_time_without_a_zone_says_so():
    from bot.schedule import latest_fire

    with pytest.raises(ValueError, match="timezone-aware"):
        latest_fire(parse_schedule("daily 08:00"), "Europe/Berlin", datetime(2026, 6, 15, 9))
