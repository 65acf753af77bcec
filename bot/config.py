"""Settings: defaults, then paperbot.toml, then environment variables; secrets only from the environment.

Every key has a default, so no file is needed to start. A wrong key or value is a
`SettingsError` that names the key and the fix. `describe_settings` shows the effective
settings with secrets masked, for `paperbot config`.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from bot.errors import SettingsError

__all__ = ["SETTINGS", "Settings", "Setting", "describe_settings", "load_settings", "mask"]


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its dotted key, type, default, environment variable and help."""

    key: str
    kind: type
    default: object
    help: str
    secret: bool = False
    check: Callable[[object], str | None] | None = None  # returns the problem, or None

    @property
    def env(self) -> str:
        return "PAPERBOT_" + self.key.replace(".", "_").upper()


def _positive(value: object) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _not_negative(value: object) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _url(value: object) -> str | None:
    return None if str(value).startswith(("http://", "https://")) else "must start with http:// or https://"


def _one_of(*choices: str) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _address(value: object) -> str | None:
    return None if "@" in str(value) else 'must be an address, e.g. "paperbot <papers@example.org>"'


SETTINGS: tuple[Setting, ...] = (
    Setting("database.path", str, "./paperbot.db", "the SQLite database (also --db, PAPERBOT_DB)"),
    Setting("hf.base_url", str, "https://huggingface.co", "where Hugging Face is", check=_url),
    Setting("hf.token", str, None, "a Hugging Face token, sent as a bearer token", secret=True),
    Setting("hf.timeout", float, 20.0, "seconds before a request times out", check=_positive),
    Setting(
        "hf.retries", int, 4, "retries after a failed request (connect errors, 5xx, 429)", check=_not_negative
    ),
    Setting(
        "hf.backoff", float, 1.0, "seconds before the first retry; doubles each time", check=_not_negative
    ),
    Setting(
        "hf.max_wait",
        float,
        120.0,
        "the longest Retry-After paperbot honours, in seconds",
        check=_not_negative,
    ),
    Setting("hf.page_size", int, 100, "papers asked for per API page", check=_positive),
    Setting("poll.interval_minutes", int, 30, "minutes between polls in `paperbot run`", check=_positive),
    Setting("poll.refresh_days", int, 3, "recent days re-read each poll so counts move", check=_not_negative),
    Setting(
        "poll.jitter_seconds",
        int,
        120,
        "a random delay of up to this many seconds per poll",
        check=_not_negative,
    ),
    Setting("poll.max_searches", int, 10, "Hugging Face searches per poll for `search = true` watches"),
    Setting(
        "schedule.grace_hours",
        float,
        24.0,
        "a digest missed while paperbot was down is still sent this many hours late",
        check=_not_negative,
    ),
    Setting("alerts.email", str, None, "where operator alerts go (none: only the log)", check=_address),
    Setting(
        "alerts.after_errors", int, 3, "failed polls in a row before the operator is alerted", check=_positive
    ),
    Setting(
        "mail.transport",
        str,
        "outbox",
        "outbox (write .eml files) or smtp",
        check=_one_of("outbox", "smtp"),
    ),
    Setting("mail.outbox", str, "./outbox", "the folder the outbox writes .eml files to"),
    Setting("mail.from", str, "paperbot <paperbot@localhost>", "the From of every digest", check=_address),
    Setting(
        "mail.unsubscribe_to",
        str,
        None,
        "the mailto: of List-Unsubscribe (default: unsubscribe@ the From domain)",
        check=_address,
    ),
    Setting("mail.list_id", str, None, "the List-Id (default: paperbot digests <digests.the From domain>)"),
    Setting("smtp.host", str, "localhost", "the SMTP server"),
    Setting("smtp.port", int, 587, "its port (587 STARTTLS, 465 TLS, 25 plain)", check=_positive),
    Setting(
        "smtp.security", str, "starttls", "starttls, tls or none", check=_one_of("starttls", "tls", "none")
    ),
    Setting("smtp.username", str, None, "the SMTP login, if the server asks for one"),
    Setting("smtp.password", str, None, "the SMTP password", secret=True),
    Setting("smtp.timeout", float, 30.0, "seconds before an SMTP command times out", check=_positive),
    Setting(
        "smtp.rate", float, 0.0, "at most this many messages a second (0: no limit)", check=_not_negative
    ),
    Setting(
        "run.helper_from",
        int,
        256,
        "a run with this many digests renders them in a helper process while it sends"
        " (Linux, 2 CPUs or more; 0: never)",
        check=_not_negative,
    ),
    Setting("web.base_url", str, "http://localhost:8000", "where `paperbot serve` is reached", check=_url),
    Setting(
        "web.secret",
        str,
        None,
        "signs unsubscribe and manage links (default: a random key kept in the database)",
        secret=True,
    ),
    Setting(
        "webhook.allow_private",
        bool,
        False,
        "let Slack and webhook URLs point at private, loopback or link-local addresses",
    ),
    Setting(
        "webhook.timeout", float, 10.0, "seconds before a Slack or webhook POST times out", check=_positive
    ),
    Setting(
        "delivery.max_attempts",
        int,
        8,
        "tries of a message before a transient failure counts as permanent",
        check=_positive,
    ),
    Setting(
        "delivery.retry_minutes",
        float,
        5.0,
        "minutes before the first retry of a failed send; doubles each time",
        check=_not_negative,
    ),
    Setting(
        "delivery.lease_seconds",
        float,
        300.0,
        "how long a process holds a message it is sending before another may take it over",
        check=_positive,
    ),
    Setting(
        "delivery.suppress_after",
        int,
        3,
        "permanent failures in a row before an address is suppressed",
        check=_positive,
    ),
)
_BY_KEY = {s.key: s for s in SETTINGS}
_ALIASES = {"database.path": ("PAPERBOT_DB",), "hf.token": ("HF_TOKEN",)}


def _env_names(setting: Setting) -> tuple[str, ...]:
    """The environment variables read for a setting, in the order they win."""
    return (setting.env, *_ALIASES.get(setting.key, ()))


class Settings(Mapping):
    """The effective settings, read-only, by dotted key: settings["hf.base_url"]."""

    def __init__(self, values: dict[str, object], origins: dict[str, str]):
        self._values = MappingProxyType(dict(values))
        self.origins = MappingProxyType(dict(origins))

    def __getitem__(self, key: str) -> object:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _coerce(setting: Setting, value: object, where: str) -> object:
    kind = setting.kind
    if kind is bool:
        text = str(value).strip().lower()
        if isinstance(value, bool):
            return value
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise SettingsError(f"{where}: {setting.key} = {value!r} is not valid: write true or false")
    try:
        if isinstance(value, str) and kind is not str:
            value = kind(value.strip())
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError
        if kind is float and not math.isfinite(value):  # "nan", "inf"
            raise ValueError
    except (TypeError, ValueError):
        example = {int: "a whole number, e.g. 30", float: "a number, e.g. 20.0", str: "text in quotes"}[kind]
        raise SettingsError(f"{where}: {setting.key} = {value!r} is not valid: write {example}") from None
    problem = setting.check(value) if setting.check else None
    if problem:
        raise SettingsError(f"{where}: {setting.key} = {value!r} {problem}")
    return value


def _flatten(table: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _read_file(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(f"{path}: no such settings file: check --config or PAPERBOT_CONFIG") from None
    except OSError as error:  # a folder, no permission
        raise SettingsError(f"{path}: cannot read the settings file: {error.strerror}") from None
    except UnicodeDecodeError as error:  # tomllib decodes the bytes itself and lets this through
        raise SettingsError(f"{path}: not valid TOML: not UTF-8 text ({error.reason})") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"{path}: not valid TOML: {error}") from None
    return _flatten(table)


def _suggest(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, _BY_KEY, n=1)
    return f"did you mean '{close[0]}'?" if close else "see `paperbot config` for the known keys"


def load_settings(
    config_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Defaults, then the file (--config, PAPERBOT_CONFIG, or ./paperbot.toml if present), then
    the environment, then `overrides` (command-line options)."""
    environ = os.environ if environ is None else environ
    values = {s.key: s.default for s in SETTINGS}
    origins = {s.key: "default" for s in SETTINGS}
    path = config_path or environ.get("PAPERBOT_CONFIG")
    if path is None and Path("paperbot.toml").exists():
        path = "paperbot.toml"
    if path:
        for key, value in _read_file(Path(path)).items():
            setting = _BY_KEY.get(key)
            if setting is None:
                raise SettingsError(f"{path}: unknown key '{key}': {_suggest(key)}")
            if setting.secret:
                raise SettingsError(
                    f"{path}: '{key}' is a secret and is read only from the environment: "
                    f"remove it from the file and set {' or '.join(_env_names(setting))} instead"
                )
            values[key] = _coerce(setting, value, str(path))
            origins[key] = str(path)
    for setting in SETTINGS:
        for name in _env_names(setting):
            if environ.get(name):
                values[setting.key] = _coerce(setting, environ[name], f"environment {name}")
                origins[setting.key] = f"env {name}"
                break
    for key, value in (overrides or {}).items():
        values[key] = _coerce(_BY_KEY[key], value, "command line")
        origins[key] = "command line"
    return Settings(values, origins)


def mask(value: object) -> str:
    """A secret as it may be shown: whether it is set, and nothing of it (not even its start:
    a password's first letters are a good part of it)."""
    return "(not set)" if value is None else "****** (set)"


def describe_settings(settings: Settings) -> list[tuple[str, str, str]]:
    """(key, shown value, where it came from) for every setting, secrets masked."""
    rows = []
    for setting in SETTINGS:
        value = settings[setting.key]
        shown = mask(value) if setting.secret else ("(not set)" if value is None else str(value))
        rows.append((setting.key, shown, settings.origins[setting.key]))
    return rows
