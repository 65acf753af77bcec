"""`paperbot run`: the long-running daemon.

    start ──> poll + catch up (digests missed while down, within the grace window)
          ──> every poll.interval_minutes (with jitter): poll, instant alerts, retries
          ──> each subscriber's schedule, in their zone: their digest
    SIGHUP or a changed file ──> reload subscriptions (a broken file keeps its last good version)
    SIGTERM / SIGINT ──> finish the message in flight, stop

Every pass opens its own database connection and goes through the ledger, so a restart,
a crash, or a `run --once` from cron beside it never sends a digest twice.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.config import Settings
from bot.errors import BotError, SourceError, SubscriptionError
from bot.fetch import Listing
from bot.models import Subscriber
from bot.pipeline import (
    bundled_capture,
    import_files,
    make_client,
    make_senders,
    poll,
    run_once,
    search_text,
)
from bot.schedule import Scheduler
from bot.store import open_store
from bot.subscriptions import read_subscription

__all__ = ["Daemon"]

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class Daemon:
    """Polls, sends digests on each subscriber's schedule, reloads, and stops cleanly."""

    def __init__(
        self,
        settings: Settings,
        subscriptions_dir: str | Path,
        *,
        offline: bool = False,
        clock: Callable[[], datetime] = _now,
        check_files_every: float = 5.0,
    ):
        self.settings = settings
        self.db_path = settings["database.path"]
        self.folder = Path(subscriptions_dir)
        self.offline = offline
        self.clock = clock
        self.check_files_every = check_files_every
        self.stopping = threading.Event()
        self._reload_asked = threading.Event()
        self._wake = threading.Event()  # set by a signal: look at stopping and _reload_asked
        self._pass_lock = threading.Lock()  # one pass at a time: polls and digests take turns
        self._good: dict[str, Subscriber] = {}  # by file path: the last version that validated
        self._errors: dict[str, SubscriptionError] = {}
        self._mtimes: dict[str, float] = {}
        self.scheduler = Scheduler()

    # -- subscriptions ---------------------------------------------------------------------

    @property
    def subscribers(self) -> list[Subscriber]:
        return list(self._good.values())

    def load_subscriptions(self) -> None:
        """Read every file; a file that stops validating keeps its last good version."""
        paths = sorted(self.folder.glob("*.toml")) if self.folder.is_dir() else []
        seen = set()
        for path in paths:
            key = str(path)
            seen.add(key)
            try:
                self._good[key] = read_subscription(path)
                self._errors.pop(key, None)
            except SubscriptionError as error:
                if key not in self._errors or str(self._errors[key]) != str(error):
                    kept = " (its last good version keeps working)" if key in self._good else ""
                    log.error("subscription file broken%s: %s", kept, error)
                self._errors[key] = error
        for gone in set(self._good) - seen:
            log.warning("subscription file removed: %s", gone)
            del self._good[gone]
        for gone in set(self._errors) - seen:
            del self._errors[gone]
        self._mtimes = self._file_stamps()
        log.info("subscriptions: %d valid, %d invalid", len(self._good), len(self._errors))

    def _file_stamps(self) -> dict[str, float]:
        if not self.folder.is_dir():
            return {}
        return {str(p): p.stat().st_mtime_ns for p in self.folder.glob("*.toml")}

    def _record_next_runs(self) -> None:
        with open_store(self.db_path) as store:
            for name in self.scheduler.job_names():
                store.record_job(name, next_run_at=self.scheduler.next_run(name))

    def reload(self) -> None:
        """Reload the subscription files and reschedule the digests."""
        self.load_subscriptions()
        self._schedule_digests()
        self._record_next_runs()
        kept = len(set(self._good) & set(self._errors))
        log.warning(
            "reloaded subscriptions: %d in use (%d from a last good version), %d invalid files",
            len(self._good),
            kept,
            len(self._errors),
        )

    # -- passes ------------------------------------------------------------------------------

    def _fetch(self, store) -> str:
        if self.offline:
            _, stats = import_files(store, [bundled_capture()])
            return f"offline: {stats.seen} papers from the bundled capture, {stats.new} new"
        settings = self.settings
        with make_client(settings) as client:
            outcome = poll(store, client, settings, Listing("latest"))  # raises SourceError
            today = self.clock().date()
            extra = [
                Listing("date", (today - timedelta(days=n)).isoformat())
                for n in range(1, 1 + settings["poll.refresh_days"])
            ]
            searches = sorted(
                {search_text(w.query) for s in self.subscribers for w in s.watches if w.search} - {""}
            )
            extra += [Listing("search", text) for text in searches[: settings["poll.max_searches"]]]
            for listing in extra:  # refreshes and searches: a failure is recorded, not fatal
                try:
                    poll(store, client, settings, listing)
                except SourceError as error:
                    log.warning("%s: %s", listing.key, error)
        return f"fetched {len(outcome.result.papers)} papers, {outcome.stats.new} new"

    def run_pass(self, name: str, fetch: bool, only: str | None = None) -> None:
        """One pass: fetch (for polls), then every due digest and alert, then sends and retries."""
        with self._pass_lock:
            if self.stopping.is_set():
                return
            started = self.clock()
            people = self.subscribers
            targets = [s for s in people if only is None or s.id == only]
            with open_store(self.db_path) as store:
                store.record_job(name, started_at=started)
                senders = make_senders(self.settings, people)
                status = "ok"
                try:
                    report = run_once(
                        store,
                        self.settings,
                        targets,
                        fetch=(lambda: self._fetch(store)) if fetch else (lambda: "no fetch"),
                        senders=senders,
                        clock=self.clock,
                        should_stop=self.stopping.is_set,
                        subscription_errors=tuple(self._errors.values()),
                        everyone=people,
                    )
                    if report.source_error is not None:
                        status = f"fetch failed: {report.source_error}"
                    elif report.troubled:
                        status = "some sends failed"
                    if fetch:
                        log.info("%s", report.fetched)
                except BotError as error:
                    status = f"error: {error}"
                    log.error("%s: %s", name, error)
                except Exception:  # a bug: log it with its traceback, keep the daemon alive
                    status = "crashed (see the log)"
                    log.exception("%s crashed", name)
                finally:
                    for sender in senders.values():
                        sender.close()
                store.record_job(
                    name, finished_at=self.clock(), status=status, next_run_at=self.scheduler.next_run(name)
                )

    def _schedule_digests(self) -> None:
        wanted = {}
        for subscriber in self.subscribers:
            if subscriber.schedule.enabled and not subscriber.paused:
                wanted[f"digest {subscriber.id}"] = subscriber
        for name in self.scheduler.job_names(prefix="digest "):
            if name not in wanted:
                self.scheduler.remove(name)
        for name, subscriber in wanted.items():
            self.scheduler.add_schedule(
                name, subscriber.schedule, subscriber.timezone, self.run_pass, (name, False, subscriber.id)
            )

    # -- running -------------------------------------------------------------------------------

    def start(self) -> None:
        """Load, catch up, and start the jobs (in background threads)."""
        self.load_subscriptions()
        settings = self.settings
        self.scheduler.add_interval(
            "poll",
            minutes=settings["poll.interval_minutes"],
            jitter=settings["poll.jitter_seconds"],
            func=self.run_pass,
            args=("poll", True),
        )
        self._schedule_digests()
        self.scheduler.start()
        self._record_next_runs()
        log.warning(
            "paperbot started: %d subscribers, polling every %d minutes",
            len(self._good),
            settings["poll.interval_minutes"],
        )
        # Catch up at once: poll, and send what came due while paperbot was down.
        self.run_pass("poll", True)

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT; SIGHUP reloads. Call from the main thread."""

        def ask_stop(*_):
            self.stopping.set()
            self._wake.set()

        def ask_reload(*_):
            self._reload_asked.set()
            self._wake.set()

        signal.signal(signal.SIGTERM, ask_stop)
        signal.signal(signal.SIGINT, ask_stop)
        signal.signal(signal.SIGHUP, ask_reload)
        self.start()
        while not self.stopping.is_set():
            self._wake.wait(self.check_files_every)
            self._wake.clear()
            if self.stopping.is_set():
                break
            if self._reload_asked.is_set() or self._file_stamps() != self._mtimes:
                self._reload_asked.clear()
                self.reload()
        self.stop()

    def stop(self) -> None:
        """Finish the message in flight and stop the jobs."""
        self.stopping.set()
        log.warning("stopping: finishing the message in flight")
        self.scheduler.shutdown()
        log.warning("paperbot stopped")
