"""The `paperbot` command line. Each command's docstring is its --help."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from datetime import UTC, date, datetime
from pathlib import Path

import click

from bot import __version__
from bot.config import describe_settings, load_settings
from bot.deliver import Outcome, Skip
from bot.errors import BotError
from bot.fetch import parse_listing
from bot.pipeline import (
    Made,
    bundled_capture,
    import_files,
    make_client,
    make_senders,
    match_days,
    poll,
    preview_digest,
    run_once,
)
from bot.pipeline import backtest as run_backtest
from bot.store import open_store
from bot.subscriptions import load_subscriptions

log = logging.getLogger("bot")

STOPPED = 128 + signal.SIGTERM  # `run --once`'s exit status when SIGTERM stopped it (143)


class Context:
    """What every command needs: settings, and the store opened on demand."""

    def __init__(self, config: str | None, db: str | None, subscriptions: str = "./subscriptions"):
        self.subscriptions_dir = subscriptions
        overrides = {"database.path": db} if db else {}
        self.settings = load_settings(config, overrides=overrides)
        self.db_path = self.settings["database.path"]
        self._store = None
        self._subscriptions = None

    @property
    def store(self):
        if self._store is None:
            self._store = open_store(self.db_path)
        return self._store

    @property
    def subscriptions(self):
        """The subscriptions folder, read once; broken files are logged and skipped."""
        if self._subscriptions is None:
            self._subscriptions = load_subscriptions(self.subscriptions_dir)
            for error in self._subscriptions.errors:
                log.error("skipping a subscription: %s", error)
        return self._subscriptions


class BotGroup(click.Group):
    """Turns a BotError into one clear line and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BotError as error:
            click.echo(f"paperbot: {error}", err=True)
            sys.exit(error.exit_code)


def _day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date: write YYYY-MM-DD", param_hint=option) from None


@click.group(cls=BotGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="paperbot")
@click.option("--db", metavar="PATH", help="SQLite database (env PAPERBOT_DB; default ./paperbot.db).")
@click.option(
    "--config",
    metavar="PATH",
    help="Settings file (env PAPERBOT_CONFIG; default ./paperbot.toml if present).",
)
@click.option(
    "--subscriptions",
    metavar="DIR",
    envvar="PAPERBOT_SUBSCRIPTIONS",
    default="./subscriptions",
    help="Folder of subscription files (env PAPERBOT_SUBSCRIPTIONS; default ./subscriptions).",
)
@click.option("-v", "--verbose", count=True, help="Say more: -v for each step, -vv for debugging.")
@click.pass_context
def main(ctx, db, config, subscriptions, verbose):
    """paperbot: alerts for trending ML papers from Hugging Face."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        ctx.obj = Context(config, db, subscriptions)
    except BotError as error:
        click.echo(f"paperbot: {error}", err=True)
        sys.exit(error.exit_code)


@main.command()
@click.option("--date", "date_", metavar="YYYY-MM-DD", help="One day's papers.")
@click.option("--week", metavar="YYYY-Www", help="One ISO week's papers, e.g. 2026-W21.")
@click.option("--month", metavar="YYYY-MM", help="One month's papers.")
@click.option("--trending", is_flag=True, help="The trending list.")
@click.option("--search", metavar="TEXT", help="Hugging Face's keyword search.")
@click.option(
    "--source",
    type=click.Choice(["api", "page"]),
    default="api",
    show_default=True,
    help="Read the JSON API or the HTML page; the page is the fallback when the API fails.",
)
@click.option("--no-fallback", is_flag=True, help="Do not fall back to the page when the API fails.")
@click.pass_obj
def fetch(obj, date_, week, month, trending, search, source, no_fallback):
    """Poll Hugging Face and store what it lists (default: the latest day)."""
    try:
        listing = parse_listing(date_, week, month, trending, search)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    with make_client(obj.settings) as client:
        outcome = poll(obj.store, client, obj.settings, listing, source=source, fallback=not no_fallback)
    result, stats = outcome.result, outcome.stats
    if result.not_modified:
        click.echo(f"{listing.key}: not modified since the last fetch")
    elif not result.papers:
        click.echo(f"{listing.key}: Hugging Face lists no papers (nothing stored)")
    else:
        click.echo(
            f"{listing.key}: {len(result.papers)} papers from the {result.source}, "
            f"{stats.new} new, {stats.updated} updated"
        )


@main.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.pass_obj
def import_(obj, files):
    """Store papers from local captures: API JSON, a saved page, or JSON lines (.gz too).

    Every file is read and checked before anything is stored; importing twice changes nothing.
    """
    listings, stats = import_files(obj.store, list(files))
    click.echo(
        f"imported {listings} listings, {stats.seen} papers: {stats.new} new, "
        f"{stats.updated} updated, {stats.sightings} new sightings"
    )


@main.command()
@click.option("--since", metavar="YYYY-MM-DD", help="Featured on or after this day.")
@click.option("--until", metavar="YYYY-MM-DD", help="Featured on or before this day.")
@click.option("--search", metavar="TEXT", help="Full-text search of title, abstract, authors, keywords.")
@click.option("--limit", type=int, default=None, help="At most this many papers.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def papers(obj, since, until, search, limit, as_json):
    """List stored papers, newest first."""
    found = obj.store.papers(
        since=_day(since, "--since"), until=_day(until, "--until"), search=search, limit=limit
    )
    for paper in found:
        if as_json:
            click.echo(json.dumps(_paper_json(paper), ensure_ascii=False))
        else:
            day = paper.featured_on.isoformat() if paper.featured_on else "          "
            click.echo(f"{day}  {paper.id:<12} {paper.upvotes or 0:>4}▲  {paper.title}")
    if not as_json:
        click.echo(f"{len(found)} paper{'' if len(found) == 1 else 's'}", err=True)


def _paper_json(paper) -> dict:
    data = {name: getattr(paper, name) for name in paper.__slots__}
    data["authors"] = list(paper.authors)
    data["ai_keywords"] = list(paper.ai_keywords)
    data["published_at"] = paper.published_at.isoformat() if paper.published_at else None
    data["featured_on"] = paper.featured_on.isoformat() if paper.featured_on else None
    data["url"] = paper.hf_url
    return data


def _find_subscriber(obj, name: str):
    loaded = obj.subscriptions
    for subscriber in loaded.subscribers:
        if name in (subscriber.id, subscriber.name) or name.casefold() == subscriber.name.casefold():
            return subscriber
    known = ", ".join(s.id for s in loaded.subscribers) or "none"
    broken = [e for e in loaded.errors if name in e.path]
    hint = f"; its file is invalid: {broken[0]}" if broken else f" (valid subscribers: {known})"
    raise click.BadParameter(f"no subscriber {name!r} in {obj.subscriptions_dir}{hint}", param_hint="NAME")


def _hits_text(match) -> str:
    """The matched words, each with the fields it was found in: "rl (title, abstract)"."""
    order = {"title": 0, "author": 1, "org": 2, "keyword": 3, "abstract": 4}
    fields: dict[str, set[str]] = {}
    for hit in match.hits:
        fields.setdefault(hit.term, set()).add(hit.field)
    words = [f"{term} ({', '.join(sorted(found, key=order.get))})" for term, found in fields.items()]
    return "; ".join([", ".join(words)] * bool(words) + list(match.reasons))


def _match_json(day, match) -> dict:
    return {
        "day": day.isoformat(),
        "subscriber": match.subscriber_id,
        "watches": list(match.watches),
        "paper": match.paper.id,
        "title": match.paper.title,
        "score": match.score,
        "terms": [{"field": h.field, "term": h.term, "start": h.start, "end": h.end} for h in match.hits],
        "reasons": list(match.reasons),
    }


@main.command()
@click.option("--since", metavar="YYYY-MM-DD", help="First day (UTC) of papers to match; default the latest.")
@click.option("--until", metavar="YYYY-MM-DD", help="Last day (UTC), inclusive; default the latest.")
@click.option("--subscriber", "name", metavar="NAME", help="Only this subscriber (file name or name).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def match(obj, since, until, name, as_json):
    """Match stored papers against the watches: who would get which paper, and why.

    Each day's new papers are matched against every watch, and papers seen before that
    crossed a `rising` mark on that day against the rising watches.
    """
    latest = obj.store.latest_day()
    until_day = _day(until, "--until") or latest
    since_day = _day(since, "--since") or until_day
    if until_day is None:
        click.echo("no papers stored yet: run `paperbot fetch` or `paperbot import`", err=True)
        return
    if since_day > until_day:
        raise click.BadParameter("--since is after --until", param_hint="--since")
    people = [_find_subscriber(obj, name)] if name else list(obj.subscriptions.subscribers)
    days = match_days(obj.store, people, since_day, until_day)
    total = 0
    for result in days:
        for found in result.matches:
            total += 1
            if as_json:
                click.echo(json.dumps(_match_json(result.day, found), ensure_ascii=False))
                continue
            paper = found.paper
            click.echo(
                f"{result.day}  {found.subscriber_id:<16} {found.score:5.1f}  {paper.id:<11} {paper.title}"
            )
            click.echo(f"{'':12}{', '.join(found.watches)}: {_hits_text(found)}")
    papers_seen = sum(r.papers for r in days)
    span = f"{since_day}" if since_day == until_day else f"{since_day} to {until_day}"
    click.echo(
        f"{total} matches among {papers_seen} papers first seen {span}, {len(people)} subscribers", err=True
    )


@main.command()
@click.argument("name")
@click.option(
    "--days", type=click.IntRange(1, 3660), default=30, show_default=True, help="Days to look back."
)
@click.pass_obj
def backtest(obj, name, days):
    """What NAME's watches would have sent over the last stored days, per day and in total.

    Tune a watch before it goes live: a watch matching dozens of papers a day is too wide,
    one matching nothing in a month may be too narrow (or misspelled).
    """
    subscriber = _find_subscriber(obj, name)
    results = run_backtest(obj.store, subscriber, days)
    if not results:
        click.echo("no papers stored yet: run `paperbot fetch` or `paperbot import`", err=True)
        return
    watches = [w.name for w in subscriber.watches]
    click.echo(f"{subscriber.id}: {len(watches)} watches over {results[0].day} to {results[-1].day}")
    for number, watch in enumerate(subscriber.watches, 1):
        click.echo(f"  W{number} = {watch.name}: {watch.query_text or '(thresholds only)'}")
    columns = [f"W{n}" for n in range(1, len(watches) + 1)]
    click.echo("day         papers " + " ".join(f"{c:>4}" for c in columns) + "  digest")
    totals = [0] * len(watches)
    sent = cut_days = 0
    best: dict[str, list] = {w: [] for w in watches}
    for result in results:
        counts = [0] * len(watches)
        for found in result.matches:
            for watch in found.watches:
                counts[watches.index(watch)] += 1
                best[watch].append(found)
        digest = min(len(result.matches), subscriber.max_papers)
        cut_days += len(result.matches) > subscriber.max_papers
        sent += digest
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        cells = " ".join(f"{c:>4}" for c in counts)
        click.echo(f"{result.day}  {result.papers:>6} {cells}  {digest:>6}")
    papers_total = sum(r.papers for r in results)
    click.echo(f"{'total':<10}  {papers_total:>6} " + " ".join(f"{c:>4}" for c in totals) + f"  {sent:>6}")
    if cut_days:
        click.echo(f"on {cut_days} days the digest would be cut at max_papers = {subscriber.max_papers}")
    for number, watch in enumerate(watches, 1):
        top = sorted(best[watch], key=lambda m: -m.score)[:3]
        if not top:
            click.echo(f"W{number} {watch}: nothing in {len(results)} days")
            continue
        click.echo(f"W{number} {watch}, best matches:")
        for found in top:
            click.echo(f"    {found.paper.id:<11} {found.paper.title[:70]}  ({_hits_text(found)})")


@main.command()
@click.pass_obj
def status(obj):
    """Show each source's last fetch, its result, and what is stored."""
    store = obj.store
    click.echo(f"database {store.path}: {store.count_papers()} papers, {store.count_sightings()} sightings")
    health = store.fetch_health()
    if not health:
        click.echo("no fetches yet: run `paperbot fetch`")
    for entry in health:
        last = entry["last"]
        line = f"{entry['source']:<5} {entry['listing']:<22} last {last['started_at'][:19]}Z {last['status']}"
        if last["status"] in ("ok", "empty"):
            line += f" ({last['count']} papers, {last['new_count']} new)"
        if entry["errors_in_a_row"]:
            line += f"; {entry['errors_in_a_row']} errors in a row: {last['error']}"
            line += f"; last good {entry['last_good'][:19] + 'Z' if entry['last_good'] else 'never'}"
        click.echo(line)
    for job in store.jobs():
        last = (job["last_started_at"] or "never")[:19]
        nxt = (job["next_run_at"] or "-")[:19]
        click.echo(f"job {job['name']:<22} last {last} {job['last_status'] or 'running'}; next {nxt}")
    counts = store.delivery_counts()
    if counts:
        order = ("sent", "pending", "sending", "new", "failed", "skipped")
        click.echo("deliveries: " + ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s)))
    for delivery in store.troubled_deliveries():
        state = {"pending": "retrying", "new": "unmade"}.get(delivery.state, delivery.state)
        click.echo(
            f"  {state:<8} {delivery.subscriber_id}/{delivery.channel} {delivery.period}"
            f" (attempt {delivery.attempts}): {delivery.last_error or 'in progress'}"
        )
    for row in store.suppressions():
        who = f"{row['subscriber_id']}/{row['channel']}"
        click.echo(f"suppressed {who} since {row['created_at'][:10]}: {row['reason']}")
    if Path(obj.subscriptions_dir).is_dir():
        for error in load_subscriptions(obj.subscriptions_dir).errors:
            click.echo(f"invalid subscription {error}")


@main.command()
@click.pass_obj
def config(obj):
    """Print the effective settings (secrets masked) and where each came from."""
    for key, shown, origin in describe_settings(obj.settings):
        click.echo(f"{key:<24} = {shown:<32} ({origin})")


def _subscribers_for_run(obj) -> list:
    if not Path(obj.subscriptions_dir).is_dir():
        log.warning("no subscriptions folder %s: nothing to deliver", obj.subscriptions_dir)
        return []
    return list(obj.subscriptions.subscribers)


@main.command()
@click.option("--once", is_flag=True, help="Run every due step once, then exit (for cron).")
@click.option(
    "--offline", is_flag=True, help="Use the real capture bundled with paperbot instead of the network."
)
@click.option("--dry-run", is_flag=True, help="Render and report every due digest; send and record nothing.")
@click.option(
    "--backfill",
    type=click.IntRange(1, 366),
    default=1,
    show_default=True,
    help="Days a subscriber's first digest covers.",
)
@click.pass_obj
def run(obj, once, offline, dry_run, backfill):
    """Poll, match and deliver: as a daemon, or with --once one pass then exit (for cron).

    The daemon polls every poll.interval_minutes, sends each subscriber's digest on their
    schedule in their time zone, catches up after downtime (schedule.grace_hours), reloads
    subscriptions on SIGHUP or when a file changes, and stops cleanly on SIGTERM.

    Each subscriber's digest is due at the latest time their schedule fired; one is made
    per subscriber, channel and period, and a paper never reaches the same channel twice.
    """
    if not once:
        if dry_run:
            raise click.UsageError("--dry-run goes with --once")
        from bot.daemon import Daemon

        Daemon(obj.settings, obj.subscriptions_dir, offline=offline).serve_forever()
        return
    store = obj.store

    # Once the poll is done, SIGTERM (`systemctl stop`, a timeout) finishes the message in
    # flight, then stops: no digest is left claimed, and the next run sends the rest. Before,
    # it ends the run at once (a poll can wait on the network for minutes; nothing is claimed).
    stopping = threading.Event()
    previous = signal.getsignal(signal.SIGTERM)

    def fetch() -> str:
        try:
            if offline:
                _, stats = import_files(store, [bundled_capture()])
                return f"offline: stored {stats.seen} papers from the bundled capture, {stats.new} new"
            from bot.fetch import Listing

            with make_client(obj.settings) as client:
                outcome = poll(store, client, obj.settings, Listing("latest"))
            return f"fetched {len(outcome.result.papers)} papers, {outcome.stats.new} new"
        finally:
            signal.signal(signal.SIGTERM, lambda *_: stopping.set())

    people = _subscribers_for_run(obj)
    senders = make_senders(obj.settings, people)
    told_down: set[str] = set()
    try:
        report = run_once(
            store,
            obj.settings,
            people,
            fetch=fetch,
            senders=senders,
            dry_run=dry_run,
            backfill_days=backfill,
            should_stop=stopping.is_set,
            subscription_errors=obj.subscriptions.errors if Path(obj.subscriptions_dir).is_dir() else (),
            tell=lambda event: _say(event, senders, dry_run, told_down),
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        for sender in senders.values():
            sender.close()
    for error in report.errors:
        click.echo(f"error {error}", err=True)
    if stopping.is_set():
        click.echo("stopped by SIGTERM after the message in flight: the next run sends the rest", err=True)
        sys.exit(STOPPED)
    if report.source_error is not None:
        sys.exit(report.source_error.exit_code)
    if report.troubled:
        sys.exit(5)


def _say(event: str | Skip | Made | Outcome, senders: dict, dry_run: bool, told_down: set[str]) -> None:
    """One line of `run --once`'s output, as it happens (a run cut short has said what it did)."""
    if isinstance(event, str):
        click.echo(event)
    elif isinstance(event, Skip):
        click.echo(f"nothing for {event.subscriber_id}/{event.channel}: {event.reason}")
    elif isinstance(event, Made):
        plan = event.plan
        verb = "would send" if dry_run else "made"
        click.echo(f"{verb} {plan.subscriber.id}/{plan.channel.name} {plan.period.key}: {event.subject}")
    else:
        d = event.delivery
        where = f" to {senders[d.kind].path_for(d)}" if hasattr(senders[d.kind], "path_for") else ""
        detail = f": {event.detail}" if event.detail else ""
        count = f"{len(d.paper_ids)} paper{'' if len(d.paper_ids) == 1 else 's'}"
        click.echo(f"{event.status} {d.subscriber_id}/{d.channel} {d.period} ({count}){where}{detail}")
        if event.status == "down" and d.kind not in told_down:
            told_down.add(d.kind)
            click.echo(f"no {d.kind} goes this run: those due wait, pending, and go once this is fixed")


@main.command()
@click.argument("name")
@click.option(
    "--out", metavar="DIR", default="./preview", show_default=True, help="Where to write the files."
)
@click.option("--open", "open_", is_flag=True, help="Open the HTML in a browser.")
@click.pass_obj
def preview(obj, name, out, open_):
    """Write the HTML and text of the digest NAME would get now (nothing is sent or recorded)."""
    subscriber = _find_subscriber(obj, name)
    now = datetime.now(UTC)
    html, text, subject = preview_digest(obj.store, obj.settings, subscriber, now)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    html_path, text_path = folder / f"{subscriber.id}.html", folder / f"{subscriber.id}.txt"
    html_path.write_text(html, encoding="utf-8")
    text_path.write_text(text, encoding="utf-8")
    click.echo(f"{subject}\n{html_path}\n{text_path}")
    if open_:
        import webbrowser

        webbrowser.open(html_path.resolve().as_uri())


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port to listen on.")
@click.pass_obj
def serve(obj, host, port):
    """Serve the web app: subscribe, confirm, unsubscribe, manage watches, feeds (until Ctrl-C)."""
    from bot.web import serve as serve_web  # starlette and uvicorn load only for this command

    serve_web(obj.settings, obj.db_path, obj.subscriptions_dir, host=host, port=port)


@main.group()
def subscribers():
    """Check and list the subscription files."""


@subscribers.command("check")
@click.pass_obj
def subscribers_check(obj):
    """Check every subscription file; each error names the file, the key and the fix."""
    loaded = load_subscriptions(obj.subscriptions_dir)
    for error in loaded.errors:
        click.echo(f"✗ {error}")
    for subscriber in loaded.subscribers:
        click.echo(f"✓ {subscriber.path}: {len(subscriber.watches)} watches")
    click.echo(f"{len(loaded.subscribers)} valid, {len(loaded.errors)} invalid")
    if loaded.errors:
        sys.exit(2)


@subscribers.command("list")
@click.pass_obj
def subscribers_list(obj):
    """Show who gets what: each subscriber's schedule, channels and watches."""
    loaded = obj.subscriptions
    for sub in loaded.subscribers:
        channels = ", ".join(f"{c.name} ({c.kind})" for c in sub.channels) or "no channels"
        state = " [paused]" if sub.paused else ""
        who = f"{sub.id}{state}: {sub.name} <{sub.email or '-'}>"
        click.echo(f"{who}, {sub.schedule.text} {sub.timezone}; {channels}")
        for watch in sub.watches:
            extras = [
                f"{k} {v}"
                for k, v in (
                    ("min upvotes", watch.min_upvotes),
                    ("min stars", watch.min_stars),
                    ("rising at", watch.rising),
                )
                if v
            ]
            if watch.has_code:
                extras.append("has code")
            if watch.delivery == "instant":
                extras.append("instant")
            if watch.channels:
                extras.append("to " + ", ".join(watch.channels))
            if watch.search:
                extras.append("also HF search")
            tail = f" [{'; '.join(extras)}]" if extras else ""
            click.echo(f"  - {watch.name}: {watch.query_text or '(any paper)'}{tail}")
    if loaded.errors:
        count = len(loaded.errors)
        files = "file" if count == 1 else "files"
        click.echo(f"{count} invalid {files} skipped: run `paperbot subscribers check`", err=True)
