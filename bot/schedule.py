"""When digests go out: subscribers' schedules, and (later) the APScheduler wiring.

The only module that imports apscheduler. A schedule is written in a subscription as
"daily 08:00", "weekly monday 08:00", a five-field cron expression ("0 8 * * mon-fri"),
or "none"; it is read in the subscriber's own time zone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

__all__ = [
    "Period",
    "Schedule",
    "Scheduler",
    "due_period",
    "forget_schedules",
    "next_run",
    "parse_schedule",
    "trigger_for",
]

_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAILY = re.compile(r"^daily(?:\s+at)?\s+(\d{1,2}):(\d{2})$", re.I)
_WEEKLY = re.compile(r"^weekly(?:\s+on)?\s+([a-z]+)(?:\s+at)?\s+(\d{1,2}):(\d{2})$", re.I)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A digest schedule as a cron expression (minute hour day month weekday), or none."""

    text: str  # what the subscriber wrote
    cron: str | None  # None: no digest (instant alerts only)

    @property
    def enabled(self) -> bool:
        return self.cron is not None


def _clock(hour: str, minute: str, text: str) -> tuple[int, int]:
    h, m = int(hour), int(minute)
    if h > 23 or m > 59:
        raise ValueError(f"{text!r}: {hour}:{minute} is not a time of day; write HH:MM from 00:00 to 23:59")
    return h, m


def parse_schedule(text: str) -> Schedule:
    """Read "daily 08:00", "weekly monday 08:00", a cron expression or "none". Raises ValueError."""
    cleaned = " ".join(str(text).split())
    if cleaned.lower() in ("none", "off", ""):
        return Schedule(cleaned, None)
    if match := _DAILY.match(cleaned):
        h, m = _clock(*match.groups(), cleaned)
        return Schedule(cleaned, f"{m} {h} * * *")
    if match := _WEEKLY.match(cleaned):
        day, hour, minute = match.groups()
        names = [d for d in _DAYS if d.startswith(day.lower()) and len(day) >= 3]
        if len(names) != 1:
            raise ValueError(
                f"{cleaned!r}: {day!r} is not a day of the week; write e.g. 'weekly monday 08:00'"
            )
        h, m = _clock(hour, minute, cleaned)
        return Schedule(cleaned, f"{m} {h} * * {names[0][:3]}")
    fields = cleaned.split()
    if len(fields) == 5:
        try:
            CronTrigger.from_crontab(cleaned, timezone="UTC")
        except ValueError as error:
            raise ValueError(f"{cleaned!r} is not a valid cron expression: {error}") from None
        return Schedule(cleaned, cleaned)
    raise ValueError(
        f"{cleaned!r} is not a schedule: write 'daily 08:00', 'weekly monday 08:00', "
        "a cron expression like '0 8 * * mon-fri', or 'none'"
    )


@lru_cache(maxsize=1024)
def trigger_for(schedule: Schedule, zone: str) -> CronTrigger:
    """The APScheduler trigger that fires `schedule` in time zone `zone`."""
    if schedule.cron is None:
        raise ValueError("this schedule sends no digests")
    return CronTrigger.from_crontab(schedule.cron, timezone=ZoneInfo(zone))


def next_run(schedule: Schedule, zone: str, after: datetime) -> datetime | None:
    """The first time after `after` (aware) at which the digest is due, or None."""
    if schedule.cron is None:
        return None
    return trigger_for(schedule, zone).get_next_fire_time(None, after)


@dataclass(frozen=True, slots=True)
class Period:
    """One firing of a digest schedule: its ledger key and how the subscriber reads it."""

    key: str  # "2026-06-12" (daily), "2026-W24" (weekly), "2026-06-12T18:00" (other cron)
    label: str  # "Fri 12 Jun 2026", in the subscriber's zone
    fired_at: datetime  # aware, in the subscriber's zone


# How far back to look for the latest firing: a minute-by-minute cron is found in the first
# hour, a yearly one in the last step, and no step walks more than a few thousand firings.
_LOOKBACK = (
    timedelta(hours=1),
    timedelta(days=2),
    timedelta(days=9),
    timedelta(days=32),
    timedelta(days=367),
)


# A cron firing at one time every day, or on one day of the week, as parse_schedule writes
# "daily HH:MM" and "weekly DAY HH:MM" (or as written so).
_SIMPLE_CRON = re.compile(
    r"(?P<minute>[0-9]{1,2}) (?P<hour>[0-9]{1,2}) \* \* (?:\*|(?P<day>mon|tue|wed|thu|fri|sat|sun))"
)
_WEEKDAYS = {day[:3]: number for number, day in enumerate(_DAYS)}


def latest_fire(schedule: Schedule, zone: str, now: datetime) -> datetime | None:
    """The last time at or before `now` at which the schedule fired, or None."""
    if schedule.cron is None:
        return None
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware, e.g. datetime.now(UTC)")
    simple = _SIMPLE_CRON.fullmatch(schedule.cron)
    if simple is not None:
        weekday = None if simple["day"] is None else _WEEKDAYS[simple["day"]]
        fire = _latest_local(int(simple["hour"]), int(simple["minute"]), ZoneInfo(zone), now, weekday)
        if fire is not None:
            return fire
    return _latest_by_trigger(schedule, zone, now)


def _latest_by_trigger(schedule: Schedule, zone: str, now: datetime) -> datetime | None:
    """latest_fire, as APScheduler's trigger for the schedule finds it."""
    trigger = trigger_for(schedule, zone)
    for back in _LOOKBACK:
        fire = trigger.get_next_fire_time(None, now - back)
        if fire is None or fire > now:
            continue
        while True:
            following = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
            if following is None or following > now:
                return fire
            fire = following
    return None


def _latest_local(
    hour: int, minute: int, zone: ZoneInfo, now: datetime, weekday: int | None = None
) -> datetime | None:
    """The last firing of a schedule at hour:minute every day, or on `weekday` (0: Monday),
    found without APScheduler's trigger, whose making and searching took 130 µs per schedule
    and time zone, a sixth of planning a run of thousands of subscribers (a test holds it to
    the latest such local time, and to a time the trigger fires at). The trigger's search
    from an earlier day also skipped the times in the first hour after midnight on the day
    after clocks go forward (agronholm/apscheduler#606). None where daylight saving skips or
    repeats the time on the day found, or repeats the time of `now` (its local day could be
    the one before): APScheduler's rules decide those."""
    moment = now.astimezone(UTC)  # compared in UTC: two times in one zone compare as wall clocks
    local = moment.astimezone(zone)
    if local.utcoffset() != local.replace(fold=1 - local.fold).utcoffset():
        return None
    last = local.date()
    if weekday is not None:
        last -= timedelta(days=(last.weekday() - weekday) % 7)
    for day in (last, last - timedelta(days=1 if weekday is None else 7)):
        fire = datetime.combine(day, time(hour, minute), tzinfo=zone)
        if fire.utcoffset() != fire.replace(fold=1).utcoffset():
            return None
        if fire.astimezone(UTC) <= moment:
            return fire
    return None


@lru_cache(maxsize=4096)  # a run asks once per subscriber; most share a schedule and a zone
def due_period(schedule: Schedule, zone: str, now: datetime) -> Period | None:
    """The period whose digest is due at `now`: the schedule's latest firing, or None."""
    fired = latest_fire(schedule, zone, now)
    if fired is None:
        return None
    local = fired.astimezone(ZoneInfo(zone))
    text = schedule.text.lower()
    if text.startswith("daily"):
        key = local.date().isoformat()
    elif text.startswith("weekly"):
        year, week, _ = local.isocalendar()
        key = f"{year}-W{week:02d}"
    else:
        key = local.strftime("%Y-%m-%dT%H:%M")
    return Period(key, f"{local:%a} {local.day} {local:%b %Y}", local)


def forget_schedules() -> None:
    """Drop every schedule's trigger and due period kept, as in a fresh process (see
    bot.deliver.forget_planning)."""
    trigger_for.cache_clear()
    due_period.cache_clear()


class Scheduler:
    """APScheduler (3.x) wiring: named jobs on one worker thread, so passes never overlap.

    Jobs live in memory: what was missed while paperbot was down is the ledger's business
    (see bot.deliver: a due period not yet in the ledger is made on the next pass).
    """

    def __init__(self):
        self._scheduler = BackgroundScheduler(
            timezone=ZoneInfo("UTC"),
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
        )

    def add_interval(self, name: str, *, minutes: float, jitter: int, func, args: tuple) -> None:
        """Run `func(*args)` every `minutes`, each time up to `jitter` seconds late."""
        trigger = IntervalTrigger(minutes=minutes, jitter=jitter or None, timezone=ZoneInfo("UTC"))
        self._scheduler.add_job(func, trigger, args=args, id=name, name=name, replace_existing=True)

    def add_schedule(self, name: str, schedule: Schedule, zone: str, func, args: tuple) -> None:
        """Run `func(*args)` when `schedule` fires in time zone `zone` (daylight saving included)."""
        self._scheduler.add_job(
            func, trigger_for(schedule, zone), args=args, id=name, name=name, replace_existing=True
        )

    def remove(self, name: str) -> None:
        try:
            self._scheduler.remove_job(name)
        except JobLookupError:
            pass

    def job_names(self, prefix: str = "") -> list[str]:
        return [job.id for job in self._scheduler.get_jobs() if job.id.startswith(prefix)]

    def next_run(self, name: str) -> datetime | None:
        job = self._scheduler.get_job(name)
        return getattr(job, "next_run_time", None) if job else None

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop; wait for the job that is running (it stops after its message in flight)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
