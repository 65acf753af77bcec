"""Matching as a subscriber meets it: who gets which paper, why, and on which day.

Real papers (tests/fixtures/hf captures, and the whole history in ../shared/data where it is
present), real SQLite files, real subscription files.
"""

from __future__ import annotations

import gc
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.captures import read_capture
from bot.cli import main
from bot.match import WatchIndex, match_naively, match_papers
from bot.models import Subscriber, Watch
from bot.pipeline import backtest, import_files, match_days
from bot.query import parse_query
from bot.schedule import parse_schedule
from bot.store import open_store
from conftest import HF

DAY = "api_daily_papers_2026-06-12.json"  # 30 papers featured on 2026-06-12
EXAMPLES = Path(__file__).parents[1] / "subscriptions"


def real_papers(name: str = DAY):
    return list(read_capture(HF / name)[0].papers)


def watch(name: str, query: str | None = None, **options) -> Watch:
    return Watch(name=name, query=parse_query(query) if query else None, query_text=query or "", **options)


def subscriber(sid: str, *watches: Watch, **options) -> Subscriber:
    return Subscriber(
        id=sid,
        name=sid.title(),
        email=f"{sid}@example.org",
        timezone="UTC",
        schedule=parse_schedule("daily 08:00"),
        watches=watches,
        channels=(),
        **options,
    )


def test_a_paper_matched_by_several_watches_is_one_match_naming_them_all():
    papers = real_papers()
    alice = subscriber(
        "alice",
        watch("sparse", '"sparse attention"'),
        watch("minimax", "minimax"),
        watch("unrelated", "protein"),
    )
    found = match_papers(papers, WatchIndex([alice]))
    msa = [m for m in found if "MiniMax Sparse Attention" in m.paper.title]
    assert len(msa) == 1
    assert msa[0].watches == ("sparse", "minimax")
    assert {h.term for h in msa[0].hits} >= {"sparse attention", "minimax"}
    title_hits = [h for h in msa[0].hits if h.field == "title"]
    assert any(msa[0].paper.title[h.start : h.end].lower() == "sparse attention" for h in title_hits)


def test_two_watches_alike_of_one_subscriber_make_one_match_naming_both():
    papers = real_papers()
    twice = subscriber("twice", watch("first", "attention"), watch("second", "attention"))
    other = subscriber("other", watch("same", "attention"))
    index = WatchIndex([twice, other])
    found = match_papers(papers, index)
    assert found == match_naively(papers, index)
    mine = [m for m in found if m.subscriber_id == "twice"]
    assert mine and all(m.watches == ("first", "second") for m in mine)
    assert len(mine) == len({m.paper.id for m in mine}) == sum(m.subscriber_id == "other" for m in found)


def test_matches_are_per_subscriber_ranked_by_score_and_paused_ones_get_nothing():
    papers = real_papers()
    bob = subscriber("bob", watch("agents", "agent*"))
    carol = subscriber("carol", watch("agents", "agent*"), paused=True)
    found = match_papers(papers, WatchIndex([bob, carol]))
    assert found and {m.subscriber_id for m in found} == {"bob"}
    scores = [m.score for m in found]
    assert scores == sorted(scores, reverse=True)
    # a title hit weighs more than an abstract-only one
    in_title = [m for m in found if any(h.field == "title" for h in m.hits)]
    abstract_only = [m for m in found if {h.field for h in m.hits} == {"abstract"}]
    assert in_title and abstract_only
    assert min(m.score for m in in_title) > min(m.score for m in abstract_only)


def test_thresholds_filter_on_the_papers_counts():
    papers = real_papers()
    popular = subscriber("p", watch("popular", min_upvotes=20))
    coded = subscriber("c", watch("with code", has_code=True, min_stars=10))
    found = match_papers(papers, WatchIndex([popular, coded]))
    by = {sid: {m.paper.id for m in found if m.subscriber_id == sid} for sid in ("p", "c")}
    assert by["p"] == {p.id for p in papers if (p.upvotes or 0) >= 20} != set()
    assert by["c"] == {p.id for p in papers if p.github_repo and (p.github_stars or 0) >= 10} != set()


def test_matching_leaves_the_garbage_collector_as_it_found_it():
    papers = real_papers()
    index = WatchIndex([subscriber("bob", watch("agents", "agent*"))])
    enabled = gc.isenabled()
    try:
        gc.disable()
        assert match_papers(papers, index) and not gc.isenabled()
        gc.enable()
        assert match_papers(papers, index) and gc.isenabled()
        gc.freeze()  # as a server does before forking: matching must not unfreeze it
        frozen = gc.get_freeze_count()
        # Not unfrozen (the count would fall to 0) and nothing new frozen; a frozen object that
        # is freed meanwhile (a temporary of the test's) leaves the count, so it may drop by a few.
        assert match_papers(papers, index) and frozen // 2 < gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()
        (gc.enable if enabled else gc.disable)()


VOCABULARY = ["model*", "agent", "diffusion", '"language model"', "reasoning", "video", "RL", "benchmark"]
query_strategy = (
    st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=3).map(" ".join)
    | st.builds(
        lambda a, b, neg: f"({a} OR {b}) -{neg}",
        st.sampled_from(VOCABULARY),
        st.sampled_from(VOCABULARY),
        st.sampled_from(["survey", "image", "agent"]),
    )
    | st.builds(
        lambda a, b, c: f"({a} OR {b}) {c}",
        st.sampled_from(VOCABULARY),
        st.sampled_from(VOCABULARY),
        st.sampled_from(VOCABULARY),
    )
)
watch_strategy = st.builds(
    lambda q, up, code: watch("w", q, min_upvotes=up, has_code=code),
    query_strategy,
    st.sampled_from([0, 5, 30]),
    st.booleans(),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(watch_strategy, min_size=1, max_size=3), min_size=1, max_size=6))
def test_the_index_finds_exactly_what_every_query_on_every_paper_finds(watch_lists):
    papers = real_papers()
    people = [
        subscriber(f"s{n}", *(w.__class__(**{**_fields(w), "name": f"w{i}"}) for i, w in enumerate(ws)))
        for n, ws in enumerate(watch_lists)
    ]
    index = WatchIndex(people)
    assert match_papers(papers, index) == match_naively(papers, index)


def _fields(item) -> dict:
    return {name: getattr(item, name) for name in item.__slots__}


# -- over stored days: what a subscriber would have got, day by day --------------------------


def test_a_day_is_matched_with_the_counts_it_had_and_rising_fires_when_the_mark_is_crossed(tmp_path):
    """The 2025-10-31 listing as captured, then a later poll seeing more upvotes. The later
    poll's counts are derived in this test (the capture's counts plus 60), not a capture."""
    papers = real_papers("api_daily_papers_date_2025-10-31_reserialized.json")
    low = min(papers, key=lambda p: p.upvotes or 0)
    mark = (low.upvotes or 0) + 30
    alice = subscriber(
        "alice",
        watch("popular", min_upvotes=mark),
        watch("rising", rising=mark),
    )
    with open_store(tmp_path / "paperbot.db") as store:
        store.save_papers(papers, datetime(2025, 10, 31, 9, tzinfo=UTC), "api:date=2025-10-31")
        later = [p.replace(upvotes=(p.upvotes or 0) + 60) for p in papers]
        store.save_papers(later, datetime(2025, 11, 2, 9, tzinfo=UTC), "api:date=2025-10-31")
        days = {d.day: d for d in match_days(store, [alice], date(2025, 10, 31), date(2025, 11, 2))}

    first = days[date(2025, 10, 31)]
    assert first.papers == len(papers)
    # on its day, `popular` saw the counts of that day, not today's
    assert {m.paper.id for m in first.matches} == {p.id for p in papers if (p.upvotes or 0) >= mark}
    assert low.id not in {m.paper.id for m in first.matches}
    assert days[date(2025, 11, 1)].matches == ()
    risen = {m.paper.id: m for m in days[date(2025, 11, 2)].matches}
    crossed = {p.id for p in papers if (p.upvotes or 0) < mark <= (p.upvotes or 0) + 60}
    assert low.id in crossed and set(risen) == crossed
    assert all(m.watches == ("rising",) for m in risen.values())  # old papers never re-fire `popular`
    assert (
        f"crossed {mark} upvotes (from {low.upvotes or 0} to {(low.upvotes or 0) + 60})"
        in risen[low.id].reasons
    )


@pytest.fixture(scope="module")
def history_store(tmp_path_factory, request):
    history = request.getfixturevalue("history_path")
    path = tmp_path_factory.mktemp("history") / "paperbot.db"
    with open_store(path) as store:
        import_files(store, [str(history)])
        yield store


@pytest.fixture(scope="module")
def history_path():  # module-scoped twin of conftest's, for the module-scoped store above
    from conftest import SHARED_HISTORY

    if not SHARED_HISTORY.exists():
        pytest.skip(
            f"the whole-history capture is not here ({SHARED_HISTORY}): it lives in the team's shared/"
        )
    return SHARED_HISTORY


def test_on_the_real_history_author_finds_exactly_that_authors_papers(history_store):
    papers = list(history_store.iter_papers())
    first, last = history_store.papers()[-1].featured_on, history_store.latest_day()
    names = {"lin": "Dahua Lin", "lecun": "Yann LeCun", "levine": "Sergey Levine"}
    people = [subscriber(sid, watch("person", f'author:"{name}"')) for sid, name in names.items()]
    days = match_days(history_store, people, first, last)
    for sid, name in names.items():
        found = {m.paper.id for d in days for m in d.matches if m.subscriber_id == sid}
        assert found == {p.id for p in papers if name in p.authors}, name
        assert found


def test_on_the_real_history_rising_follows_the_stored_sightings(history_store):
    """2407.21783 (The Llama 3 Herd of Models) had 49 upvotes in the 2024-08-01 daily capture
    and 94 on the real papers page of that day captured days later (tests/fixtures/hf)."""
    page = read_capture(HF / "papers_date_2024-08-01.html")[0]
    watcher = subscriber(
        "x", watch("llama", "llama", rising=50), watch("popular llama", "llama", min_upvotes=50)
    )
    before = match_days(history_store, [watcher], date(2024, 8, 1), date(2024, 8, 1))[0]
    assert "2407.21783" not in {m.paper.id for m in before.matches}  # 49 upvotes that day

    history_store.save_papers(page.papers, datetime(2024, 8, 9, 12, tzinfo=UTC), "page:date=2024-08-01")
    day = match_days(history_store, [watcher], date(2024, 8, 9), date(2024, 8, 9))[0]
    risen = {m.paper.id: m for m in day.matches}
    assert risen["2407.21783"].watches == ("llama",)
    assert risen["2407.21783"].reasons == ("crossed 50 upvotes (from 49 to 94)",)
    again = match_days(history_store, [watcher], date(2024, 8, 1), date(2024, 8, 1))[0]
    assert again.matches == before.matches  # the past still reads as it was


# -- the commands --------------------------------------------------------------------------------


def run_cli(tmp_path, *args):
    env = {"PAPERBOT_CONFIG": "", "PAPERBOT_DB": None, "HF_TOKEN": None, "PAPERBOT_SUBSCRIPTIONS": None}
    base = ["--db", str(tmp_path / "paperbot.db"), "--subscriptions", str(EXAMPLES)]
    return CliRunner().invoke(main, base + list(args), env=env)


@pytest.fixture
def stored_day(tmp_path):
    assert run_cli(tmp_path, "import", str(HF / DAY)).exit_code == 0
    return tmp_path


def test_match_json_lines_say_who_which_paper_and_why(stored_day):
    result = run_cli(stored_day, "match", "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines, result.output
    msa = next(line for line in lines if "MiniMax Sparse Attention" in line["title"])
    assert msa["subscriber"] == "example-alice" and msa["day"] == "2026-06-12"
    assert "efficient attention" in msa["watches"]
    assert {"field", "term", "start", "end"} <= set(msa["terms"][0])
    assert any(t["term"] == "sparse attention" and t["field"] == "title" for t in msa["terms"])
    assert isinstance(msa["score"], float)


def test_match_text_and_unknown_subscriber(stored_day):
    shown = run_cli(
        stored_day, "match", "--since", "2026-06-12", "--until", "2026-06-12", "--subscriber", "Alice Example"
    )
    assert shown.exit_code == 0
    assert "MiniMax Sparse Attention" in shown.output and "sparse attention (title" in shown.output
    unknown = run_cli(stored_day, "match", "--subscriber", "nobody")
    assert (
        unknown.exit_code == 2
        and "no subscriber 'nobody'" in unknown.output
        and "example-alice" in unknown.output
    )


def test_backtest_shows_each_watch_per_day_and_in_total(stored_day):
    result = run_cli(stored_day, "backtest", "example-alice", "--days", "3")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "W1 = efficient attention" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:4] in ("2026", "tota")}
    assert list(rows) == ["2026-06-10", "2026-06-11", "2026-06-12", "total"]
    assert rows["2026-06-12"][1] == "30" and rows["2026-06-10"][1] == "0"
    assert int(rows["total"][2]) >= 1  # W1 matched MiniMax Sparse Attention
    assert "MiniMax Sparse Attention" in out


def test_backtest_function_over_an_empty_store(tmp_path):
    with open_store(tmp_path / "paperbot.db") as store:
        assert backtest(store, subscriber("x", watch("w", "agent")), 30) == []
