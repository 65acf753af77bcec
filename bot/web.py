"""`paperbot serve`: the self-service web app (Starlette, served by uvicorn).

The only module that imports starlette and uvicorn. Pages and what they do:

    GET  /                              the subscribe form
    POST /subscribe                     check it, mail a confirmation link (double opt-in)
    GET  /check-query?q=...             the live syntax check of a watch query (JSON)
    GET  /confirm/{token}               what is being confirmed, with one button;
    POST /confirm/{token}                 which creates the subscriber (or updates them)
    GET  /unsubscribe/{token}           a page with one button; never unsubscribes by itself
    POST /unsubscribe/{token}           RFC 8058 one-click: List-Unsubscribe=One-Click, at once
    GET  /manage/{token}                watches with a 30-day preview, schedule, pause, feeds
    POST /manage/{token}/watch          preview, save, add or delete one watch
    POST /manage/{token}/delivery       schedule, time zone, pause
    GET  /digest/{period}/{token}       every match of one digest ("and N more")
    GET  /feed/{token}/{watch}          one watch's recent matches, as Atom

Who may do what is decided by signed tokens (`bot.tokens`), never by a login: the links in
a digest carry them, and the confirmation token carries the whole sign-up. Forms are
protected against cross-site posts by a signed double-submit cookie and an Origin check,
except the one-click unsubscribe, which RFC 8058 requires to work without cookies. Sign-ups
are rate-limited per address and per client address, in memory (one process; a restart
forgets). No page says whether an address is subscribed: a sign-up of a subscribed address
gets the same page, and a different mail ("already subscribed", with a manage link).
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit

import jinja2
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from bot import signup
from bot.config import Settings
from bot.deliver import rank_matches
from bot.errors import DeliveryError, QueryError, SubscriptionError
from bot.match import Match, WatchIndex, match_papers
from bot.models import Subscriber
from bot.pipeline import backtest, match_days, message_settings
from bot.query import format_query, parse_query
from bot.render import PaperCard, paper_card, templates_dir
from bot.store import Store, open_store
from bot.subscriptions import read_subscription
from bot.tokens import (
    DIGEST_MAX_AGE,
    MANAGE_MAX_AGE,
    UNSUBSCRIBE_MAX_AGE,
    TokenError,
    TokenExpired,
    make_token,
)
from bot.tokens import read_token as _read_token

__all__ = ["PREVIEW_DAYS", "RateLimiter", "create_app", "feed_url", "serve"]

log = logging.getLogger(__name__)

PREVIEW_DAYS = 30  # the manage page's preview, and the span of a feed
FEED_ENTRIES = 100
CSRF_COOKIE = "paperbot_csrf"
CSRF_MAX_AGE = timedelta(hours=12)
_DONE = {
    "saved": "Your watch is saved.",
    "added": "Your new watch is saved.",
    "deleted": "The watch is deleted.",
    "delivery": "Your schedule is saved.",
}


def _now() -> datetime:
    return datetime.now(UTC)


class RateLimiter:
    """At most `limit` events per key in any `window` (a sliding window), in memory."""

    def __init__(self, limit: int, window: timedelta, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window, self._clock = limit, window.total_seconds(), clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Count one event for `key`; False (and not counted) when the key is over its limit."""
        now = self._clock()
        with self._lock:
            if len(self._events) > 10_000:  # forget idle keys, so memory stays bounded
                self._events = {k: v for k, v in self._events.items() if v and v[-1] > now - self.window}
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - self.window:
                events.popleft()
            if len(events) >= self.limit:
                return False
            events.append(now)
            return True


@dataclass(frozen=True, slots=True)
class WatchPreview:
    """What one watch would have sent over the last days: counts and its best matches."""

    papers: int  # papers matched
    days_with: int  # days on which it matched something
    days: int  # days looked at that brought new papers
    top: tuple[PaperCard, ...]


def watch_previews(store: Store, subscriber: Subscriber, days: int = PREVIEW_DAYS) -> dict[str, WatchPreview]:
    """Per watch name, what the backtest over the last `days` stored days found."""
    found: dict[str, dict[str, Match]] = {w.name: {} for w in subscriber.watches}
    days_with: dict[str, set[date]] = {w.name: set() for w in subscriber.watches}
    replayed = backtest(store, subscriber, days)
    for day in replayed:
        for match in day.matches:
            for name in match.watches:
                found[name].setdefault(match.paper.id, match)
                days_with[name].add(day.day)
    return {
        name: WatchPreview(
            papers=len(matches),
            days_with=len(days_with[name]),
            days=sum(1 for day in replayed if day.papers),
            top=tuple(paper_card(m, rank) for rank, m in enumerate(rank_matches(matches.values())[:5], 1)),
        )
        for name, matches in found.items()
    }


def feed_url(site: str, secret, subscriber_id: str, watch: str) -> str:
    """The secret Atom feed of one watch. It never expires: a feed reader cannot follow a renewal;
    rotating web.secret or unsubscribing ends it."""
    token = make_token(secret, "feed", subscriber_id, watch)
    return f"{site}/feed/{token}/{quote(watch, safe='')}"


_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(value: object) -> str:
    """Text that XML 1.0 accepts: control characters (seen in scraped titles) become spaces."""
    return _XML_INVALID.sub(" ", str(value))


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir() / "web")),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2", "atom.j2"), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["xml"] = _xml_text
    return environment


def _root(request: Request) -> str:
    """Where the app is mounted ("" at the root): links in pages are relative to it."""
    return request.scope.get("root_path", "").rstrip("/")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _schedule_fields(text: str) -> dict:
    """The form's frequency, day and time for a schedule text; "keep" for one the form cannot show."""
    found = re.match(r"^(daily|weekly)(?:\s+on)?(?:\s+([a-z]+))?(?:\s+at)?\s+(\d{1,2}):(\d{2})$", text, re.I)
    if found:
        frequency, day, hour, minute = found.groups()
        day = next((d for d in signup.DAYS if day and d.startswith(day.lower())), "monday")
        return {"frequency": frequency.lower(), "day": day, "time": f"{int(hour):02d}:{minute}", "custom": ""}
    return {"frequency": "keep", "day": "monday", "time": "08:00", "custom": text}


class _Problem(Exception):
    """A page that says what went wrong, with a status."""

    def __init__(self, status: int, title: str, message: str):
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


class WebApp:
    """The handlers, over the settings, the database file and the subscriptions folder."""

    def __init__(
        self,
        settings: Settings,
        store_path: str | Path,
        subscriptions_dir: str | Path,
        *,
        clock: Callable[[], datetime] = _now,
        address_limit: RateLimiter | None = None,
        client_limit: RateLimiter | None = None,
    ):
        self.settings = settings
        self.store_path = str(store_path)
        self.folder = Path(subscriptions_dir)
        self.clock = clock
        with open_store(self.store_path) as store:
            mail = message_settings(settings, store)
        self.secret = mail.secret
        self.site = mail.site
        mail.sender_address  # noqa: B018  (checks mail.from now, not at the first sign-up)
        self.secure_cookies = self.site.startswith("https://")
        self.address_limit = address_limit or RateLimiter(3, timedelta(hours=1))
        self.client_limit = client_limit or RateLimiter(20, timedelta(hours=1))
        self.templates = _environment()

    # -- plumbing ----------------------------------------------------------------------------

    def _store(self) -> Store:
        # sqlite3 connections belong to the thread that made them: one per request.
        return open_store(self.store_path)

    def _read_token(
        self, purpose: str, token: str, max_age: timedelta | None, extra: str | None = None
    ) -> str:
        try:
            return _read_token(self.secret, purpose, token, max_age, extra=extra, now=self.clock())
        except TokenExpired as error:
            raise _Problem(410, "This link has expired", f"{error}. {self._renew_hint(purpose)}") from None
        except TokenError as error:
            raise _Problem(400, "This link is not valid", f"{error}. {self._renew_hint(purpose)}") from None

    @staticmethod
    def _renew_hint(purpose: str) -> str:
        if purpose in ("manage", "digest", "confirm"):
            return (
                "Sign up again with the same address on the subscribe page: the mail that comes "
                "holds a fresh link."
            )
        return "Use the link in your latest digest."

    def _csrf_valid(self, token: str | None) -> bool:
        if not token:
            return False
        try:
            _read_token(self.secret, "csrf", token, CSRF_MAX_AGE, now=self.clock())
        except TokenError:
            return False
        return True

    def render(self, request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        """A page, with a fresh CSP nonce and the form cookie (renewed when missing or old)."""
        nonce = secrets.token_urlsafe(16)
        csrf = request.cookies.get(CSRF_COOKIE)
        renew = not self._csrf_valid(csrf)
        if renew:
            # Signed, so a cookie planted from a sibling domain is refused; random, so it is
            # unguessable: a cross-site form cannot know the value it must repeat.
            csrf = make_token(self.secret, "csrf", secrets.token_urlsafe(16), now=self.clock())
        html = self.templates.get_template(name).render(
            nonce=nonce, csrf=csrf, root=_root(request), **context
        )
        response = HTMLResponse(html, status_code=status)
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["Cache-Control"] = "no-store"
        if renew:
            response.set_cookie(
                CSRF_COOKIE,
                csrf,
                max_age=int(CSRF_MAX_AGE.total_seconds()),
                httponly=True,
                secure=self.secure_cookies,
                samesite="strict",
                path="/",
            )
        return response

    def problem(self, request: Request, problem: _Problem) -> HTMLResponse:
        """The page that says what went wrong."""
        return self.render(
            request, "message.html.j2", problem.status, title=problem.title, message=problem.message
        )

    def _same_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:
            referer = request.headers.get("referer")
            if referer is None:
                return True  # not a browser's form post (those send Origin); the cookie still decides
            origin = _origin(referer)
        allowed = {_origin(self.site), f"{request.url.scheme}://{request.headers.get('host', '')}".lower()}
        return origin.lower() in allowed

    async def checked_form(self, request: Request) -> FormData:
        """The posted form, if it came from one of our pages (Origin, and the double-submit cookie)."""
        if not self._same_origin(request):
            raise _Problem(403, "Form refused", "This form was sent from another site: nothing was done.")
        form = await request.form()
        cookie = request.cookies.get(CSRF_COOKIE)
        sent = form.get("csrf")
        if not (
            isinstance(sent, str)
            and cookie
            and hmac.compare_digest(sent, cookie)
            and self._csrf_valid(cookie)
        ):
            raise _Problem(
                403,
                "Form expired",
                "This form is too old, or your browser did not send its cookie: go back, reload the "
                "page and send it again. Nothing was done.",
            )
        return form

    def _subscriber_file(self, subscriber_id: str) -> Path:
        try:
            path = signup.subscription_path(self.folder, subscriber_id)
        except ValueError:
            path = None
        if path is None or not path.is_file():
            raise _Problem(404, "No such subscription", "This subscription does not exist any more.")
        return path

    def _links(self, subscriber_id: str) -> dict:
        now = self.clock()
        return {
            "manage_url": f"{self.site}/manage/{make_token(self.secret, 'manage', subscriber_id, now=now)}",
            "unsubscribe_url": (
                f"{self.site}/unsubscribe/{make_token(self.secret, 'unsubscribe', subscriber_id, now=now)}"
            ),
        }

    # -- subscribe ---------------------------------------------------------------------------

    def _subscribe_page(self, request: Request, status: int = 200, values=None, errors=None) -> HTMLResponse:
        values = {
            "email": "",
            "query": "",
            "frequency": "daily",
            "day": "monday",
            "time": "08:00",
            "timezone": "",
            **(values or {}),
        }
        return self.render(
            request,
            "subscribe.html.j2",
            status,
            values=values,
            errors=errors or {},
            days=signup.DAYS,
            zones=signup.time_zones(),
        )

    async def home(self, request: Request) -> Response:
        """GET /: the subscribe form."""
        return self._subscribe_page(request)

    async def subscribe(self, request: Request) -> Response:
        """POST /subscribe: check the form, mail the confirmation link (to a subscriber: a manage link)."""
        try:
            form = await self.checked_form(request)
        except _Problem as problem:
            return self.problem(request, problem)
        values = {
            key: str(form.get(key, "")) for key in ("email", "query", "frequency", "day", "time", "timezone")
        }
        wanted, errors = await run_in_threadpool(signup.check_signup, values)
        if wanted is None:
            return self._subscribe_page(request, 400, values, errors)
        client = request.client.host if request.client else "unknown"
        if not self.client_limit.allow(client):
            return self.render(
                request,
                "message.html.j2",
                429,
                title="Too many sign-ups",
                message="Too many sign-ups came from your network in the last hour: try again later.",
            )
        # Over the per-address limit, the visitor sees the usual page and no mail goes: the
        # address is not flooded, and nothing tells whether it is subscribed.
        if self.address_limit.allow(signup.address_key(wanted.email)):
            try:
                await run_in_threadpool(self._send_signup_mail, wanted)
            except DeliveryError as error:
                log.error("the sign-up mail to %s was not sent: %s", wanted.email, error)
                return self.render(
                    request,
                    "message.html.j2",
                    503,
                    title="The mail could not be sent",
                    message="We could not send the confirmation mail just now: please try again later.",
                )
        else:
            log.info("sign-up of %s over its limit: no mail sent", wanted.email)
        return self.render(request, "sent.html.j2", email=wanted.email)

    def _send_signup_mail(self, wanted: signup.SignupRequest) -> None:
        now = self.clock()
        confirm_url = f"{self.site}/confirm/{signup.make_confirm_token(self.secret, wanted, now=now)}"
        existing = signup.find_subscriber(self.folder, wanted.email)
        active = False
        if existing is not None:
            with self._store() as store:
                active = store.suppression(existing, "*") is None
        if active:
            manage_url = self._links(existing)["manage_url"]
            message = signup.already_subscribed_email(self.settings, wanted, confirm_url, manage_url, now)
        else:  # new, or unsubscribed earlier: confirming subscribes again
            message = signup.confirmation_email(self.settings, wanted, confirm_url, now)
        signup.send_email(self.settings, message, now)

    async def check_query(self, request: Request) -> Response:
        """GET /check-query?q=: whether a query is valid, and how it is read, or where it is wrong (JSON)."""
        query = " ".join(request.query_params.get("q", "").split())
        try:
            signup.check_query(query)
        except QueryError as error:
            body = {"ok": False, "reason": error.reason, "query": error.query, "position": error.position}
        else:
            body = {"ok": True, "understood": format_query(parse_query(query))}
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    # -- confirm -----------------------------------------------------------------------------

    async def confirm(self, request: Request) -> Response:
        """GET: what the link confirms, with one button. POST: create (or update) the subscriber."""
        token = request.path_params["token"]
        try:
            wanted = signup.read_confirm_token(self.secret, token, now=self.clock())
        except TokenExpired as error:
            return self.problem(
                request, _Problem(410, "This link has expired", f"{error}. " + self._renew_hint("confirm"))
            )
        except TokenError as error:
            return self.problem(request, _Problem(400, "This link is not valid", str(error)))
        if request.method != "POST":
            # Confirming takes a POST: mail scanners open links, and must not subscribe anyone.
            return self.render(request, "confirm.html.j2", wanted=wanted, token=token)
        try:
            await self.checked_form(request)
        except _Problem as problem:
            return self.problem(request, problem)
        try:
            subscriber_id = await run_in_threadpool(self._confirm, wanted)
        except SubscriptionError as error:
            log.error("confirming %s: %s", wanted.email, error)
            return self.problem(
                request,
                _Problem(
                    500,
                    "Your subscription could not be saved",
                    "Its file has a problem the operator must fix; nothing was changed.",
                ),
            )
        return self.render(request, "confirmed.html.j2", wanted=wanted, **self._links(subscriber_id))

    def _confirm(self, wanted: signup.SignupRequest) -> str:
        with self._store() as store:
            subscriber_id, created = signup.confirm_signup(self.folder, store, wanted, self.clock())
        log.info("%s %s", "subscribed" if created else "updated", subscriber_id)
        return subscriber_id

    # -- unsubscribe -------------------------------------------------------------------------

    async def unsubscribe(self, request: Request) -> Response:
        """GET: a page with one button. POST, List-Unsubscribe=One-Click: unsubscribe at once (RFC 8058)."""
        token = request.path_params["token"]
        try:
            subscriber_id = self._read_token("unsubscribe", token, UNSUBSCRIBE_MAX_AGE)
        except _Problem as problem:
            return self.problem(request, problem)
        if request.method != "POST":  # GET or HEAD: mail scanners follow links
            return self.render(request, "unsubscribe.html.j2", token=token)
        # RFC 8058 one-click: no cookie, no Origin, no confirmation; the signed token is the proof.
        form = await request.form()
        if form.get("List-Unsubscribe") != "One-Click":
            return self.problem(
                request,
                _Problem(400, "Not unsubscribed", "This request did not say List-Unsubscribe=One-Click."),
            )
        await run_in_threadpool(self._unsubscribe, subscriber_id)
        return self.render(request, "unsubscribed.html.j2")

    def _unsubscribe(self, subscriber_id: str) -> None:
        with self._store() as store:
            signup.unsubscribe(store, self.folder, subscriber_id, self.clock())
        log.info("unsubscribed %s", subscriber_id)

    # -- manage ------------------------------------------------------------------------------

    def _manage_context(
        self,
        store: Store,
        subscriber_id: str,
        token: str,
        *,
        draft: dict | None = None,
        draft_subscriber: Subscriber | None = None,
        errors: dict | None = None,
        delivery_values: dict | None = None,
    ) -> dict:
        path = self._subscriber_file(subscriber_id)
        try:
            saved = read_subscription(path)
        except SubscriptionError as error:
            raise _Problem(
                500,
                "Your subscription has a problem",
                f"The operator must fix its file first: {signup.error_text(error)}",
            ) from None
        raw = signup.read_document(path).unwrap()
        shown = draft_subscriber or saved
        previews = watch_previews(store, shown)
        forms = []
        for index, table in enumerate(raw.get("watch", [])):
            others = [
                f"{key} = {', '.join(map(str, value)) if isinstance(value, list) else value}"
                for key, value in table.items()
                if key not in ("name", "query", "min_upvotes")
            ]
            forms.append(
                {
                    "index": str(index),
                    "original": table.get("name", ""),
                    "name": table.get("name", ""),
                    "query": table.get("query", ""),
                    "min_upvotes": table.get("min_upvotes", 0),
                    "others": others,
                }
            )
        new = {"index": "new", "original": "", "name": "", "query": "", "min_upvotes": 0, "others": []}
        forms.append(new)
        for form in forms:
            form["draft"] = bool(draft and draft["index"] == form["index"])
            if form["draft"]:
                form.update({k: draft[k] for k in ("name", "query", "min_upvotes")})
            form["error"] = (errors or {}).get(f"watch-{form['index']}")
            preview_name = form["name"] if form["draft"] and draft_subscriber else form["original"]
            form["preview"] = (
                previews.get(preview_name) if (form["index"] != "new" or form["draft"]) else None
            )
            if form["index"] != "new" and not form["draft"]:
                form["feed_url"] = feed_url(self.site, self.secret, subscriber_id, form["original"])
            else:
                form["feed_url"] = None
        schedule = getattr(saved.schedule, "text", str(saved.schedule))
        delivery = {**_schedule_fields(schedule), "timezone": saved.timezone, "paused": saved.paused}
        delivery.update(delivery_values or {})
        return {
            "subscriber": saved,
            "token": token,
            "watch_forms": forms,
            "delivery": delivery,
            "delivery_error": (errors or {}).get("delivery"),
            "schedule": schedule,
            "suppressed": store.suppression(subscriber_id, "*"),
            "days": signup.DAYS,
            "zones": signup.time_zones(),
            "preview_days": PREVIEW_DAYS,
            "unsubscribe_url": self._links(subscriber_id)["unsubscribe_url"],
        }

    async def manage(self, request: Request) -> Response:
        """GET: the subscriber's watches with their 30-day previews, schedule, pause, feeds."""
        token = request.path_params["token"]
        try:
            subscriber_id = self._read_token("manage", token, MANAGE_MAX_AGE)
            context = await run_in_threadpool(self._with_store, self._manage_context, subscriber_id, token)
        except _Problem as problem:
            return self.problem(request, problem)
        done = _DONE.get(request.query_params.get("done", ""))
        return self.render(request, "manage.html.j2", done=done, **context)

    def _with_store(self, function, *args, **kwargs):
        with self._store() as store:
            return function(store, *args, **kwargs)

    async def manage_watch(self, request: Request) -> Response:
        """POST: preview, save, add or delete one watch; the file is checked strictly before it changes."""
        return await self._manage_post(request, self._edit_watch)

    async def _manage_post(self, request: Request, edit: Callable[..., Response]) -> Response:
        """A POST from the manage page: its token and form checked, then `edit` run with the store."""
        token = request.path_params["token"]
        try:
            subscriber_id = self._read_token("manage", token, MANAGE_MAX_AGE)
            form = await self.checked_form(request)
            return await run_in_threadpool(self._with_store, edit, request, subscriber_id, token, form)
        except _Problem as problem:
            return self.problem(request, problem)

    def _edit_watch(self, store: Store, request: Request, subscriber_id: str, token: str, form: FormData):
        self._subscriber_file(subscriber_id)
        index = str(form.get("index", ""))
        original = str(form.get("original", ""))
        action = str(form.get("action", "save"))
        draft = {
            "index": index,
            "name": " ".join(str(form.get("name", "")).split()),
            "query": " ".join(str(form.get("query", "")).split()),
            "min_upvotes": str(form.get("min_upvotes", "0")).strip() or "0",
        }

        def change(document) -> None:
            if action == "delete" and index != "new":
                signup.delete_watch(document, int(index), original)
                return
            if not draft["name"]:
                raise ValueError("give the watch a name")
            if draft["query"]:
                try:
                    signup.check_query(draft["query"])
                except QueryError as error:
                    raise ValueError(f"the query is not valid: {error}") from None
            try:
                upvotes = int(draft["min_upvotes"])
            except ValueError:
                raise ValueError("write a whole number of 0 or more for the minimum upvotes") from None
            edit = signup.WatchEdit(draft["name"], draft["query"], upvotes)
            if index == "new":
                signup.add_watch(document, edit)
            else:
                signup.edit_watch(document, int(index), original, edit)

        try:
            changed = signup.update_subscription(self.folder, subscriber_id, change, save=action != "preview")
        except (SubscriptionError, ValueError) as error:
            problem = signup.error_text(error) if isinstance(error, SubscriptionError) else str(error)
            context = self._manage_context(
                store, subscriber_id, token, draft=draft, errors={f"watch-{index}": problem}
            )
            return self.render(request, "manage.html.j2", 400, done=None, **context)
        if action == "preview":
            context = self._manage_context(store, subscriber_id, token, draft=draft, draft_subscriber=changed)
            return self.render(request, "manage.html.j2", done=None, **context)
        done = "deleted" if action == "delete" else "added" if index == "new" else "saved"
        log.info("%s: watch %r %s", subscriber_id, draft["name"] or original, done)
        return RedirectResponse(f"{_root(request)}/manage/{token}?done={done}", status_code=303)

    async def manage_delivery(self, request: Request) -> Response:
        """POST: change the schedule, the time zone and the pause."""
        return await self._manage_post(request, self._edit_delivery)

    def _edit_delivery(self, store: Store, request: Request, subscriber_id: str, token: str, form: FormData):
        self._subscriber_file(subscriber_id)
        values = {key: str(form.get(key, "")).strip() for key in ("frequency", "day", "time", "timezone")}
        values["paused"] = form.get("paused") == "yes"

        def change(document) -> None:
            if values["frequency"] == "keep":
                schedule = str(document.get("schedule", "daily 08:00"))
            else:
                schedule = signup.schedule_text(values["frequency"], values["day"], values["time"])
            signup.edit_delivery(
                document, schedule=schedule, timezone=values["timezone"], paused=values["paused"]
            )

        try:
            changed = signup.update_subscription(self.folder, subscriber_id, change)
        except (SubscriptionError, ValueError) as error:
            problem = signup.error_text(error) if isinstance(error, SubscriptionError) else str(error)
            context = self._manage_context(
                store, subscriber_id, token, errors={"delivery": problem}, delivery_values=values
            )
            return self.render(request, "manage.html.j2", 400, done=None, **context)
        log.info(
            "%s: schedule %s (%s), paused=%s",
            subscriber_id,
            changed.schedule,
            changed.timezone,
            changed.paused,
        )
        return RedirectResponse(f"{_root(request)}/manage/{token}?done=delivery", status_code=303)

    # -- one digest's full list, and feeds -----------------------------------------------------

    async def digest(self, request: Request) -> Response:
        """GET: every match of one digest, for its "and N more" link."""
        period, token = request.path_params["period"], request.path_params["token"]
        try:
            subscriber_id = self._read_token("digest", token, DIGEST_MAX_AGE, extra=period)
            subscriber, matches = await run_in_threadpool(
                self._with_store, self._digest_matches, subscriber_id, period
            )
        except _Problem as problem:
            return self.problem(request, problem)
        cards = [paper_card(match, rank) for rank, match in enumerate(matches, 1)]
        return self.render(request, "full_digest.html.j2", subscriber=subscriber, period=period, papers=cards)

    def _digest_matches(
        self, store: Store, subscriber_id: str, period: str
    ) -> tuple[Subscriber, list[Match]]:
        subscriber = self._read_subscriber(subscriber_id)
        active = dataclasses.replace(subscriber, paused=False)
        for channel in subscriber.channels:
            delivery = store.find_delivery(subscriber_id, channel.name, period)
            if delivery is None or delivery.window_start is None or delivery.window_end is None:
                continue
            window = store.window(delivery.window_start, delivery.window_end)
            found = match_papers(window.papers, WatchIndex([active]), window.upvotes_before, window.risers)
            # The papers of this digest, and those it left for "and N more"; not the ones an
            # earlier digest of this channel already sent.
            mine = set(delivery.paper_ids)
            earlier = store.delivered_papers(subscriber_id, channel.name, [m.paper.id for m in found]) - mine
            return subscriber, rank_matches(m for m in found if m.paper.id not in earlier)
        days = _period_days(period)
        if days is None:
            raise _Problem(404, "No such digest", f"There is no digest {period!r} for you any more.")
        found = [m for day in match_days(store, [active], *days) for m in day.matches]
        return subscriber, rank_matches({m.paper.id: m for m in found}.values())

    def _read_subscriber(self, subscriber_id: str) -> Subscriber:
        try:
            return read_subscription(self._subscriber_file(subscriber_id))
        except SubscriptionError as error:
            raise _Problem(
                500,
                "Your subscription has a problem",
                f"The operator must fix it: {signup.error_text(error)}",
            ) from None

    async def feed(self, request: Request) -> Response:
        """GET: the Atom feed of one watch's matches over the last 30 days."""
        token, watch = request.path_params["token"], request.path_params["watch"]
        try:
            subscriber_id = self._read_token("feed", token, None, extra=watch)
            body = await run_in_threadpool(
                self._with_store, self._feed, subscriber_id, watch, str(request.url)
            )
        except _Problem as problem:
            return Response(problem.message + "\n", problem.status, media_type="text/plain; charset=utf-8")
        return Response(
            body,
            media_type="application/atom+xml; charset=utf-8",
            headers={"Cache-Control": "private, max-age=900"},
        )

    def _feed(self, store: Store, subscriber_id: str, watch_name: str, url: str) -> str:
        if store.suppression(subscriber_id, "*"):
            raise _Problem(410, "Unsubscribed", "This feed ended: its subscriber unsubscribed.")
        subscriber = self._read_subscriber(subscriber_id)
        watch = next((w for w in subscriber.watches if w.name == watch_name), None)
        if watch is None:
            raise _Problem(404, "No such watch", "This watch was renamed or deleted.")
        one = dataclasses.replace(subscriber, watches=(watch,))
        entries, seen = [], set()
        for day in reversed(backtest(store, one, PREVIEW_DAYS)):
            for match in rank_matches(day.matches):
                if match.paper.id in seen:
                    continue
                seen.add(match.paper.id)
                entries.append(
                    {"day": day.day, "card": paper_card(match, len(entries) + 1), "paper": match.paper}
                )
        entries = entries[:FEED_ENTRIES]
        updated = entries[0]["day"] if entries else (store.latest_day() or date(2000, 1, 1))
        identity = uuid.uuid5(uuid.NAMESPACE_URL, f"{self.site}/feed/{subscriber_id}/{watch_name}")
        return self.templates.get_template("feed.atom.j2").render(
            feed_id=identity.urn,
            watch=watch,
            updated=_atom_time(updated),
            self_url=url,
            site=self.site,
            entries=[{**e, "updated": _atom_time(e["day"])} for e in entries],
        )


def _atom_time(day: date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


def _period_days(period: str) -> tuple[date, date] | None:
    """The UTC days of a digest period the ledger does not know: "2026-06-12", "2026-W24", "…T18:00"."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2})?", period):
            day = date.fromisoformat(period[:10])
            return day, day
        found = re.fullmatch(r"(\d{4})-W(\d{2})", period)
        if found:
            monday = date.fromisocalendar(int(found.group(1)), int(found.group(2)), 1)
            return monday, monday + timedelta(days=6)
    except ValueError:
        return None
    return None


class _SecurityHeaders:
    """Headers every response carries: no sniffing, no framing, and no Referer leaving the site
    (links carry tokens; "same-origin" rather than "no-referrer", which would make browsers send
    `Origin: null` on our own form posts)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                    (b"x-frame-options", b"DENY"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    settings: Settings,
    store_path: str | Path,
    subscriptions_dir: str | Path,
    *,
    clock: Callable[[], datetime] = _now,
    address_limit: RateLimiter | None = None,
    client_limit: RateLimiter | None = None,
) -> Starlette:
    """The ASGI app. Raises SettingsError for a bad web.base_url or mail.from."""
    web = WebApp(
        settings,
        store_path,
        subscriptions_dir,
        clock=clock,
        address_limit=address_limit,
        client_limit=client_limit,
    )
    routes = [
        Route("/", web.home, methods=["GET"]),
        Route("/subscribe", web.home, methods=["GET"]),
        Route("/subscribe", web.subscribe, methods=["POST"]),
        Route("/check-query", web.check_query, methods=["GET"]),
        Route("/confirm/{token}", web.confirm, methods=["GET", "POST"]),
        Route("/unsubscribe/{token}", web.unsubscribe, methods=["GET", "POST"]),
        Route("/manage/{token}", web.manage, methods=["GET"]),
        Route("/manage/{token}/watch", web.manage_watch, methods=["POST"]),
        Route("/manage/{token}/delivery", web.manage_delivery, methods=["POST"]),
        Route("/digest/{period}/{token}", web.digest, methods=["GET"]),
        Route("/feed/{token}/{watch:path}", web.feed, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.web = web
    app.add_middleware(_SecurityHeaders)
    return app


def serve(
    settings: Settings,
    store_path: str | Path,
    subscriptions_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> None:
    """Serve the web app with uvicorn until interrupted. Behind a reverse proxy, uvicorn trusts
    X-Forwarded-For from the addresses in FORWARDED_ALLOW_IPS (default 127.0.0.1)."""
    app = create_app(settings, store_path, subscriptions_dir)
    log.info("serving on http://%s:%d (links point to %s)", host, port, app.state.web.site)
    # No access log: the paths carry the tokens (a manage link is a login); the app logs what it does.
    uvicorn.run(
        app, host=host, port=port, proxy_headers=True, log_level="info", access_log=False, server_header=False
    )
