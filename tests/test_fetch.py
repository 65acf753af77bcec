"""Fetching through a real HTTP server on 127.0.0.1 that replays real Hugging Face captures."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner
from werkzeug import Response

from bot.cli import main
from bot.errors import FetchError, SourceError
from bot.fetch import Listing, parse_listing
from bot.pipeline import make_client, poll
from bot.sources.hf_api import parse_daily_papers
from conftest import capture_bytes, capture_json

DAY = "api_daily_papers_2026-05-08_prettyprinted.json"  # 37 real items


@pytest.fixture
def settings(make_settings, httpserver):
    return make_settings(hf_base_url=httpserver.url_for("").rstrip("/"), hf_backoff=0.01, hf_retries=3)


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(settings, sleeps):
    with make_client(settings, sleep=sleeps.append) as made:
        yield made


def snapshot(store):
    """What a failure must leave untouched: every paper row and every sighting."""
    return (
        list(store.db.query("select * from papers order by id")),
        list(store.db.query("select * from sightings order by id")),
    )


def serve_pages(httpserver, items, page_size, **query):
    """Serve `items` as the paginated API does: ?p=N&limit=K."""
    for number in range(len(items) // page_size + 1):
        chunk = items[number * page_size : (number + 1) * page_size]
        httpserver.expect_request(
            "/api/daily_papers", query_string={**query, "p": str(number), "limit": str(page_size)}
        ).respond_with_json(chunk)


def test_pagination_reads_until_a_short_page(httpserver, make_settings, store, sleeps):
    items = capture_json(DAY)
    serve_pages(httpserver, items, 10, date="2026-05-08")
    settings = make_settings(hf_base_url=httpserver.url_for("").rstrip("/"), hf_page_size=10)
    with make_client(settings, sleep=sleeps.append) as client:
        outcome = poll(store, client, settings, Listing("date", "2026-05-08"))
    assert len(outcome.result.papers) == 37
    assert [p.id for p in outcome.result.papers] == [i["paper"]["id"] for i in items]
    assert store.count_papers() == 37 and store.count_sightings() == 37
    pages = [request.args["p"] for request, _ in httpserver.log]
    assert pages == ["0", "1", "2", "3"]
    assert all(r.headers["User-Agent"].startswith("paperbot/") for r, _ in httpserver.log)
    ranks = [row["rank"] for row in store.db.query("select rank from sightings order by rank")]
    assert ranks == list(range(1, 38))


def test_429_with_retry_after_then_success(httpserver, settings, client, store, sleeps):
    httpserver.expect_oneshot_request("/api/daily_papers").respond_with_data(
        "slow down", status=429, headers={"Retry-After": "7"}
    )
    httpserver.expect_request("/api/daily_papers").respond_with_data(capture_bytes(DAY))
    outcome = poll(store, client, settings, Listing("latest"))
    assert len(outcome.result.papers) == 37
    assert sleeps == [7.0]  # waited what the server asked, not the 0.01 s backoff
    assert len(httpserver.log) == 2


def test_retry_after_beyond_the_limit_fails_without_waiting(httpserver, make_settings, store, sleeps):
    settings = make_settings(hf_base_url=httpserver.url_for("").rstrip("/"), hf_max_wait=60)
    httpserver.expect_request("/api/daily_papers").respond_with_data(
        "", status=429, headers={"Retry-After": "3600"}
    )
    with make_client(settings, sleep=sleeps.append) as client, pytest.raises(FetchError, match="3600 s"):
        poll(store, client, settings, Listing("latest"), fallback=False)
    assert sleeps == []


def test_500_then_success(httpserver, settings, client, store, sleeps):
    httpserver.expect_oneshot_request("/api/daily_papers").respond_with_data("oops", status=500)
    httpserver.expect_oneshot_request("/api/daily_papers").respond_with_data("oops", status=503)
    httpserver.expect_request("/api/daily_papers").respond_with_data(capture_bytes(DAY))
    outcome = poll(store, client, settings, Listing("latest"))
    assert len(outcome.result.papers) == 37
    assert sleeps == [0.01, 0.02]  # exponential backoff
    assert store.fetch_health()[0]["last"]["status"] == "ok"


def test_a_timeout_is_retried(httpserver, make_settings, store, sleeps):
    settings = make_settings(hf_base_url=httpserver.url_for("").rstrip("/"), hf_timeout=0.3)

    def slow(request):
        time.sleep(1.0)
        return Response(capture_bytes(DAY))

    httpserver.expect_oneshot_request("/api/daily_papers").respond_with_handler(slow)
    httpserver.expect_request("/api/daily_papers").respond_with_data(capture_bytes(DAY))
    with make_client(settings, sleep=sleeps.append) as client:
        outcome = poll(store, client, settings, Listing("latest"))
    # The test server answers one request at a time, so a retry may time out too while
    # the slow answer is still being written; what matters is that retrying got through.
    assert len(outcome.result.papers) == 37 and len(sleeps) >= 1


def test_timeouts_that_never_end_fail_and_change_nothing(httpserver, make_settings, store, sleeps):
    settings = make_settings(hf_base_url=httpserver.url_for("").rstrip("/"), hf_timeout=0.2, hf_retries=1)
    store.save_papers(
        parse_daily_papers(capture_bytes(DAY)), datetime(2026, 5, 8, tzinfo=timezone.utc), "api:latest"
    )
    before = snapshot(store)
    assert len(before[0]) == 37

    def slow(request):
        time.sleep(0.5)
        return Response(b"[]")

    httpserver.expect_request("/api/daily_papers").respond_with_handler(slow)
    with make_client(settings, sleep=sleeps.append) as client, pytest.raises(FetchError, match="timed out"):
        poll(store, client, settings, Listing("latest"), fallback=False)
    assert snapshot(store) == before
    health = store.fetch_health()[0]
    assert health["errors_in_a_row"] == 1 and "timed out" in health["last"]["error"]


def test_truncated_json_falls_back_to_the_page(httpserver, settings, client, store):
    body = capture_bytes(DAY)
    httpserver.expect_request("/api/daily_papers").respond_with_data(body[: len(body) // 3])
    httpserver.expect_request("/papers/date/2024-08-01").respond_with_data(
        capture_bytes("papers_date_2024-08-01.html"), content_type="text/html"
    )
    outcome = poll(store, client, settings, Listing("date", "2024-08-01"))
    assert outcome.result.source == "page" and len(outcome.result.papers) == 13
    statuses = [(h["source"], h["last"]["status"]) for h in store.fetch_health()]
    assert sorted(statuses) == [("api", "error"), ("page", "ok")]


def test_truncated_json_and_a_broken_page_fail_and_change_nothing(httpserver, settings, client, store):
    poll_ok = capture_bytes(DAY)
    httpserver.expect_oneshot_request("/api/daily_papers").respond_with_data(poll_ok)
    poll(store, client, settings, Listing("latest"))
    before = snapshot(store)
    assert len(before[0]) == 37
    httpserver.clear()
    httpserver.expect_request("/api/daily_papers").respond_with_data(poll_ok[:4000])
    httpserver.expect_request("/papers").respond_with_data(
        "<html><body><h1>Daily Papers</h1><p>new layout</p></body></html>", content_type="text/html"
    )
    with pytest.raises(SourceError) as caught:
        poll(store, client, settings, Listing("latest"))
    message = str(caught.value)
    assert "not complete JSON" in message and "layout changed" in message
    assert snapshot(store) == before
    errors = list(store.db.query("select source, error from fetches where status = 'error' order by id"))
    assert [e["source"] for e in errors] == ["api", "page"]
    assert httpserver.url_for("/api/daily_papers") in errors[0]["error"]


def test_page_with_no_cards_and_no_props_is_loud(httpserver, settings, client, store):
    httpserver.expect_request("/papers/trending").respond_with_data(
        "<html><body><main>Trending papers</main></body></html>", content_type="text/html"
    )
    with pytest.raises(SourceError, match="layout changed"):
        poll(store, client, settings, Listing("trending"), source="page")
    assert store.count_papers() == 0


def test_empty_weekend_day_is_not_an_error(httpserver, settings, client, store):
    httpserver.expect_request(
        "/api/daily_papers", query_string={"date": "2026-06-13", "p": "0", "limit": "100"}
    ).respond_with_json([])
    outcome = poll(store, client, settings, Listing("date", "2026-06-13"))
    assert outcome.result.papers == ()
    assert store.fetch_health()[0]["last"]["status"] == "empty"


def test_empty_latest_listing_is_an_error(httpserver, settings, client, store):
    httpserver.expect_request("/api/daily_papers").respond_with_json([])
    with pytest.raises(SourceError, match="holds no papers"):
        poll(store, client, settings, Listing("latest"), fallback=False)


def test_conditional_request_with_etag(httpserver, settings, client, store):
    def conditional(request):
        if request.headers.get("If-None-Match") == '"v1"':
            return Response(status=304)
        return Response(capture_bytes(DAY), headers={"ETag": '"v1"'}, content_type="application/json")

    httpserver.expect_request("/api/daily_papers").respond_with_handler(conditional)
    first = poll(store, client, settings, Listing("latest"))
    second = poll(store, client, settings, Listing("latest"))
    assert len(first.result.papers) == 37 and not first.result.not_modified
    assert second.result.not_modified
    assert store.count_sightings() == 37  # the 304 added nothing
    assert httpserver.log[1][0].headers["If-None-Match"] == '"v1"'
    assert store.fetch_health()[0]["last"]["status"] == "not-modified"


def test_token_is_sent_as_bearer(httpserver, make_settings, store, monkeypatch):
    settings = make_settings(hf_base_url=httpserver.url_for("").rstrip("/"))
    settings = type(settings)({**settings, "hf.token": "hf_secret_token"}, dict(settings.origins))
    httpserver.expect_request(
        "/api/daily_papers", headers={"Authorization": "Bearer hf_secret_token"}
    ).respond_with_data(capture_bytes(DAY))
    with make_client(settings) as client:
        poll(store, client, settings, Listing("latest"))
    assert store.count_papers() == 37


@pytest.mark.parametrize(
    ("listing", "path", "query"),
    [
        (Listing("week", "2026-W19"), "/api/daily_papers", {"week": "2026-W19"}),
        (Listing("month", "2026-05"), "/api/daily_papers", {"month": "2026-05"}),
        (Listing("trending"), "/api/daily_papers", {"sort": "trending"}),
    ],
)
def test_week_month_trending_requests(httpserver, settings, client, store, listing, path, query):
    httpserver.expect_request(path, query_string={**query, "p": "0", "limit": "100"}).respond_with_data(
        capture_bytes(DAY)
    )
    outcome = poll(store, client, settings, listing)
    assert len(outcome.result.papers) == 37
    assert store.fetch_health()[0]["listing"] == listing.key


def test_search_reads_the_search_api(httpserver, settings, client, store):
    items = capture_json(DAY)[:5]
    httpserver.expect_request("/api/papers/search", query_string={"q": "sparse attention"}).respond_with_json(
        items
    )
    outcome = poll(store, client, settings, Listing("search", "sparse attention"))
    assert [p.id for p in outcome.result.papers] == [i["paper"]["id"] for i in items]


def test_404_is_not_retried(httpserver, settings, client, store, sleeps):
    httpserver.expect_request("/api/daily_papers").respond_with_data("no", status=404)
    with pytest.raises(FetchError, match="404"):
        poll(store, client, settings, Listing("latest"), fallback=False)
    assert sleeps == [] and len(httpserver.log) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"date_": "2026-13-01"}, "not a date"),
        ({"week": "2026-21"}, "ISO week"),
        ({"month": "May"}, "YYYY-MM"),
        ({"date_": "2026-05-01", "trending": True}, "only one"),
    ],
)
def test_listing_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        parse_listing(**options)


def cli(tmp_path, httpserver, *args):
    env = {
        "PAPERBOT_HF_BASE_URL": httpserver.url_for("").rstrip("/"),
        "PAPERBOT_HF_BACKOFF": "0.01",
        "PAPERBOT_HF_RETRIES": "1",
        "PAPERBOT_CONFIG": "",
    }
    return CliRunner().invoke(main, ["--db", str(tmp_path / "cli.db"), *args], env=env)


def test_cli_fetch_date_and_status(tmp_path, httpserver):
    httpserver.expect_request("/api/daily_papers").respond_with_data(capture_bytes(DAY))
    result = cli(tmp_path, httpserver, "fetch", "--date", "2026-05-08")
    assert result.exit_code == 0, result.output
    assert "37 papers from the api, 37 new" in result.output
    status = cli(tmp_path, httpserver, "status")
    assert "37 papers" in status.output and "date=2026-05-08" in status.output and "ok" in status.output


def test_cli_fetch_failure_exits_non_zero_and_is_shown_in_status(tmp_path, httpserver):
    httpserver.expect_request("/api/daily_papers").respond_with_data(b'[{"paper": {"id": "2405.1"')
    httpserver.expect_request("/papers").respond_with_data("<html><body></body></html>")
    result = cli(tmp_path, httpserver, "fetch")
    assert result.exit_code == 3
    assert "both sources failed" in result.output
    status = cli(tmp_path, httpserver, "status")
    assert "0 papers" in status.output and "errors in a row" in status.output


def test_cli_fetch_source_page(tmp_path, httpserver):
    httpserver.expect_request("/papers/date/2024-08-01").respond_with_data(
        capture_bytes("papers_date_2024-08-01.html"), content_type="text/html"
    )
    result = cli(tmp_path, httpserver, "fetch", "--date", "2024-08-01", "--source", "page")
    assert result.exit_code == 0, result.output
    assert "13 papers from the page" in result.output
    listed = cli(tmp_path, httpserver, "papers", "--json")
    rows = [json.loads(line) for line in listed.output.splitlines() if line.startswith("{")]
    assert len(rows) == 13 and rows[0]["title"] == "The Llama 3 Herd of Models"
