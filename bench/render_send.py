"""How fast paperbot renders personalized digests (issue 4 goal: 2,000/s on one core), and how fast its
whole path (run_once: plan, ledger, render, SMTP) delivers them into Postfix's smtp-sink, as it runs (a helper
process renders) and rendering alone in one process, against raw smtplib sending the same bytes over one
connection (goal: 80% of it) and one connection per message, in one run.
Needs smtp-sink (Debian: apt-get install postfix); the bench starts and stops it. Run by hand, not by pytest:
    python bench/render_send.py [PATH] [--subscribers 2000] [--days 7]   (PATH: papers; default the history)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from bot.channels.email import SmtpSender
from bot.config import load_settings
from bot.deliver import DigestPlan, forget_planning, plan_digests
from bot.message import MAX_LINE, MessageSettings, forget_encodings
from bot.models import Paper, Subscriber
from bot.pipeline import frozen_objects, import_files, make_digest, message_settings, render_plan, run_once
from bot.render import forget_cards, prepare_cards, render_digest
from bot.store import Delivery, open_store
from bot.subscriptions import load_subscriptions

REPO = Path(__file__).resolve().parents[1]
HISTORY = REPO.parent / "shared" / "data" / "hf_daily_papers_2024-05-27_2026-03-31.jsonl.gz"
GOAL_RENDERS = 2_000.0
GOAL_RATIO = 0.80
HOST = "127.0.0.1"
SENDER = "digests@paperbot.example.org"
ZONES = ("UTC", "Europe/Berlin", "America/Los_Angeles", "Asia/Tokyo", "America/Sao_Paulo", "Asia/Kolkata")
INSTALL = (
    "smtp-sink (Postfix's test SMTP server) is not installed. On Debian or Ubuntu:\n"
    "    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y postfix\n"
    "puts it at /usr/sbin/smtp-sink (choose 'No configuration' if asked); or give --smtp-sink PATH."
)
BENCH_ENV = {
    "PAPERBOT_MAIL_FROM": f"paperbot <{SENDER}>",
    "PAPERBOT_WEB_BASE_URL": "https://paperbot.example.org",
    "PAPERBOT_WEB_SECRET": "bench-secret-not-for-real-use",
}
# Names a watch can hold without quoting trouble in TOML or in the query language.
_PLAIN = re.compile(r"^[A-Za-z][A-Za-z0-9 .-]*[A-Za-z0-9]$")


def timed(work) -> tuple[float, object]:
    """Seconds taken by work(), and what it returned."""
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def line(label: str, value: str) -> None:
    print(f"  {label:<52} {value}")


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


# -- made-up subscribers over real papers ------------------------------------------------------


def rare_hooks(papers: Sequence[Paper]) -> list[list[tuple[str, str]]]:
    """For each paper, its keywords, authors and organization that at most 2 papers of the pool
    share: a watch on one catches that paper and hardly any other, so digest sizes stay controlled."""
    per_paper = []
    for paper in papers:
        hooks = {("keyword", k.lower()) for k in paper.ai_keywords if _PLAIN.match(k)}
        hooks |= {("author", a) for a in paper.authors if _PLAIN.match(a) and " " in a}
        if paper.organization and _PLAIN.match(paper.organization):
            hooks.add(("org", paper.organization))
        per_paper.append(hooks)
    counts = Counter(hook for hooks in per_paper for hook in hooks)
    return [sorted(h for h in hooks if counts[h] <= 2) for hooks in per_paper]


def toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in values) + "]"


def subscription_text(number: int, hooks: list[tuple[str, str]], rng: random.Random, now: datetime) -> str:
    """One subscriber file: a random zone, a daily schedule that fired a few minutes before `now`
    there, and watches made of the hooks (keywords as a list and as a query, authors, orgs)."""
    zone = rng.choice(ZONES)
    fired = (now - timedelta(minutes=rng.randint(5, 55))).astimezone(ZoneInfo(zone))
    lines = [
        f'name = "Reader {number}"',
        f'email = "reader{number:05d}@example.org"',
        f'timezone = "{zone}"',
        f'schedule = "daily {fired:%H:%M}"',
        "max_papers = 12",
    ]
    found: dict[str, list[str]] = {"keyword": [], "author": [], "org": []}
    for kind, value in hooks:
        found[kind].append(value)
    half = (len(found["keyword"]) + 1) // 2
    listed, queried = found["keyword"][:half], found["keyword"][half:]
    watches = []
    if listed:
        watches.append(("topics", f"keywords = {toml_list(listed)}"))
    if queried:
        query = " OR ".join(f'"{k}"' for k in queried)
        watches.append(("phrases", f"query = {json.dumps(query)}"))
    if found["author"]:
        watches.append(("people", f"authors = {toml_list(found['author'])}"))
    if found["org"]:
        watches.append(("labs", f"orgs = {toml_list(found['org'])}"))
    if rng.random() < 0.3:  # someone following what is popular in a broad field
        watches.append(("popular agents", 'query = "agent*"\nmin_upvotes = 40'))
    for name, criteria in watches:
        lines += ["", "[[watch]]", f'name = "{name}"', criteria]
    return "\n".join(lines) + "\n"


def make_subscribers(
    folder: Path, papers: Sequence[Paper], count: int, rng: random.Random, now: datetime
) -> list[Subscriber]:
    """`count` subscription files, each watching 5 to 9 papers of the pool through rare hooks."""
    hooks = rare_hooks(papers)
    usable = [i for i, found in enumerate(hooks) if found]
    folder.mkdir()
    for number in range(1, count + 1):
        targets = rng.sample(usable, min(len(usable), rng.randint(5, 9)))
        chosen = list(dict.fromkeys(rng.choice(hooks[i]) for i in targets))
        text = subscription_text(number, chosen, rng, now)
        (folder / f"reader{number:05d}.toml").write_text(text, encoding="utf-8")
    loaded = load_subscriptions(folder)
    if loaded.errors:
        raise SystemExit(f"made-up subscription files are invalid, e.g.: {loaded.errors[0]}")
    return list(loaded.subscribers)


# -- smtp-sink -----------------------------------------------------------------------------


def find_smtp_sink(given: str | None) -> str | None:
    for candidate in (given, shutil.which("smtp-sink"), "/usr/sbin/smtp-sink"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class SmtpSink:
    """Postfix's smtp-sink on a free loopback port, counting what it takes (-c) into a file."""

    def __init__(self, program: str, folder: Path):
        self.program, self.counters = program, folder / "smtp-sink.out"
        self.port = free_port()
        command = [program, "-c", f"{HOST}:{self.port}", "1000"]
        if os.geteuid() == 0:  # smtp-sink refuses to run as root without a user to switch to
            command[1:1] = ["-u", "nobody"]
        with open(self.counters, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    output = self.counters.read_text(errors="replace")
                    raise SystemExit(f"smtp-sink did not start: {output}") from None
                time.sleep(0.05)

    def cpu(self) -> float:
        """CPU seconds it has used so far (from /proc; 0.0 where there is none)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def received(self) -> int:
        """Messages taken so far (its last -c counter line)."""
        found = re.findall(rb"mesg=(\d+)", self.counters.read_bytes())
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- what is measured ------------------------------------------------------------------------


class Clocks:
    """Wall and CPU seconds since it was made."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        lap = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return lap


def render_all(
    plans: Sequence[DigestPlan], mail: MessageSettings, cold: bool = True
) -> tuple[list[bytes], float, float]:
    """Each planned digest rendered to the bytes of its email by bot.pipeline.render_plan, as run_once
    does (signed links, render_digest, the message); with the wall and CPU seconds taken. Cold: no
    card rendered or encoded yet, as at the start of each `paperbot run --once`. As in run_once, what exists
    before rendering (the plans, their papers) is frozen out of the cycle collector's passes
    (bot.pipeline.frozen_objects)."""
    if cold:
        forget_cards()
        forget_encodings()  # the cards' quoted-printable too: equal cards made again would find it
    with frozen_objects():
        clocks = Clocks()
        prepare_cards(m for p in plans for m in p.matches[: p.subscriber.max_papers])  # as run_once does
        shown = [p.matches[: p.subscriber.max_papers] for p in plans]
        messages = [render_plan(p, s, len(p.matches), mail)[2] for p, s in zip(plans, shown, strict=True)]
        wall, cpu = clocks.lap()
    return messages, wall, cpu


def render_digests(plans: Sequence[DigestPlan], mail: MessageSettings) -> float:
    """CPU seconds render_digest alone takes over the same digests, built beforehand, cold (its
    cards prepared at once first, as render_all does)."""
    digests = [make_digest(p, p.matches[: p.subscriber.max_papers], len(p.matches), mail) for p in plans]
    forget_cards()
    with frozen_objects():  # as render_all
        clocks = Clocks()
        prepare_cards(m for digest in digests for m in digest.matches)
        for digest in digests:
            render_digest(digest)
        return clocks.lap()[1]


def on_one_core(work):
    """work() with the process pinned to one CPU (Linux), so 'per second' means one core."""
    if not hasattr(os, "sched_setaffinity"):
        return work()
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        return work()
    finally:
        os.sched_setaffinity(0, allowed)


def send_one_connection(port: int, messages: Sequence[tuple[str, bytes]]) -> None:
    with smtplib.SMTP(HOST, port) as smtp:
        for to, data in messages:
            smtp.sendmail(SENDER, [to], data)


def send_connection_each(port: int, messages: Sequence[tuple[str, bytes]]) -> None:
    for to, data in messages:
        with smtplib.SMTP(HOST, port) as smtp:
            smtp.sendmail(SENDER, [to], data)


class TimedSender:
    """paperbot's SmtpSender, noting when the first send began and adding up the time inside send()."""

    def __init__(self, sender: SmtpSender):
        self.sender, self.seconds, self.first = sender, 0.0, None

    def expect(self, delivery: Delivery) -> None:
        self.sender.expect(delivery)

    def send(self, delivery: Delivery) -> None:
        started = time.perf_counter()
        if self.first is None:
            self.first = started
        try:
            self.sender.send(delivery)
        finally:
            self.seconds += time.perf_counter() - started

    def close(self) -> None:
        self.sender.close()


@dataclass(frozen=True)
class WholeRun:
    """One run_once into smtp-sink: how many digests it sent, whether the ledger holds for each the
    very bytes expected of it, and when."""

    sent: int
    same: bool
    started: float
    first: float  # its first send began
    seconds: float
    cpu: float  # CPU seconds of this process
    helper_cpu: float  # of its helper process
    sink_cpu: float  # of smtp-sink, meanwhile
    in_send: float  # seconds inside SmtpSender.send


def whole_path(
    settings,
    subscribers,
    template: Path,
    ledger: Path,
    sink: SmtpSink,
    now: datetime,
    days: int,
    expected: dict[str, bytes],
) -> WholeRun:
    """run_once over a fresh ledger (a copy of `template`), cold (no card made), into smtp-sink;
    `expected`: each subscriber's message, as rendered beforehand. What it sent is compared with
    those once it is over and not kept: the next run is not timed holding it (64 MB), as no run
    of paperbot holds an earlier run's messages."""
    shutil.copyfile(template, ledger)
    with open_store(ledger) as store:
        sender = TimedSender(SmtpSender(host=HOST, port=sink.port, sender=SENDER, security="none"))
        forget_cards()  # cold, as a fresh `paperbot run --once` (and its helper, forked from here)
        forget_encodings()
        forget_planning()  # the inputs' planning, above, kept its schedules and folded words
        started, cpu = time.perf_counter(), time.process_time()
        children, sink_cpu = _children_cpu(), sink.cpu()
        report = run_once(
            store,
            settings,
            subscribers,
            fetch=lambda: "papers already stored",
            senders={"email": sender},
            clock=lambda: now,
            backfill_days=days,
        )
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        children, sink_cpu = _children_cpu() - children, sink.cpu() - sink_cpu  # the helper is reaped
        sender.close()
        sent = [o.delivery for o in report.outcomes if o.status == "sent"]
        same = len({d.subscriber_id for d in sent}) == len(sent) == len(expected) and all(
            store.stored_message(d.id) == expected.get(d.subscriber_id) for d in sent
        )
    first = sender.first or started + seconds
    return WholeRun(len(sent), same, started, first, seconds, cpu, children, sink_cpu, sender.seconds)


def _children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def line_check(messages: Sequence[bytes]) -> tuple[bool, int]:
    """Every line ends in CRLF (no bare CR or LF), and the longest line's length."""
    crlf = all(m.endswith(b"\r\n") and m.count(b"\n") == m.count(b"\r") == m.count(b"\r\n") for m in messages)
    return crlf, max(len(part) for m in messages for part in m.split(b"\r\n"))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", nargs="?", default=str(HISTORY), help="papers to import (any capture)")
    parser.add_argument("--subscribers", type=int, default=2_000, help="subscribers to make up")
    parser.add_argument("--days", type=int, default=7, help="the digests cover the last DAYS stored days")
    parser.add_argument(
        "--render-runs", type=int, default=2, help="render every digest N times, keep the best"
    )
    parser.add_argument("--smtp-sink", help="the smtp-sink program (default: on PATH or /usr/sbin)")
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()
    capture = Path(args.path)
    if not capture.exists():
        print(f"no capture at {capture}: give its path", file=sys.stderr)
        return 2
    program = find_smtp_sink(args.smtp_sink)
    if program is None:
        print(INSTALL, file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="paperbot-bench-"))
    try:
        return measure(args, capture, program, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, capture: Path, program: str, work: Path) -> int:
    """Make the inputs in `work`, measure, print; 0 when every check passed."""
    load_start = os.getloadavg()[0]
    print("paperbot render and send benchmark")
    line("papers from", str(capture))
    line("machine", f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    line("SMTP sink", f"{program} on {HOST}")

    # -- inputs (not timed against the goals) ---------------------------------------------
    settings = load_settings(None, environ=BENCH_ENV)
    template = work / "papers.db"
    with open_store(template) as store:
        import_seconds, (listings, stats) = timed(lambda: import_files(store, [str(capture)]))
        latest = store.latest_day()
        # 07:00 UTC the day after the latest stored day: every made-up schedule fired just before.
        now = datetime.combine(latest, datetime.min.time(), tzinfo=UTC) + timedelta(days=1, hours=7)
        pool = store.window(now - timedelta(days=args.days, hours=7), now).papers
    rng = random.Random(args.seed)
    made_seconds, subscribers = timed(
        lambda: make_subscribers(work / "subscriptions", pool, args.subscribers, rng, now)
    )
    with open_store(template) as store:
        mail = message_settings(settings, store)
        plans, skips = plan_digests(store, subscribers, now, backfill_days=args.days)
    count = len(plans)
    print("\ninputs")
    line("imported", f"{listings} listings, {stats.new:,} papers in {import_seconds:.1f} s")
    line(f"papers of the last {args.days} days (to {latest})", f"{len(pool)}")
    line(
        "subscribers (files made, then read)",
        f"{len(subscribers):,} in {made_seconds:.1f} s, {sum(len(s.watches) for s in subscribers):,} watches",
    )
    line("digests due at", f"{now:%Y-%m-%d %H:%M} UTC: {count:,} ({len(skips)} with nothing)")
    if not count:
        print("  no digest is due: nothing to measure", file=sys.stderr)
        return 1
    shown = [min(len(p.matches), p.subscriber.max_papers) for p in plans]
    line("papers per digest", f"mean {statistics.mean(shown):.1f}, min {min(shown)}, max {max(shown)}")

    # -- (1) rendering, one core --------------------------------------------------------------
    render_all(plans[:5], mail)  # compile the templates first
    messages, wall, cpu = [], 0.0, float("inf")
    for _ in range(args.render_runs):
        # The last run's bytes go first, as run_once lets each message go once it is stored:
        # holding every run's (some 64 MB each) would time the kernel handing out fresh pages.
        messages = []
        messages, run_wall, run_cpu = on_one_core(lambda: render_all(plans, mail))
        wall, cpu = (run_wall, run_cpu) if run_cpu < cpu else (wall, cpu)
    # Before render_digests, which forgets the cards: every card is still made here.
    warm_cpu = on_one_core(lambda: render_all(plans, mail, cold=False))[2]
    digest_cpu = on_one_core(lambda: render_digests(plans, mail))
    renders = count / cpu
    sizes = [len(m) for m in messages]
    crlf, longest = line_check(messages)
    print(f"\n(1) rendering planned digests, pinned to one core, best of {args.render_runs}")
    line(
        "render_plan: links, render_digest, email bytes",
        f"{int(renders):8,d} /CPU s  ({count / wall:,.0f}/s wall; {cpu * 1e3 / count:.2f} ms CPU each)",
    )
    line("  render_digest alone (Jinja, CSS inlining)", f"{digest_cpu * 1e3 / count:8.2f} ms each")
    line("  the rest (links, MIME, quoted-printable)", f"{(cpu - digest_cpu) * 1e3 / count:8.2f} ms each")
    cards = (cpu - warm_cpu) * 1e3 / count
    line(
        "render_plan again, every card already made",
        f"{count / warm_cpu:8,.0f} /CPU s  (so making the cards: {cards:.2f} ms a digest)",
    )
    line(
        "message size",
        f"mean {statistics.mean(sizes) / 1e3:.1f} KB, min {min(sizes) / 1e3:.1f}, max {max(sizes) / 1e3:.1f}",
    )
    line(
        "CRLF line ends; longest line", f"{'yes' if crlf else 'NO'}; {longest} characters (limit {MAX_LINE})"
    )

    # -- (2)-(4) sending into smtp-sink ------------------------------------------------------------
    by_subscriber = {p.subscriber.id: m for p, m in zip(plans, messages, strict=True)}
    outgoing = [(p.channel.target, m) for p, m in zip(plans, messages, strict=True)]
    sink = SmtpSink(program, work)
    try:
        one_before, _ = timed(lambda: send_one_connection(sink.port, outgoing))
        each_seconds, _ = timed(lambda: send_connection_each(sink.port, outgoing))
        # Best of two, as raw smtplib's figure is: one run before (2b), one after.
        helped_db = work / "helped.db"

        def whole_run(run_settings, ledger: Path) -> WholeRun:
            return whole_path(
                run_settings, subscribers, template, ledger, sink, now, args.days, by_subscriber
            )

        helped_runs = [whole_run(settings, helped_db)]
        alone_settings = load_settings(None, environ={**BENCH_ENV, "PAPERBOT_RUN_HELPER_FROM": "0"})
        alone = whole_run(alone_settings, work / "alone.db")
        helped_runs.append(whole_run(settings, helped_db))
        one_after, _ = timed(lambda: send_one_connection(sink.port, outgoing))
        time.sleep(0.2)  # let smtp-sink write its last counters
        received = sink.received()
    finally:
        sink.stop()
    one_seconds = min(one_before, one_after)
    raw = count / one_seconds
    helped = min(helped_runs, key=lambda run: run.seconds)
    whole = helped.sent / helped.seconds

    print("\n(2) paperbot's whole path: run_once (plan, ledger, render, SMTP), fresh ledger, into smtp-sink")
    for title, run in (
        (f"(2a) as it runs ({count:,} digests: a helper process renders), best of 2", helped),
        ("(2b) rendering alone in one process (run.helper_from = 0)", alone),
    ):
        print(f"  {title}")
        making = run.first - run.started
        sending = max(run.seconds - making, 1e-9)
        line(
            "  run_once, one SMTP connection",
            f"{run.sent / run.seconds:8,.0f} messages/s  ({run.seconds:.2f} s; {run.cpu:.2f} s CPU)",
        )
        busy = (run.cpu + run.helper_cpu + run.sink_cpu) / run.seconds
        line(
            "    CPU of its helper, of smtp-sink; cores busy",
            f"{run.helper_cpu:8.2f} s, {run.sink_cpu:.2f} s; {busy:.2f} of {os.cpu_count()}",
        )
        line("    until its first send", f"{making:8.2f} s")
        line(
            "    from then on: render, reserve, claim, send",
            f"{sending:8.2f} s  ({run.sent / sending:,.0f}/s)",
        )
        line(
            "      of which inside SmtpSender.send",
            f"{run.in_send:8.2f} s  ({run.sent / max(run.in_send, 1e-9):,.0f}/s)",
        )
    other = ", ".join(f"{run.sent / run.seconds:,.0f}" for run in helped_runs)
    line("  (2a) each run, before and after (2b)", f"{other} messages/s")
    line("  (2a) / (2b)", f"{alone.seconds / helped.seconds:8.2f}x as fast")
    print("\nraw smtplib, the same pre-rendered bytes")
    line(
        "(3) one connection for all, best of 2",
        f"{raw:8,.0f} messages/s  ({one_before:.2f} s before (2), {one_after:.2f} s after)",
    )
    line("(4) one connection per message", f"{count / each_seconds:8,.0f} messages/s  ({each_seconds:.2f} s)")

    expected = 6 * count
    print("\nchecks")
    runs = [(f"(2a) #{number}", run) for number, run in enumerate(helped_runs, 1)] + [("(2b)", alone)]
    for name, run in runs:
        line(
            f"run_once {name} sent every digest",
            f"{'yes' if run.sent == count else 'NO'} ({run.sent:,} of {count:,})",
        )
        line("  the very bytes raw smtplib sent", "yes" if run.same else "NO")
    line("smtp-sink took", f"{received:,} messages (expected {expected:,})")
    line("load average (1 min) at the start, at the end", f"{load_start:.2f}, {os.getloadavg()[0]:.2f}")

    print("\ngoals (issue 4)")
    line(
        "renders per CPU second, one core",
        # Cut, not rounded: 1,999.6 is not printed as the goal it misses.
        f"{int(renders):8,d}    (goal >= {GOAL_RENDERS:,.0f}: {verdict(renders >= GOAL_RENDERS)})",
    )
    line(
        "whole path / raw smtplib over one connection",
        f"{whole / raw:8.0%}    (goal >= {GOAL_RATIO:.0%}: {verdict(whole / raw >= GOAL_RATIO)})",
    )
    line("  rendering alone in one process (2b) / raw smtplib", f"{alone.sent / alone.seconds / raw:8.0%}")
    line("whole path / raw smtplib, a connection per message", f"{whole * each_seconds / count:8.0%}")

    same = all(run.same for _, run in runs)
    ok = crlf and longest <= MAX_LINE and same and received == expected
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
