"""Self-service subscriptions: the sign-up form, its confirmation, and edits of a subscriber's file.

The web app (`bot.web`) calls these; nothing here knows about HTTP.

    check_signup(form)  ──>  SignupRequest  ──>  make_confirm_token  ──>  confirmation mail
                                                        │ (the visitor clicks)
                         confirm_signup(folder, store, read_confirm_token(...))
                                  └─> subscriptions/<id>.toml, written atomically

Subscription files stay the one source of truth for who is subscribed. A pending sign-up
is stored nowhere: its confirmation token carries the form (address, query, schedule, time
zone), signed and stamped, so an unconfirmed address leaves no trace but that one mail.

Every change to a file is made on its TOML document (tomlkit, so a subscriber's hand-written
comments survive), written to a temporary file beside it, read back with the same strict
`read_subscription` as every other file, and only then moved over the old one (`os.replace`):
an edit is either valid and whole, or not made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import threading
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import tomlkit

from bot.config import Settings
from bot.errors import QueryError, SubscriptionError
from bot.message import POLICY, email_bytes
from bot.models import Subscriber
from bot.pipeline import make_email_sender
from bot.query import parse_query
from bot.schedule import parse_schedule
from bot.store import Delivery, Store
from bot.subscriptions import mail_address, read_subscription
from bot.tokens import TokenError, make_token, read_token

__all__ = [
    "CONFIRM_MAX_AGE",
    "MAX_QUERY_CHARS",
    "SignupRequest",
    "WatchEdit",
    "add_watch",
    "address_key",
    "already_subscribed_email",
    "check_signup",
    "confirm_signup",
    "confirmation_email",
    "delete_watch",
    "edit_delivery",
    "edit_watch",
    "error_text",
    "find_subscriber",
    "make_confirm_token",
    "read_confirm_token",
    "read_document",
    "schedule_text",
    "send_email",
    "staged_subscription",
    "subscriber_id_for",
    "subscription_path",
    "time_zones",
    "unsubscribe",
    "update_subscription",
]

# Long enough to reach a slow inbox, short enough that an old mail is not a standing invitation.
CONFIRM_MAX_AGE = timedelta(hours=48)
MAX_QUERY_CHARS = 300
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
# One writer at a time per process: two edits of one file never interleave their read and replace.
_WRITE_LOCK = threading.Lock()


# -- the form --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignupRequest:
    """What the sign-up form asked for, checked: carried by the confirmation token until confirmed."""

    email: str
    query: str
    schedule: str
    timezone: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> SignupRequest:
        data = json.loads(text)
        if not isinstance(data, dict) or set(data) != {f.name for f in dataclasses.fields(cls)}:
            raise ValueError("not a sign-up")
        if not all(isinstance(value, str) for value in data.values()):
            raise ValueError("not a sign-up")
        return cls(**data)


def time_zones() -> list[str]:
    """The IANA zones a subscriber may pick, "Area/City" names and UTC, sorted."""
    return ["UTC"] + sorted(
        zone for zone in available_timezones() if "/" in zone and not zone.startswith(("Etc/", "SystemV/"))
    )


def schedule_text(frequency: str, day: str, clock: str) -> str:
    """The schedule the form's three fields describe: "daily 08:00" or "weekly monday 08:00".

    Raises ValueError naming what to pick.
    """
    found = _TIME.match(clock.strip())
    if not found:
        raise ValueError("pick a time of day, like 08:00")
    at = f"{int(found.group(1)):02d}:{found.group(2)}"
    if frequency == "daily":
        return f"daily {at}"
    if frequency == "weekly":
        if day not in DAYS:
            raise ValueError("pick a day of the week")
        return f"weekly {day} {at}"
    raise ValueError("pick daily or weekly")


def check_email(address: str) -> str:
    """The address, normalized (domain lowercased, IDN as ASCII), as a subscription file's
    would be. Raises ValueError saying what is wrong.

    email-validator rather than a regex: the address goes into a mail header and a file, so
    quoted local parts, control characters and over-long addresses must be refused exactly.
    """
    return mail_address(address, strict=True)


def check_query(query: str) -> None:
    """Raise QueryError (with a caret under the problem) when the query is not valid."""
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError(
            f"the query is longer than {MAX_QUERY_CHARS} characters: split it into several watches",
            query[:MAX_QUERY_CHARS],
            MAX_QUERY_CHARS - 1,
        )
    parse_query(query)


def check_signup(form: Mapping[str, str]) -> tuple[SignupRequest | None, dict[str, str]]:
    """The sign-up, or the problems with the form: one message per field (email, query, schedule,
    timezone). The answer never depends on who is subscribed."""
    errors: dict[str, str] = {}
    address = query = schedule = zone = ""
    try:
        address = check_email(form.get("email", ""))
    except ValueError as error:
        errors["email"] = str(error)
    query = " ".join(form.get("query", "").split())
    try:
        check_query(query)
    except QueryError as error:
        errors["query"] = str(error)
    try:
        schedule = schedule_text(form.get("frequency", ""), form.get("day", ""), form.get("time", ""))
        parse_schedule(schedule)
    except ValueError as error:
        errors["schedule"] = str(error)
    zone = form.get("timezone", "").strip()
    try:
        if not zone:
            raise ValueError
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        errors["timezone"] = "pick a time zone from the list, like Europe/Berlin or UTC"
    if errors:
        return None, errors
    request = SignupRequest(address, query, schedule, zone)
    try:
        with staged_subscription(_new_document(request), tempfile.gettempdir(), "check"):
            pass
    except SubscriptionError as error:  # the same strict rules as a file: say so, never write it
        errors["query"] = error_text(error)
        return None, errors
    return request, {}


# -- tokens ----------------------------------------------------------------------------------


def make_confirm_token(secret, request: SignupRequest, *, now: datetime | None = None) -> str:
    """A signed token carrying the whole sign-up: no pending table, nothing stored until it comes back."""
    # The token's subject is the sign-up itself (there is no subscriber yet); "confirm" is
    # its own purpose, so it can never stand in for an unsubscribe or manage token.
    return make_token(secret, "confirm", request.to_json(), now=now)


def read_confirm_token(secret, token: str, *, now: datetime | None = None) -> SignupRequest:
    """The sign-up a genuine confirmation token carries. Raises TokenError, TokenExpired."""
    text = read_token(secret, "confirm", token, max_age=CONFIRM_MAX_AGE, now=now)
    try:
        return SignupRequest.from_json(text)
    except ValueError:
        raise TokenError("this confirm link is not valid: it holds no sign-up") from None


# -- subscribers' files ----------------------------------------------------------------------


def subscription_path(folder: str | Path, subscriber_id: str) -> Path:
    """The file of `subscriber_id` in `folder`. Raises ValueError for an id that is not a plain file stem."""
    if not _SAFE_ID.match(subscriber_id) or ".." in subscriber_id:
        raise ValueError(f"{subscriber_id!r} is not a subscriber id")
    return Path(folder) / f"{subscriber_id}.toml"


def address_key(address: str) -> str:
    """What makes two addresses the same subscriber: case is ignored."""
    return address.strip().lower()


def find_subscriber(folder: str | Path, address: str) -> str | None:
    """The id of the subscription file whose `email` is `address` (case ignored), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    wanted = address_key(_as_sent(address))
    for path in sorted(folder.glob("*.toml")):
        try:
            found = tomllib.loads(path.read_text(encoding="utf-8")).get("email")
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue  # a broken file is `subscribers check`'s business
        if isinstance(found, str) and address_key(_as_sent(found)) == wanted:
            return path.stem
    return None


def _as_sent(address: str) -> str:
    """A file's address as paperbot sends to it (as written, should it be broken)."""
    try:
        return mail_address(address)
    except ValueError:
        return address


def subscriber_id_for(folder: str | Path, address: str) -> str:
    """A new, safe, unique file stem for `address`: its local part and a short hash, "alice-3f2a9c1b"."""
    local = address.rpartition("@")[0].lower()
    slug = re.sub(r"[^a-z0-9]+", "-", local).strip("-")[:24].strip("-") or "subscriber"
    digest = hashlib.sha256(address_key(address).encode("utf-8")).hexdigest()
    for length in (8, 16, 64):  # longer only if another address ever took that stem
        candidate = f"{slug}-{digest[:length]}"
        if not subscription_path(folder, candidate).exists():
            return candidate
    raise SubscriptionError(str(folder), None, f"no free file name for {address}")


def _new_document(request: SignupRequest, now: datetime | None = None) -> tomlkit.TOMLDocument:
    document = tomlkit.document()
    stamp = (now or datetime.now(UTC)).astimezone(UTC)
    document.add(
        tomlkit.comment(f"Subscribed through the web form; confirmed on {stamp:%Y-%m-%d %H:%M} UTC.")
    )
    document.add(
        tomlkit.comment("The web app's manage page edits this file; comments written here are kept.")
    )
    document["name"] = request.email.rpartition("@")[0]
    document["email"] = request.email
    document["timezone"] = request.timezone
    document["schedule"] = request.schedule
    watches = tomlkit.aot()
    watches.append(_watch_table(_watch_name(request.query), request.query, 0))
    document["watch"] = watches
    return document


def _watch_name(query: str) -> str:
    return query if len(query) <= 40 else query[:39].rstrip() + "…"


def _watch_table(name: str, query: str, min_upvotes: int) -> tomlkit.items.Table:
    table = tomlkit.table()
    table["name"] = name
    if query:
        table["query"] = query
    if min_upvotes:
        table["min_upvotes"] = min_upvotes
    return table


def read_document(path: str | Path) -> tomlkit.TOMLDocument:
    """A subscription file as an editable TOML document. Raises SubscriptionError when it is not TOML."""
    path = Path(path)
    try:
        return tomlkit.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomlkit.exceptions.ParseError) as error:
        raise SubscriptionError(str(path), None, f"cannot read the file: {error}") from None


def error_text(error: SubscriptionError) -> str:
    """What a SubscriptionError says about the subscription, without the (temporary) file and line."""
    where = error.path + (f":{error.line}" if error.line else "") + ":"
    what = f" key '{error.key}':" if error.key else ""
    text = str(error)
    prefix = where + what
    return text[len(prefix) :].strip() if text.startswith(prefix) else text


@contextmanager
def staged_subscription(
    document: tomlkit.TOMLDocument, folder: str | Path, subscriber_id: str
) -> Iterator[tuple[Path, Subscriber]]:
    """Write `document` to a temporary file in `folder` and read it back strictly.

    Yields the temporary path and the subscriber it reads as (with `subscriber_id` and its real
    path): move the file into place with `os.replace` inside the block to keep it; it is removed
    otherwise. Raises SubscriptionError when the document is not a valid subscription.
    """
    folder = Path(folder)
    final = subscription_path(folder, subscriber_id)
    # Not *.toml, so a running paperbot never reads a half-made file as a subscriber.
    handle, name = tempfile.mkstemp(dir=folder, prefix=f".{subscriber_id}.", suffix=".tmp")
    staged = Path(name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out:
            out.write(tomlkit.dumps(document))
            out.flush()
            os.fsync(out.fileno())
        subscriber = read_subscription(staged)
        yield staged, dataclasses.replace(subscriber, id=subscriber_id, path=str(final))
    finally:
        staged.unlink(missing_ok=True)


def _save(document: tomlkit.TOMLDocument, folder: str | Path, subscriber_id: str) -> Subscriber:
    with staged_subscription(document, folder, subscriber_id) as (staged, subscriber):
        os.replace(staged, subscription_path(folder, subscriber_id))
    return subscriber


def update_subscription(
    folder: str | Path,
    subscriber_id: str,
    change: Callable[[tomlkit.TOMLDocument], None],
    *,
    save: bool = True,
) -> Subscriber:
    """Apply `change` to a subscriber's file and save it when it reads back valid; with `save=False`
    only check it (a preview). Returns the subscriber as changed. Raises SubscriptionError (nothing
    written) with what is wrong, and ValueError from `change`."""
    path = subscription_path(folder, subscriber_id)
    with _WRITE_LOCK:
        document = read_document(path)
        change(document)
        if not save:
            with staged_subscription(document, folder, subscriber_id) as (_, subscriber):
                return subscriber
        return _save(document, folder, subscriber_id)


def confirm_signup(
    folder: str | Path, store: Store, request: SignupRequest, now: datetime
) -> tuple[str, bool]:
    """Make a confirmed sign-up real: (subscriber id, whether the file is new).

    A new address gets a new file. An address already in a file keeps it: the sign-up's watch
    is added unless a watch has that query, digests are unpaused, and an unsubscribe is lifted
    (this is a confirmed wish to get mail again). Confirming twice changes nothing more.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _WRITE_LOCK:
        existing = find_subscriber(folder, request.email)
        if existing is None:
            subscriber_id = subscriber_id_for(folder, request.email)
            _save(_new_document(request, now), folder, subscriber_id)
        else:
            subscriber_id = existing
            document = read_document(subscription_path(folder, existing))
            watches = document.get("watch")
            queries = {" ".join(str(w.get("query", "")).split()) for w in watches or []}
            if request.query not in queries:
                add_watch(document, WatchEdit(_unique_name(document, request.query), request.query, 0))
            if document.get("paused"):
                document["paused"] = False
            _save(document, folder, subscriber_id)
    store.unsuppress(subscriber_id, "*")
    return subscriber_id, existing is None


def _unique_name(document: tomlkit.TOMLDocument, query: str) -> str:
    taken = {str(w.get("name", "")) for w in document.get("watch") or []}
    name, number = _watch_name(query), 2
    while name in taken:
        name, number = f"{_watch_name(query)} ({number})", number + 1
    return name


def unsubscribe(store: Store, folder: str | Path, subscriber_id: str, now: datetime) -> None:
    """Stop all mail to `subscriber_id` at once: a suppression of every channel, which wins over the file.

    Unsubscribing twice keeps the first date."""
    if store.suppression(subscriber_id, "*"):
        return
    recipient = ""
    try:
        recipient = str(read_document(subscription_path(folder, subscriber_id)).get("email") or "")
    except (SubscriptionError, ValueError):
        pass  # the file may be gone; the suppression still stands
    store.suppress(subscriber_id, "*", recipient, f"unsubscribed on {now:%Y-%m-%d} via the link", now)


# -- edits from the manage page ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WatchEdit:
    """The fields of a watch the manage page edits; others in the file (authors, channels...) are kept."""

    name: str
    query: str
    min_upvotes: int


def add_watch(document: tomlkit.TOMLDocument, edit: WatchEdit) -> None:
    """Append a [[watch]] to the document."""
    watches = document.get("watch")
    if watches is None:
        document["watch"] = tomlkit.aot()
        watches = document["watch"]
    watches.append(_watch_table(edit.name.strip(), edit.query, edit.min_upvotes))


def _watch_at(document: tomlkit.TOMLDocument, index: int, name: str):
    watches = document.get("watch") or []
    if not 0 <= index < len(watches) or str(watches[index].get("name", "")) != name:
        raise SubscriptionError(
            "", "watch", f"the watch {name!r} was changed meanwhile: reload the page and edit it again"
        )
    return watches[index]


def edit_watch(document: tomlkit.TOMLDocument, index: int, old_name: str, edit: WatchEdit) -> None:
    """Change the name, query and minimum upvotes of the watch at `index` (which must still be `old_name`)."""
    table = _watch_at(document, index, old_name)
    table["name"] = edit.name.strip()
    for key, value in (("query", edit.query), ("min_upvotes", edit.min_upvotes)):
        if value:
            table[key] = value
        elif key in table:
            del table[key]


def delete_watch(document: tomlkit.TOMLDocument, index: int, old_name: str) -> None:
    """Remove the watch at `index` (which must still be `old_name`)."""
    _watch_at(document, index, old_name)
    del document["watch"][index]


def edit_delivery(document: tomlkit.TOMLDocument, *, schedule: str, timezone: str, paused: bool) -> None:
    """Set when digests go out, in which zone, and whether they are paused."""
    document["schedule"] = schedule
    document["timezone"] = timezone
    if paused or "paused" in document:
        document["paused"] = paused


# -- the two mails a visitor can cause ----------------------------------------------------------


def _message(settings: Settings, to: str, subject: str, text: str, now: datetime) -> EmailMessage:
    sender = settings["mail.from"]
    message = EmailMessage(policy=POLICY)
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(now.astimezone(UTC))
    message["Message-ID"] = make_msgid("paperbot", domain=parseaddr(sender)[1].rpartition("@")[2] or None)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text, cte="quoted-printable")
    return message


def confirmation_email(
    settings: Settings, request: SignupRequest, confirm_url: str, now: datetime
) -> EmailMessage:
    """The one mail an unconfirmed address ever gets: what was asked for, and the link to confirm it."""
    hours = int(CONFIRM_MAX_AGE.total_seconds() // 3600)
    text = (
        "Hello,\n\n"
        "Someone, hopefully you, asked to get paperbot's digests of trending machine-learning papers\n"
        "at this address:\n\n"
        f"  watching:  {request.query}\n"
        f"  schedule:  {request.schedule} ({request.timezone})\n\n"
        f"To confirm, open this link within {hours} hours and press Confirm:\n\n"
        f"{confirm_url}\n\n"
        "If you did not ask for this, ignore this mail: nothing more will be sent to you.\n"
    )
    return _message(settings, request.email, "Confirm your paperbot subscription", text, now)


def already_subscribed_email(
    settings: Settings, request: SignupRequest, confirm_url: str, manage_url: str, now: datetime
) -> EmailMessage:
    """What a second sign-up of a subscribed address gets instead (the visitor sees the same page)."""
    hours = int(CONFIRM_MAX_AGE.total_seconds() // 3600)
    text = (
        "Hello,\n\n"
        "Someone, hopefully you, asked to subscribe this address to paperbot's digests. It is\n"
        "subscribed already.\n\n"
        "To change your watches or schedule, or to pause your digests:\n\n"
        f"{manage_url}\n\n"
        f'To add the watch "{request.query}", open this link within {hours} hours and press Confirm:\n\n'
        f"{confirm_url}\n\n"
        "If you did not ask for this, ignore this mail: nothing changes.\n"
    )
    return _message(settings, request.email, "Your paperbot subscription", text, now)


def send_email(settings: Settings, message: EmailMessage, now: datetime) -> None:
    """Send one message through the configured transport (`mail.transport`: the outbox or SMTP).

    Raises DeliveryError (TransientError, PermanentError) when it is not taken."""
    recipient = parseaddr(str(message["To"]))[1]
    sender = make_email_sender(settings)
    # Not a digest: no ledger row. The outbox names the file by (period, subscriber, channel).
    key = hashlib.sha256(str(message["Message-ID"]).encode()).hexdigest()[:12]
    delivery = Delivery(
        id=0,
        subscriber_id=key,
        channel="email",
        kind="email",
        period=f"signup-{now:%Y%m%dT%H%M%S}",
        recipient=recipient,
        state="pending",
        attempts=0,
        paper_ids=(),
        message=email_bytes(message),
    )
    try:
        sender.send(delivery)
    finally:
        sender.close()
