"""Subscribers, read from one TOML file each in subscriptions/.

A file is checked strictly, because a typo must never widen a watch: unknown keys, wrong
types, bad time zones, schedules and queries are errors that name the file, the key (and
line), and what to write instead. One broken file is reported and skipped; the others work.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email

from bot.errors import QueryError, SubscriptionError
from bot.models import Channel, Subscriber, Watch
from bot.query import parse_query
from bot.schedule import parse_schedule

__all__ = ["ENV_REF", "LoadedSubscriptions", "load_subscriptions", "mail_address", "read_subscription"]

_TOP = {
    "name": str,
    "email": str,
    "timezone": str,
    "schedule": str,
    "send_empty": bool,
    "max_papers": int,
    "paused": bool,
    "channels": dict,
    "watch": list,
}
_WATCH = {
    "name": str,
    "query": str,
    "authors": list,
    "orgs": list,
    "keywords": list,
    "min_upvotes": int,
    "min_stars": int,
    "has_code": bool,
    "rising": int,
    "delivery": str,
    "channels": list,
    "search": bool,
}
_CHANNEL_KINDS = ("email", "slack", "webhook", "apprise")
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # a ${VAR} in a channel's target or secret
# One plain address: no list, no display name, no quoting (a comma would make the To header two).
_EMAIL = re.compile(r'^[^@\s<>,;:"()\[\]\\]+@[^@\s<>,;:"()\[\]\\]+\.[^@\s<>,;:"()\[\]\\]+$')
_TYPE_NAMES = {
    str: "text in quotes",
    int: "a whole number",
    bool: "true or false",
    list: 'a list like ["a", "b"]',
    dict: "a table",
}


@dataclass(frozen=True, slots=True)
class LoadedSubscriptions:
    """The subscribers whose files are valid, and an error for each file that is not."""

    subscribers: tuple[Subscriber, ...]
    errors: tuple[SubscriptionError, ...]


class _File:
    """Error reporting for one file: names the file, the key, and the line of the key."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, key: str, after: int = 0) -> int | None:
        leaf = key.rsplit(".", 1)[-1]
        pattern = re.compile(rf"^\s*{re.escape(leaf)}\s*=")
        for number, line in enumerate(self.lines[after:], after + 1):
            if pattern.match(line):
                return number
        return None

    def error(self, key: str | None, message: str, line: int | None = None) -> SubscriptionError:
        return SubscriptionError(str(self.path), key, message, line)


def _check_keys(source: _File, table: dict, allowed: dict, prefix: str) -> None:
    for key, value in table.items():
        full = f"{prefix}{key}"
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(allowed))}"
            raise source.error(full, f"unknown key: {hint}", source.line_of(full))
        kind = allowed[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise source.error(
                full, f"{value!r} is not valid: write {_TYPE_NAMES[kind]}", source.line_of(full)
            )


def _strings(source: _File, values: list, key: str) -> list[str]:
    if not all(isinstance(v, str) and v.strip() for v in values):
        raise source.error(
            key, 'write a list of non-empty texts, like ["A. Name", "B. Name"]', source.line_of(key)
        )
    return [v.strip() for v in values]


def _quote(text: str) -> str:
    return '"' + text.replace('"', " ").replace("\\", " ") + '"'


def _compile_watch_query(watch: dict) -> str:
    parts = []
    if watch.get("query", "").strip():
        parts.append(f"({watch['query']})")
    for key, field in (("authors", "author"), ("orgs", "org"), ("keywords", "keyword")):
        values = watch.get(key) or []
        if values:
            parts.append("(" + " OR ".join(f"{field}:{_quote(v)}" for v in values) + ")")
    return " AND ".join(parts)


def _channels(source: _File, table: dict, email: str | None) -> tuple[Channel, ...]:
    channels = []
    for name, spec in table.items():
        key = f"channels.{name}"
        line = source.line_of(name)
        if isinstance(spec, bool):
            if name != "email":
                raise source.error(key, f'write a URL, e.g. {name} = "${{MY_{name.upper()}_URL}}"', line)
            if spec:
                if not email:
                    raise source.error(key, 'email = true needs a top-level email = "you@example.org"', line)
                channels.append(Channel("email", "email", email))
            continue
        if isinstance(spec, str):
            spec = {"url": spec}
        if not isinstance(spec, dict):
            raise source.error(key, 'write a URL in quotes or a table like { url = "${HOOK_URL}" }', line)
        unknown = set(spec) - {"kind", "url", "to", "secret"}
        if unknown:
            raise source.error(f"{key}.{sorted(unknown)[0]}", "unknown key: use kind, url, to, secret", line)
        kind = spec.get("kind") or (name if name in _CHANNEL_KINDS else None)
        if kind not in _CHANNEL_KINDS:
            raise source.error(key, f"say which kind it is: kind = one of {', '.join(_CHANNEL_KINDS)}", line)
        target = spec.get("to") if kind == "email" else spec.get("url")
        if not isinstance(target, str) or not target.strip():
            what = 'to = "you@example.org"' if kind == "email" else 'url = "${MY_HOOK_URL}"'
            raise source.error(key, f"missing the address: write {what}", line)
        if kind == "email" and not ENV_REF.search(target):
            target = _address(source, key, target, line)
        if kind != "email" and not ENV_REF.fullmatch(target.strip()):
            raise source.error(
                key,
                'a webhook URL is a secret: do not write it here; write url = "${MY_HOOK_URL}" '
                "and set MY_HOOK_URL in the environment",
                line,
            )
        secret = spec.get("secret")
        if secret is not None and not (isinstance(secret, str) and ENV_REF.fullmatch(secret.strip())):
            raise source.error(
                f"{key}.secret", 'secrets come from the environment: write secret = "${MY_SECRET}"', line
            )
        channels.append(Channel(name, kind, target.strip(), secret))
    return tuple(channels)


def mail_address(address: str, strict: bool = False) -> str:
    """`address` as mail servers take it, the same wherever it comes from (a file, the web
    form, the environment): written in other letters than ASCII, its domain lowercased and in
    ASCII (IDNA 2008: "bücher.example" is "xn--bcher-kva.example"); the part before the @
    must be ASCII, as few servers take any other (SMTPUTF8) and paperbot does not ask. An
    ASCII address is taken as written (as it always was: "jdoe@corp.local" too) unless
    `strict`, as for the web form, which takes only addresses fit for the open internet.
    Raises ValueError saying what is wrong."""
    if address.isascii() and not strict:
        return address.strip()
    try:
        found = validate_email(address.strip(), check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as error:
        raise ValueError(str(error)) from None
    return found.ascii_email or found.normalized


def _address(source: _File, key: str, address: str, line: int | None) -> str:
    """A file's address, checked, as mail_address writes it; its error names the file and key."""
    if not _EMAIL.match(address):
        raise source.error(key, f"{address!r} is not an email address", line)
    try:
        return mail_address(address)
    except ValueError as error:
        raise source.error(key, f"{address!r}: {error}", line) from None


def _watch(source: _File, index: int, table: dict, channel_names: set[str]) -> Watch:
    prefix = f"watch[{index}]."
    if not isinstance(table, dict):
        raise source.error(f"watch[{index}]", "each [[watch]] is a table", None)
    start = _nth_watch_line(source, index)
    _check_keys_at(source, table, _WATCH, prefix, start)
    name = table.get("name", "").strip()
    if not name:
        raise source.error(f"{prefix}name", 'every watch needs a name, e.g. name = "diffusion"', start)
    for key in ("authors", "orgs", "keywords", "channels"):
        if key in table:
            table = {**table, key: _strings(source, table[key], prefix + key)}
    text = _compile_watch_query(table)
    thresholds = any(table.get(k) for k in ("min_upvotes", "min_stars", "has_code", "rising"))
    if not text and not thresholds:
        raise source.error(
            prefix + "query",
            "this watch would match every paper: give a query, authors, orgs, keywords or a threshold",
            start,
        )
    try:
        query = parse_query(text) if text else None
    except QueryError as error:
        key = "query" if table.get("query") else "authors"
        raise source.error(
            prefix + key, f"the query is not valid: {error}", source.line_of(key, start or 0)
        ) from None
    for key in ("min_upvotes", "min_stars", "rising"):
        if table.get(key, 0) < 0:
            raise source.error(prefix + key, "write a number of 0 or more", source.line_of(key, start or 0))
    delivery = table.get("delivery", "digest")
    if delivery not in ("digest", "instant"):
        raise source.error(
            prefix + "delivery", 'write "digest" or "instant"', source.line_of("delivery", start or 0)
        )
    routed = tuple(table.get("channels", ()))
    for name_ in routed:
        if name_ not in channel_names:
            known = ", ".join(sorted(channel_names)) or "none"
            raise source.error(
                prefix + "channels",
                f"no channel named {name_!r} in [channels] (there are: {known})",
                source.line_of("channels", start or 0),
            )
    return Watch(
        name=name,
        query=query,
        query_text=text,
        min_upvotes=table.get("min_upvotes", 0),
        min_stars=table.get("min_stars", 0),
        has_code=table.get("has_code", False),
        rising=table.get("rising"),
        delivery=delivery,
        channels=routed,
        search=table.get("search", False),
    )


def _nth_watch_line(source: _File, index: int) -> int | None:
    seen = -1
    for number, line in enumerate(source.lines, 1):
        if line.strip().startswith("[[watch]]"):
            seen += 1
            if seen == index:
                return number
    return None


def _check_keys_at(source: _File, table: dict, allowed: dict, prefix: str, start: int | None) -> None:
    try:
        _check_keys(source, table, allowed, prefix)
    except SubscriptionError as error:
        leaf = (error.key or "").rsplit(".", 1)[-1]
        raise source.error(
            error.key, str(error).split(": ", 2)[-1], source.line_of(leaf, start or 0)
        ) from None


def read_subscription(path: str | Path) -> Subscriber:
    """Read and check one subscription file. Raises SubscriptionError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SubscriptionError(str(path), None, f"cannot read the file: {error}") from None
    source = _File(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise _toml_error(source, error) from None
    _check_keys(source, data, _TOP, "")
    email = data.get("email")
    if email is not None:
        email = _address(source, "email", email, source.line_of("email"))
    zone = data.get("timezone", "UTC")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(zone, _known_zones(), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "write an IANA name like 'Europe/Berlin'"
        raise source.error(
            "timezone", f"unknown time zone {zone!r}: {hint}", source.line_of("timezone")
        ) from None
    try:
        schedule = parse_schedule(data.get("schedule", "daily 08:00"))
    except ValueError as error:
        raise source.error("schedule", str(error), source.line_of("schedule")) from None
    max_papers = data.get("max_papers", 25)
    if max_papers < 1:
        raise source.error("max_papers", "write a number of 1 or more", source.line_of("max_papers"))
    channels_table = data.get("channels", {"email": True} if email else {})
    channels = _channels(source, channels_table, email)
    watches_raw = data.get("watch", [])
    if not watches_raw:
        raise source.error("watch", "add at least one [[watch]] table saying what to look for")
    names = {c.name for c in channels}
    watches = tuple(_watch(source, i, w, names) for i, w in enumerate(watches_raw))
    seen: set[str] = set()
    for watch in watches:
        if watch.name in seen:
            raise source.error("watch.name", f"two watches are named {watch.name!r}: names must differ")
        seen.add(watch.name)
    return Subscriber(
        id=path.stem,
        name=data.get("name", path.stem),
        email=email,
        timezone=zone,
        schedule=schedule,
        watches=watches,
        channels=channels,
        send_empty=data.get("send_empty", False),
        max_papers=max_papers,
        paused=data.get("paused", False),
        path=str(path),
    )


def _toml_error(source: _File, error: tomllib.TOMLDecodeError) -> SubscriptionError:
    """tomllib says "(at line N, column C)" or "(at end of document)": keep the line, say the fix."""
    message = str(error)
    found = re.search(r"\(at line (\d+), column \d+\)", message)
    if found:
        return source.error(None, f"not valid TOML: {message}", int(found.group(1)))
    if "end of document" in message:
        return source.error(
            None,
            f"not valid TOML: {message}: the file ends before a bracket or quote is closed",
            len(source.lines) or None,
        )
    return source.error(None, f"not valid TOML: {message}")


def _known_zones() -> list[str]:
    from zoneinfo import available_timezones

    return sorted(available_timezones())


def load_subscriptions(folder: str | Path) -> LoadedSubscriptions:
    """Every *.toml in `folder`: the valid subscribers, and one error per broken file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SubscriptionError(
            str(folder), None, "no such folder: check --subscriptions or PAPERBOT_SUBSCRIPTIONS"
        )
    subscribers, errors = [], []
    for path in sorted(folder.glob("*.toml")):
        try:
            subscribers.append(read_subscription(path))
        except SubscriptionError as error:
            errors.append(error)
    return LoadedSubscriptions(tuple(subscribers), tuple(errors))
