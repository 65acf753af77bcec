"""Signed, per-subscriber tokens for the links in a digest (unsubscribe, manage, full list).

A token names a subscriber for one purpose, optionally bound to one more value (e.g. the
period of a digest), and carries the time it was signed. It is not encrypted: anyone can
read the subscriber id in it, but no one without the secret can make or alter one.

    token = make_token(secret, "unsubscribe", "alice")
    read_token(secret, "unsubscribe", token, max_age=UNSUBSCRIBE_MAX_AGE)  # -> "alice"

A token made for one purpose is refused for any other (the purpose is the signature's
salt), so a "digest" link can never unsubscribe anyone. `read_token` raises `TokenError`
when a token was altered, made with another secret or for another purpose, and
`TokenExpired` (a `TokenError`) when it is older than `max_age`.

`secret` may be a list, oldest first, to rotate secrets: tokens are signed with the last
and accepted when signed with any of them. A missing or empty secret is a `SettingsError`.
`UNSUBSCRIBE_MAX_AGE`, `MANAGE_MAX_AGE` and `DIGEST_MAX_AGE` are the ages the web app should
allow for each purpose.
"""

from __future__ import annotations

import binascii
import hmac
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from itsdangerous import BadData, SignatureExpired, TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode, want_bytes
from itsdangerous.url_safe import URLSafeSerializerMixin

from bot.errors import BotError, SettingsError

__all__ = [
    "DIGEST_MAX_AGE",
    "MANAGE_MAX_AGE",
    "UNSUBSCRIBE_MAX_AGE",
    "TokenError",
    "TokenExpired",
    "make_token",
    "read_token",
]

# An unsubscribe link must keep working long after the mail arrived (RFC 8058 asks that the
# one-click link be usable without a login); a manage link is a login and lives shorter.
UNSUBSCRIBE_MAX_AGE = timedelta(days=365)
MANAGE_MAX_AGE = timedelta(days=60)
DIGEST_MAX_AGE = timedelta(days=90)  # the "and N more" page of one digest

_SALT_PREFIX = "paperbot."


class TokenError(BotError):
    """A token was altered, signed with another secret, or made for another purpose."""

    exit_code = 2


class TokenExpired(TokenError):
    """A token is genuine but older than the age allowed for its purpose."""


def _clocked_signer(now: datetime | None) -> type[TimestampSigner]:
    if now is None:
        return TimestampSigner
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return _signer_at(int(now.timestamp()))


@lru_cache(maxsize=64)
def _signer_at(stamp: int) -> type[TimestampSigner]:
    """A signer class whose clock says `stamp`: made once per time (a digest run signs thousands
    of links at one time), not once per token."""

    class ClockedSigner(TimestampSigner):
        # itsdangerous reads the clock both to stamp a token and to age it on reading.
        def get_timestamp(self) -> int:
            return stamp

    return ClockedSigner


def _serializer(
    secret: str | Sequence[str] | None, purpose: str, now: datetime | None
) -> URLSafeTimedSerializer:
    secrets = (secret,) if isinstance(secret, str) or secret is None else tuple(secret)
    if not secrets or not all(secrets):
        raise SettingsError("web.secret is not set: set PAPERBOT_WEB_SECRET to a long random string")
    if not purpose:
        raise ValueError("a token needs a purpose, e.g. 'unsubscribe'")
    return _made_serializer(secrets, purpose, _clocked_signer(now))


@lru_cache(maxsize=64)
def _made_serializer(
    secrets: tuple[str, ...], purpose: str, signer: type[TimestampSigner]
) -> URLSafeTimedSerializer:
    return _Serializer(list(secrets), salt=_SALT_PREFIX + purpose, signer=signer)


class _Serializer(URLSafeTimedSerializer):
    """itsdangerous's URL-safe timed serializer, but its payload is never zlib-compressed: a
    subscriber id and a period are too short for it to shrink them, and trying took longer
    than the signing (a run signs three links a digest). A compressed token, as an earlier
    paperbot might have made for a long repetitive id, still reads."""

    def dump_payload(self, obj) -> bytes:
        return base64_encode(super(URLSafeSerializerMixin, self).dump_payload(obj))


def make_token(
    secret: str | Sequence[str],
    purpose: str,
    subscriber_id: str,
    extra: str | None = None,
    *,
    now: datetime | None = None,
) -> str:
    """A URL-safe token naming `subscriber_id` for `purpose` (and `extra`), stamped `now` (default: now)."""
    payload = [subscriber_id] if extra is None else [subscriber_id, extra]
    if now is None:
        return _serializer(secret, purpose, now).dumps(payload)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    secrets = (secret,) if isinstance(secret, str) or secret is None else tuple(secret)
    # By its second: the stamp. (Not the datetime: two an hour apart in a DST change are equal.)
    return _maker_at(secrets, purpose, int(now.timestamp()))(payload)


@lru_cache(maxsize=64)
def _maker_at(secrets: tuple[str, ...], purpose: str, stamp: int) -> Callable[[list], str]:
    return _stamped_maker(_serializer(secrets, purpose, datetime.fromtimestamp(stamp, UTC)))


def _stamped_maker(serializer: URLSafeTimedSerializer) -> Callable[[list], str]:
    """`serializer.dumps` for a serializer of a fixed time (a run's links): the very token, with
    what itsdangerous works out anew for each (the signer, its derived key, the stamp, the HMAC
    of the key alone) worked out once. A run signs three links a digest; this takes a quarter
    of the time of itsdangerous's dumps."""
    signer = serializer.make_signer(serializer.salt)
    separator = want_bytes(signer.sep)
    stamp = signer.sign(b"").split(separator)[1]  # the time part, as itsdangerous writes it
    if signer.digest_method().name != "sha1":  # itsdangerous's default, which the test holds to
        return serializer.dumps
    keyed = hmac.new(signer.derive_key(), digestmod="sha1")  # each token's HMAC goes on from a copy

    def dumps(payload: list) -> str:
        value = _base64(_compact_json(payload).encode("utf-8")) + separator + stamp
        mac = keyed.copy()
        mac.update(value)
        return (value + separator + _base64(mac.digest())).decode("ascii")

    return dumps


def _compact_json(payload: list) -> str:
    """itsdangerous's compact JSON (its _CompactJSON: no ASCII escapes, no spaces) of a list of
    strings, which a token's payload always is; json's own encoder set up for each took three
    times as long. Anything else goes to that encoder."""
    try:
        return "[" + ",".join(map(_json_string, payload)) + "]"
    except TypeError:  # an item that is not a string
        return _COMPACT_JSON(payload)


_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_json_string = json.encoder.encode_basestring  # a str as JSON writes it with ensure_ascii=False
_URL_SAFE = bytes.maketrans(b"+/", b"-_")


def _base64(data: bytes) -> bytes:
    """itsdangerous's base64_encode (URL-safe, unpadded) of bytes, without its checks and wrappers."""
    return binascii.b2a_base64(data, newline=False).translate(_URL_SAFE).rstrip(b"=")


def read_token(
    secret: str | Sequence[str],
    purpose: str,
    token: str,
    max_age: timedelta | int | None = None,
    *,
    extra: str | None = None,
    now: datetime | None = None,
) -> str:
    """The subscriber id in a genuine token for `purpose` (and `extra`), at most `max_age` old.

    Raises `TokenExpired` for a genuine token that is too old, `TokenError` for anything else
    (altered, another secret, another purpose, another `extra`, not a token at all).
    """
    seconds = int(max_age.total_seconds()) if isinstance(max_age, timedelta) else max_age
    try:
        payload = _serializer(secret, purpose, now).loads(token, max_age=seconds)
    except SignatureExpired as error:
        raise TokenExpired(f"this {purpose} link has expired: ask for a new one ({error})") from None
    except BadData:
        raise TokenError(f"this {purpose} link is not valid: it was altered or cut short") from None
    if (
        not isinstance(payload, list)
        or not 1 <= len(payload) <= 2
        or not all(isinstance(item, str) for item in payload)
    ):
        raise TokenError(f"this {purpose} link is not valid: it holds no subscriber")
    found_extra = payload[1] if len(payload) == 2 else None
    if found_extra != extra:
        raise TokenError(f"this {purpose} link is not valid here: it was made for another page")
    return payload[0]
