"""HTTP for paperbot: the only module that imports httpx.

Fetching (`HttpClient`) is polite and robust by default: a real User-Agent, timeouts, an
optional bearer token, retries with exponential backoff on connection errors, timeouts,
5xx and 429 (honouring Retry-After), and conditional requests (ETag / Last-Modified).

Posting (`Poster`, for Slack and webhooks) is the opposite on retries: one attempt per call,
since the delivery ledger retries on later runs and must know what happened. It follows no
redirects and, unless told otherwise, reaches only public addresses: a subscriber's URL
must not make paperbot POST to 127.0.0.1, a LAN host or a cloud metadata service. The
addresses are checked when the URL is resolved and again when the connection is opened, so
a DNS answer that changes in between (DNS rebinding) is refused too.
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpcore
import httpx
import tenacity

from bot import __version__
from bot.errors import FetchError, PermanentError, TransientError

__all__ = [
    "HttpClient",
    "Poster",
    "Response",
    "USER_AGENT",
    "check_public_host",
    "masked_url",
    "parse_retry_after",
    "refused_address",
]

log = logging.getLogger(__name__)

USER_AGENT = f"paperbot/{__version__} (+https://github.com/paperbot/paperbot)"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Response:
    """What a GET returned, once retries are over."""

    url: str
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def not_modified(self) -> bool:
        return self.status == 304


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


class HttpClient:
    """GET with retries. `sleep` is injectable so tests need not wait out real backoff."""

    def __init__(
        self,
        *,
        timeout: float = 20.0,
        retries: int = 4,
        backoff: float = 1.0,
        max_wait: float = 120.0,
        token: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            headers=headers, timeout=timeout, follow_redirects=True, transport=transport
        )
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.sleep = sleep

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _wait(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        backoff = self.backoff * 2 ** (state.attempt_number - 1)
        wanted = getattr(error, "retry_after", None)
        if wanted is not None and wanted > self.max_wait:
            raise FetchError(
                f"the server asks to wait {wanted:.0f} s (Retry-After), more than the "
                f"{self.max_wait:.0f} s paperbot waits; try again later"
            )
        return min(self.max_wait, max(backoff, wanted or 0.0))

    def get(
        self,
        url: str,
        params: dict | None = None,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
    ) -> Response:
        """GET `url`; 2xx and 304 return, 404 and other 4xx raise FetchError at once."""
        headers = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        request_url = str(httpx.URL(url, params=params or None))

        def attempt() -> Response:
            try:
                reply = self._client.get(request_url, headers=headers)
            except httpx.TimeoutException as error:
                raise _Retryable(f"timed out ({type(error).__name__})") from error
            except httpx.TransportError as error:
                raise _Retryable(f"connection failed: {error}") from error
            if reply.status_code in RETRY_STATUSES:
                after = parse_retry_after(reply.headers.get("Retry-After"))
                raise _Retryable(f"HTTP {reply.status_code}", after)
            if reply.status_code >= 400:
                raise FetchError(f"HTTP {reply.status_code} {reply.reason_phrase}", request_url)
            return Response(request_url, reply.status_code, reply.content, dict(reply.headers))

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(_Retryable),
            sleep=self.sleep,
            before_sleep=lambda s: log.warning(
                "GET %s failed (%s); retry %d of %d",
                request_url,
                s.outcome.exception(),
                s.attempt_number,
                self.retries,
            ),
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Retryable as error:
            raise FetchError(f"{error} after {self.retries + 1} attempts", request_url) from None
        except FetchError as error:
            if error.url is None:
                raise FetchError(str(error), request_url) from None
            raise


# -- posting (Slack, webhooks) -----------------------------------------------------------------


def masked_url(url: str) -> str:
    """`url` with everything after the host hidden, for logs and errors: a Slack webhook's path
    is its secret. "https://hooks.slack.com/services/T0/B0/x" -> "https://hooks.slack.com/…"."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "(an invalid URL)"
    if not parsed.host:
        return "(a URL without a host)"
    port = f":{parsed.port}" if parsed.port else ""
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{parsed.scheme}://{host}{port}/…"


def refused_address(address: str) -> str | None:
    """Why paperbot does not post to `address` ("a loopback address"), or None when it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") is no part of it
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 reaches 127.0.0.1
    for kind, flag in (
        ("an unspecified", ip.is_unspecified),
        ("a loopback", ip.is_loopback),
        ("a link-local", ip.is_link_local),  # 169.254.169.254: cloud metadata
        ("a multicast", ip.is_multicast),
        ("a reserved", ip.is_reserved),
        ("a private", ip.is_private),
        ("a non-public", not ip.is_global),  # e.g. 100.64.0.0/10, shared by carriers
    ):
        if flag:
            return f"{kind} address ({ip})"
    return None


def check_public_host(host: str, port: int, allow_private: bool = False) -> list[str]:
    """The addresses `host` resolves to, every one checked: PermanentError if any is not public
    (unless `allow_private`), TransientError if the name does not resolve now."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise TransientError(f"cannot resolve {host}: {error}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise TransientError(f"cannot resolve {host}: no address")
    if not allow_private:
        for address in addresses:
            why = refused_address(address)
            if why:
                raise PermanentError(
                    f"{host} resolves to {why}: paperbot posts only to public addresses "
                    "(set webhook.allow_private = true to allow it)"
                )
    return addresses


class _PublicOnlyBackend(httpcore.SyncBackend):
    """Opens connections only to addresses that pass `check_public_host`, at connect time."""

    def __init__(self, allow_private: bool):
        self.allow_private = allow_private

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        addresses = check_public_host(host, port, self.allow_private)
        failure: Exception | None = None
        for address in addresses:  # what socket.create_connection does, over the checked addresses
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
        assert failure is not None
        raise failure


def _public_transport(allow_private: bool) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport()
    # httpx has no public way to give its connection pool a network backend; the tests check
    # that this one is used (a name that turns private between check and connect is refused).
    transport._pool._network_backend = _PublicOnlyBackend(allow_private)  # type: ignore[attr-defined]
    return transport


class Poster:
    """POSTs a body once: no retries (the ledger's job), no redirects, public addresses only.

    Returns the reply, whatever its status, for the channel to classify; raises TransientError
    when there is no reply (timeout, connection refused or lost, a name that does not resolve)
    and PermanentError for a URL it will not post to. `transport` replaces the network (tests);
    the address check before the request still applies. Proxies from the environment are not
    used: a proxy would connect to addresses paperbot has not checked.
    """

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        allow_private: bool = False,
        transport: httpx.BaseTransport | None = None,
    ):
        self.timeout = timeout
        self.allow_private = allow_private
        self._client = httpx.Client(
            headers={"User-Agent": USER_AGENT},
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
            transport=transport or _public_transport(allow_private),
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Poster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Response:
        """POST `body` to `url` once, and return the reply."""
        shown = masked_url(url)
        try:
            target = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            raise PermanentError(f"{shown} is not a URL paperbot can post to") from None
        if target.scheme not in ("https", "http") or not target.host:
            raise PermanentError(f"{shown} is not an http(s) URL with a host")
        port = target.port or (443 if target.scheme == "https" else 80)
        check_public_host(target.host, port, self.allow_private)
        try:
            reply = self._client.post(target, content=body, headers=headers)
        except httpx.TimeoutException:
            raise TransientError(f"{shown} did not answer within {self.timeout:g} s") from None
        except httpx.TransportError as error:
            raise TransientError(f"cannot reach {shown}: {error or type(error).__name__}") from None
        return Response(shown, reply.status_code, reply.content, dict(reply.headers))
