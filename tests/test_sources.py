"""Parsing real Hugging Face captures: the JSON API and the papers page."""

from __future__ import annotations

import html
import json
from datetime import date, datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.errors import SourceError
from bot.sources import hf_api, hf_page
from conftest import capture_bytes, capture_json

API_CAPTURES = {
    "api_daily_papers_2026-06-12.json": (30, date(2026, 6, 12)),
    "api_daily_papers_2026-05-08_prettyprinted.json": (37, date(2026, 5, 8)),
    "api_daily_papers_date_2024-05-27_reserialized.json": (13, date(2024, 5, 27)),
    "api_daily_papers_date_2025-03-03_reserialized.json": (7, date(2025, 3, 3)),
    "api_daily_papers_date_2025-10-31_reserialized.json": (19, date(2025, 10, 31)),
    "api_daily_papers_date_2026-08-21_reserialized.json": (17, date(2026, 8, 21)),
}


@pytest.mark.parametrize("name", sorted(API_CAPTURES))
def test_every_api_capture_parses_with_exact_counts(name):
    count, day = API_CAPTURES[name]
    papers = hf_api.parse_daily_papers(capture_bytes(name), day=day)
    raw = capture_json(name)
    assert len(papers) == count == len(raw)
    assert [p.id for p in papers] == [item["paper"]["id"] for item in raw]
    assert all(p.featured_on == day for p in papers)
    assert all(p.title and "\n" not in p.title and "  " not in p.title for p in papers)
    assert all(p.abstract and "\n" not in p.abstract for p in papers)
    assert all(p.authors for p in papers)


def test_api_fields_spot_checked():
    papers = {p.id: p for p in hf_api.parse_daily_papers(capture_bytes("api_daily_papers_2026-06-12.json"))}
    msa = papers["2606.13392"]
    assert msa.title == "MiniMax Sparse Attention"
    assert msa.upvotes == 103
    assert msa.github_repo == "https://github.com/MiniMax-AI/MSA"
    assert msa.github_stars == 251
    assert msa.num_comments == 4
    first = papers["2606.00467"]
    assert first.authors == ("Etienne Casanova", "Rafal Kocielnik", "R. Michael Alvarez")
    assert first.organization == "caltech"
    assert first.organization_fullname == "California institute of technology"
    assert first.published_at == datetime(2026, 5, 30, tzinfo=timezone.utc)
    assert first.ai_keywords[:2] == ("zero-shot annotation", "LLM-as-a-judge")
    assert first.ai_summary.startswith("Large language models exhibit limited ability")
    assert first.thumbnail == "https://cdn-thumbnails.huggingface.co/social-thumbnails/papers/2606.00467.png"
    assert first.github_repo is None and first.project_page is None


def test_old_captures_lack_fields_and_get_none():
    papers = hf_api.parse_daily_papers(
        capture_bytes("api_daily_papers_date_2024-05-27_reserialized.json"), day=date(2024, 5, 27)
    )
    assert all(p.ai_summary is None and p.ai_keywords == () for p in papers)
    assert all(p.organization is None for p in papers)
    assert papers[0].featured_on == date(2024, 5, 27)  # no submittedOnDailyAt: the requested day


def test_arxiv_line_breaks_are_normalized():
    raw = capture_json("api_daily_papers_date_2024-05-27_reserialized.json")
    broken = [item for item in raw if "\n" in item["paper"]["summary"]]
    assert broken, "the capture carries arXiv line breaks"
    paper = hf_api.parse_item(broken[0])
    assert "\n" not in paper.abstract
    assert paper.abstract == " ".join(broken[0]["paper"]["summary"].split())


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("2407.21783", "2407.21783"), ("2407.21783v3", "2407.21783"), ("arXiv:2407.21783v1", "2407.21783")],
)
def test_canonical_id_drops_prefix_and_version(raw, expected):
    assert hf_api.canonical_id(raw) == expected


def test_single_paper_captures():
    gold = hf_api.parse_single_paper(capture_bytes("api_papers_2605.13301.json"))
    assert gold.id == "2605.13301"
    assert gold.github_repo == "https://github.com/Simplified-Reasoning/SU-01"
    assert gold.github_stars == 70
    assert gold.project_page == "https://simplified-reasoning.github.io/SU-01"
    assert gold.upvotes == 140
    assert gold.featured_on == date(2026, 5, 15)
    small = hf_api.parse_single_paper(capture_bytes("api_papers_2605.15320.json"))
    assert small.upvotes == 1 and small.github_repo is None and small.project_page


def test_page_2024_props_and_cards_give_the_same_13_papers():
    body = capture_bytes("papers_date_2024-08-01.html")
    listing = hf_page.parse_page(body)
    assert listing.method == "props"
    assert listing.day == date(2024, 8, 1)
    cards = hf_page.parse_page_cards(body)
    props = hf_page.parse_page_props(body)
    assert len(cards) == len(props) == 13
    assert [(p.id, p.upvotes) for p in cards] == [(p.id, p.upvotes) for p in props]
    assert [p.title for p in cards] == [p.title for p in props]
    assert props[0].id == "2407.21783" and props[0].title == "The Llama 3 Herd of Models"
    assert props[0].upvotes == 94 and props[0].num_comments == 5
    assert len(props[0].authors) > 500
    assert all(p.featured_on == date(2024, 8, 1) for p in props)


def test_page_without_props_falls_back_to_cards():
    # Derived in the test: the real 2024 page with its hydrater removed.
    body = capture_bytes("papers_date_2024-08-01.html").decode()
    start = body.index('<div class="SVELTE_HYDRATER contents" data-target="DailyPapers"')
    end = body.index(">", start)
    without = body[:start] + "<div>" + body[end + 1 :]
    listing = hf_page.parse_page(without, day=date(2024, 8, 1))
    assert listing.method == "cards"
    assert len(listing.papers) == 13
    assert listing.papers[0].upvotes == 94
    assert listing.papers[0].featured_on == date(2024, 8, 1)


def _page_2026(items: list, **props) -> str:
    """A 2026-layout page, built in the test: SOURCES.md says it embeds the API items in
    the DailyPapers hydrater with these keys; no capture of such a page exists."""
    data = {
        "dailyPapers": items,
        "dateString": "2026-06-12",
        "prevDate": "2026-06-11",
        "nextDate": "2026-06-15",
        "periodType": "day",
        "isTrending": False,
        "query": "",
    }
    data.update(props)
    attr = html.escape(json.dumps(data), quote=True)
    return (
        "<!doctype html><html><head><title>Daily Papers - Hugging Face</title></head><body>"
        '<nav><a href="/papers/date/2026-06-11">Previous</a></nav>'
        f'<div class="SVELTE_HYDRATER contents" data-target="DailyPapers" data-props="{attr}">'
        "</div></body></html>"
    )


def test_page_2026_layout_gives_the_same_papers_as_the_api():
    items = capture_json("api_daily_papers_2026-06-12.json")
    from_api = hf_api.parse_daily_papers(capture_bytes("api_daily_papers_2026-06-12.json"))
    listing = hf_page.parse_page(_page_2026(items))
    assert listing.method == "props"
    assert list(listing.papers) == from_api
    assert listing.day == date(2026, 6, 12)


def test_empty_day_page_is_not_an_error():
    listing = hf_page.parse_page(_page_2026([], dateString="2026-06-13"))
    assert listing.papers == () and listing.day == date(2026, 6, 13)


def test_page_with_neither_props_nor_cards_is_a_changed_layout():
    body = "<html><body><main><h1>Daily Papers</h1><p>Something new</p></main></body></html>"
    with pytest.raises(SourceError, match="layout changed"):
        hf_page.parse_page(body, url="http://hf.test/papers")


def test_cut_short_page_is_an_error():
    body = capture_bytes("papers_date_2024-08-01.html")
    with pytest.raises(SourceError, match="cut short"):
        hf_page.parse_page(body[: len(body) // 2])


def test_cut_short_json_is_an_error_naming_the_url():
    body = capture_bytes("api_daily_papers_2026-06-12.json")
    with pytest.raises(SourceError, match="not complete JSON") as caught:
        hf_api.parse_daily_papers(body[:5000], url="http://hf.test/api/daily_papers")
    assert "http://hf.test/api/daily_papers" in str(caught.value)


@pytest.mark.parametrize("missing", ["id", "title"])
def test_item_without_id_or_title_is_an_error(missing):
    items = capture_json("api_daily_papers_2026-06-12.json")
    del items[3]["paper"][missing]
    items[3].pop(missing, None)
    with pytest.raises(SourceError, match=f"item 3: .*{'id' if missing == 'id' else 'title'}"):
        hf_api.parse_items(items)


def test_api_answering_an_object_is_an_error():
    with pytest.raises(SourceError, match="expected a JSON array"):
        hf_api.parse_daily_papers(b'{"error": "Invalid date"}')


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=2000))
def test_parsers_given_arbitrary_bytes_raise_only_source_error(body):
    for parse in (hf_api.parse_daily_papers, hf_api.parse_single_paper, hf_page.parse_page):
        try:
            parse(body)
        except SourceError:
            pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "paper": st.dictionaries(
                    st.sampled_from(
                        [
                            "id",
                            "title",
                            "authors",
                            "upvotes",
                            "publishedAt",
                            "summary",
                            "ai_keywords",
                            "githubStars",
                            "submittedOnDailyAt",
                            "organization",
                        ]
                    ),
                    json_values,
                )
            }
        ),
        max_size=4,
    )
)
def test_api_parser_given_odd_json_raises_only_source_error(items):
    body = json.dumps(items).encode()
    try:
        papers = hf_api.parse_daily_papers(body)
    except SourceError:
        return
    assert all(p.id and p.title for p in papers)
