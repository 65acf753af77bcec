"""HTTP for paperbot: the only module that imports httpx.

Polite and robust by default: a real User-Agent, timeouts, an optional bearer token,
retries with exponential backoff on connection errors, timeouts, 5xx and 429 (honouring
Retry-After), and conditional requests (ETag / Last-Modified).
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import tenacity

from bot import __version__
from bot.errors import FetchError

__all__ = ["HttpClient", "Response", "USER_AGENT"]

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
