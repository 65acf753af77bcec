"""Rendering digests: golden files over a real capture, escaping, highlighting, the size limit.

The golden files in tests/golden/ are what example-alice gets from the real capture of
2026-06-12 at her 08:00. A change to them shows as a unified diff; after checking it,
`UPDATE_GOLDEN=1 python -m pytest tests/test_render.py tests/test_message.py` rewrites them.
"""

from __future__ import annotations

import dataclasses
import html
import os
import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2
import pytest

from bot.captures import read_capture
from bot.match import Match, WatchIndex, match_papers
from bot.message import MessageSettings, digest_links
from bot.models import Paper
from bot.query import Hit
from bot.render import (
    _LAYOUTS,
    MAX_HTML_BYTES,
    DigestLinks,
    build_digest,
    digest_period,
    make_environment,
    paper_card,
    render_digest,
    templates_dir,
)
from bot.subscriptions import read_subscription
from conftest import check_golden

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = Path(__file__).parent / "fixtures" / "hf" / "api_daily_papers_2026-06-12.json"
ALICE = ROOT / "subscriptions" / "example-alice.toml"
NOW = datetime(2026, 6, 12, 6, 0, tzinfo=UTC)  # 08:00 in Berlin: alice's "daily 08:00"
SETTINGS = MessageSettings(
    sender="paperbot <digest@paperbot.example.org>",
    base_url="https://paperbot.example.org",
    secret="test-secret-not-for-production",
)
LINKS = DigestLinks(
    list_url="https://paperbot.example.org/digest/all",
    unsubscribe_url="https://paperbot.example.org/unsubscribe/t",
    manage_url="https://paperbot.example.org/manage/t",
)
MARK = re.compile(r"<mark\b[^>]*>(.*?)</mark>")


def capture_papers() -> list[Paper]:
    return [paper for capture in read_capture(CAPTURE) for paper in capture.papers]


def alice_digest():
    alice = read_subscription(ALICE)
    matches = match_papers(capture_papers(), WatchIndex([alice]))
    period, label = digest_period(alice, NOW)
    links = digest_links(SETTINGS, alice.id, period, now=NOW)
    return build_digest(alice, matches, generated_at=NOW, links=links, period=period, label=label)


def subscriber_with(tmp_path: Path, watches: str, **top):
    """A real subscriber, read from a TOML file written here."""
    lines = ['name = "Bob"', 'email = "bob@example.org"', 'timezone = "America/Los_Angeles"']
    lines += [f"{key} = {value}" for key, value in top.items()]
    path = tmp_path / "bob.toml"
    watches = watches or '[[watch]]\nname = "anything"\nquery = "the"\n'
    path.write_text("\n".join(lines) + "\n" + textwrap.dedent(watches), encoding="utf-8")
    return read_subscription(path)


def digest_of(subscriber, papers, **options):
    matches = match_papers(papers, WatchIndex([subscriber]), **options)
    return build_digest(subscriber, matches, generated_at=NOW, links=LINKS)


# -- the golden digest ---------------------------------------------------------------------


def test_example_alice_digest_matches_its_golden_files():
    digest = alice_digest()
    rendered = render_digest(digest)

    assert rendered.subject == "2 papers · Fri 12 Jun 2026 · MiniMax Sparse Attention and 1 more"
    check_golden("example-alice_2026-06-12.html", rendered.html)
    check_golden("example-alice_2026-06-12.txt", rendered.text)


def inlined_whole(digest, environment) -> str:
    """The HTML as inlining the whole page would make it: the frame with every card rendered
    in place, then CSS-inlined at once (render_digest inlines each card once, and the frame)."""
    from bot.render import _inliner

    cards, values = whole_values(digest, environment)
    rows = "".join(environment.get_template("card.html.j2").render(p=card) for card in cards)
    page = environment.get_template("digest.html.j2").render(values, cards=rows)
    return _inliner().inline(page).rstrip() + "\n"


def text_whole(digest, environment) -> str:
    """The plain text as rendering it whole makes it: digest.txt.j2 with every card's text in
    place, tidied at once (render_digest tidies each card once, and the frame around them)."""
    from bot.render import _tidy_text

    cards, values = whole_values(digest, environment)
    text = "".join(environment.get_template("card.txt.j2").render(p=card) for card in cards)
    return _tidy_text(environment.get_template("digest.txt.j2").render(values, cards=text))


def whole_values(digest, environment) -> tuple[list, dict]:
    """The cards render_digest shows, ranked, and what the frame templates are given."""
    from bot.render import paper_card

    rendered = render_digest(digest, environment)
    cards = [paper_card(match, rank) for rank, match in enumerate(digest.matches[: rendered.shown], 1)]
    subscriber = digest.subscriber
    return cards, {
        "digest": digest,
        "subscriber": subscriber,
        "schedule": subscriber.schedule.text,
        "papers": cards,
        "preheader": " · ".join(card.title_plain for card in cards[:3]),
        "shown": len(cards),
        "total": digest.total,
        "more": digest.total - len(cards),
        "watch_count": len(subscriber.watches),
        "generated_local": digest.generated_at.astimezone(ZoneInfo(subscriber.timezone)),
        "subject": rendered.subject,
    }


def test_cards_inlined_one_by_one_make_the_page_that_inlining_it_whole_makes(tmp_path):
    """Every paper of the real capture, in digests of several sizes, with highlights in titles,
    snippets, authors and organizations, rising reasons, and a card shared by two digests."""
    environment = make_environment()
    papers = capture_papers()
    watches = """
        [[watch]]
        name = "models & <agents>"
        query = "model* OR agent* OR learning OR data"
        [[watch]]
        name = "people"
        query = "author:Li OR author:Wang OR org:nvidia"
        [[watch]]
        name = "rising"
        rising = 1
    """
    bob = subscriber_with(tmp_path, watches, max_papers=50)
    checked = 0
    # The inbox's preview line, as the templates once printed it: a loop over the first titles.
    preview = environment.from_string(
        "{% for p in papers[:3] %}{{ p.title_plain }}{% if not loop.last %} · {% endif %}{% endfor %}"
    )
    for size in (1, 2, 7, len(papers)):
        digest = digest_of(bob, papers[:size], upvotes_before={p.id: 0 for p in papers})
        rendered = render_digest(digest, environment)
        assert rendered.html == inlined_whole(digest, environment)
        assert rendered.text == text_whole(digest, environment)
        shown = re.search('<div class="pre"[^>]*>(.*?)\u2007', rendered.html).group(1)
        assert html.unescape(shown) == preview.render(papers=whole_values(digest, environment)[0])
        checked += len(digest.matches)
    assert checked > 30
    assert any(shared for _, shared in rendered.text_parts), "the cards' text is shared"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda frame, card: (frame, card), "   https://huggingface.co/papers/"),
        (
            lambda frame, card: (frame.replace("{{ cards }}", "{{ cards | indent(2) }}"), card),
            "\n     https://",
        ),
        (lambda frame, card: (frame.replace("\n{{ cards }}", "Papers: {{ cards }}"), card), "Papers:\n1. "),
        (lambda frame, card: (frame, card + "   (end of {{ p.rank }})"), "(end of 1)\n2. "),
        (
            lambda frame, card: (frame, card.replace("\n{{ p.rank }}. ", "{{ p.rank }}. ") + "\n \n\n"),
            "\n\n2. ",
        ),
        (
            lambda frame, card: (
                frame.replace("{{ cards }}", "{% autoescape true %}{{ cards }}{% endautoescape %}"),
                card.replace("{{ p.title | marked }}", "{{ p.title | marked }} <{{ p.rank }}> &"),
            ),
            "&lt;1&gt; &amp;",
        ),
        (
            lambda frame, card: (
                frame.replace(
                    "{{ cards }}",
                    "{% if false %}{% block c %}{{ cards }}{% endblock %}{% endif %}"
                    "{{ self.c() | indent(2) }}",
                ),
                card,
            ),
            "\n     https://",
        ),
    ],
    ids=[
        "as shipped",
        "cards indented",
        "cards after text",
        "card ends mid-line",
        "blank lines after",
        "cards escaped",
        "a block filtered",
    ],
)
def test_the_text_made_of_tidied_cards_is_the_text_tidied_whole(tmp_path, edit, expected):
    """The plain text is tidied per card once, and per digest only around the cards: it must
    read as tidying the whole text would, for the templates as shipped and as someone may edit
    them (a template that transforms or misplaces the cards is rendered and tidied whole)."""
    frame, card = (templates_dir() / name for name in ("digest.txt.j2", "card.txt.j2"))
    edited = edit(frame.read_text(encoding="utf-8"), card.read_text(encoding="utf-8"))
    environment = edited_environment(tmp_path, {"digest.txt.j2": edited[0], "card.txt.j2": edited[1]})
    for digest in models_digests(tmp_path):
        text = render_digest(digest, environment).text
        assert text == text_whole(digest, environment)
    assert digest.total > 5 and expected in text


def edited_environment(tmp_path, texts: dict[str, str]) -> jinja2.Environment:
    """An environment of the shipped templates, copied, with those named in `texts` replaced."""
    import shutil

    folder = tmp_path / "templates"
    shutil.copytree(templates_dir(), folder)
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
    return make_environment(folder)


def models_digests(tmp_path) -> list:
    """Bob's digests (a watch on models and agents, 5 papers at most) of no captured paper, of
    one, and of them all ("and N more")."""
    watches = '[[watch]]\nname = "models"\nquery = "model* OR agent*"\n'
    bob = subscriber_with(tmp_path, watches, max_papers=5)
    papers = capture_papers()
    return [digest_of(bob, papers[:size]) for size in (0, 1, len(papers))]


def test_a_style_sheet_that_prints_values_and_styles_through_the_page_reads_as_inlining_it_whole(tmp_path):
    """digest.css.j2 as someone may edit it: printing a value it sets, and styling cards through
    body and html. Each card, inlined once, and each frame, filled from its layout, must read as
    inlining every page whole (no hole of the frame's layout left in the style sheet)."""
    added = (
        '{% set accent = "#0969da" %}\n.brand{color:{{ accent }}}\n'
        "body .ta{color:#ff0000}\nhtml .tag{color:#00aa00}\n"
    )
    css = (templates_dir() / "digest.css.j2").read_text(encoding="utf-8") + added
    environment = edited_environment(tmp_path, {"digest.css.j2": css})
    for digest in models_digests(tmp_path):
        html = render_digest(digest, environment).html
        assert html == inlined_whole(digest, environment)
    assert "color:#0969da" in html and "color:#ff0000" in html and "color:#00aa00" in html
    assert "\ue000" not in html
    # The same in an async environment, whose included style sheet Jinja makes another way.
    asynchronous = environment.overlay(enable_async=True)
    for digest in models_digests(tmp_path):
        assert render_digest(digest, asynchronous).html == inlined_whole(digest, environment)


def test_an_environment_passed_in_keeps_its_own_template_class_for_the_frame(tmp_path):
    """render_digest takes any environment, whose template class may be one of its own (here
    one that notes the modules it makes). Recording the frame's values keeps that class, still
    making the style sheet's module with nothing recorded (no hole in it)."""
    made: list[str] = []

    class Noting(jinja2.Template):
        def make_module(self, vars=None, shared=False, locals=None):
            made.append(self.name)
            return super().make_module(vars, shared, locals)

    css = (templates_dir() / "digest.css.j2").read_text(encoding="utf-8")
    css += '{% set accent = "#0969da" %}\n.brand{color:{{ accent }}}\n'
    environment = edited_environment(tmp_path, {"digest.css.j2": css})
    environment.template_class = Noting
    digests = models_digests(tmp_path)
    pages = [render_digest(digest, environment).html for digest in digests]
    assert made == ["digest.css.j2"]  # by the frame's recording: the page is not rendered whole
    for digest, page in zip(digests, pages, strict=True):
        assert page == inlined_whole(digest, environment)
    assert "color:#0969da" in page and "\ue000" not in page


def joined_stretch_by_stretch(stretches) -> tuple:
    """What tidying the texts of (stretch, shared) joined gives, as (piece, shared) parts: one
    blank line where any number were, none at the start or end; each shared stretch's lines one
    piece, the rest joined between them. The reference _joined_units is held to."""
    parts: list = []
    run: list[str] = []
    blank = False
    for tidied, shared in stretches:
        blank = blank or tidied.before
        if not tidied.core:
            continue
        if blank and (run or parts):
            run.append("\n")  # one blank line where any number were
        if shared:
            if run:
                parts.append(("\n", True) if run == ["\n"] else ("".join(run), False))
                run = []
            parts.append((tidied.core, True))
        else:
            run.append(tidied.core)
        blank = tidied.after
    if run:
        parts.append(("".join(run), False))
    return tuple(parts) if parts else (("\n", False),)


def test_cards_joined_whole_read_as_joined_stretch_by_stretch():
    """A digest's text joins each card as one unit (_CardParts.unit, worked out once per rank):
    for every way blank lines may stand around and inside cards and around the frame's text,
    and cards whose lines before or after their rank are blank, the text, and which of it is
    shared, are those of joining the card's two stretches one by one; in at most two pieces a card."""
    import itertools
    import random

    from bot.render import _CardParts, _joined_units, _Tidied

    def unit(ranked: _Tidied, rest: _Tidied, rank: int) -> tuple:
        card = _CardParts(None, "", 0, "", ranked, rest, True)  # only its text is joined
        return card.unit(rank)

    def pieces(parts: tuple) -> list:
        """The text of each run of pieces that are shared, or not: what a mail encodes once or anew."""
        runs = itertools.groupby(parts, lambda part: part[1])
        return [(shared, "".join(piece for piece, _ in run)) for shared, run in runs]

    flags = list(itertools.product((False, True), repeat=2))
    frames = [_Tidied(before, core, after) for before, after in flags for core in ("", "paperbot\n")]
    chooser = random.Random(4)

    def stretch(core: str) -> _Tidied:  # a card's part, blank one time in five
        return _Tidied(chooser.random() < 0.5, "" if chooser.random() < 0.2 else core, chooser.random() < 0.5)

    checked = 0
    for head, tail in itertools.product(frames, repeat=2):
        for count in range(4):
            for _ in range(8):
                cards = [(stretch(f"{n}. Title\n"), stretch("   https://hf.co/\n")) for n in range(count)]
                stretches = [(head, False)] + [(t, True) for card in cards for t in card] + [(tail, False)]
                joined = _joined_units(head, [unit(*card, n) for n, card in enumerate(cards, 1)], tail)
                assert pieces(joined) == pieces(joined_stretch_by_stretch(stretches)), (head, cards, tail)
                assert len(joined) <= 2 + 2 * count
                checked += 1
    assert checked == len(frames) ** 2 * 4 * 8


@pytest.mark.parametrize(
    "name",
    ['Ana & <Bo> "the lab"', "O'Brien\u00a0Lab &amp; co", "Zoë <script>alert(1)</script>", "Line\rbreak"],
)
def test_a_frame_filled_from_its_cached_layout_is_the_page_inlining_it_whole_makes(tmp_path, name):
    """The frame (header, footer, links) is CSS-inlined once per layout and filled per digest:
    names with every character HTML escapes, in text and in attributes, come out as inlining
    the whole page writes them (a CR, which parsing would change, takes the whole-page path)."""
    environment = make_environment()
    papers = capture_papers()
    watches = '[[watch]]\nname = "models"\nquery = "model*"\n'
    bob = subscriber_with(tmp_path, watches, max_papers=3)
    for number, person in enumerate(("Bob", name, name + " again")):
        who = dataclasses.replace(bob, name=person, email="")  # the footer shows the name
        links = DigestLinks(
            list_url=f"https://paperbot.example.org/digest/{number}?a=1&b={person}",
            unsubscribe_url="https://paperbot.example.org/unsubscribe/t",
            manage_url=f'https://paperbot.example.org/manage/"{number}"',
        )
        matches = match_papers(papers, WatchIndex([who]))
        digest = build_digest(who, matches, generated_at=NOW, links=links, label=f"{person}: Fri")
        rendered = render_digest(digest, environment)
        assert rendered.html == inlined_whole(digest, environment)
    assert any(shared for _, shared in rendered.html_parts[:2]), "the page's head is shared"
    kept = [layouts for (made_by, _), layouts in _LAYOUTS.items() if made_by is environment]
    layouts = [layout for same_length in kept for _, layout in same_length]
    assert layouts and all(layouts), "each layout is kept: its digests are filled in, not inlined whole"


def test_cards_prepared_together_are_the_cards_made_one_by_one(tmp_path):
    """A run inlines its digests' cards many to a page (prepare_cards); each must be what
    inlining it alone makes, so every digest is the same either way."""
    from bot.render import forget_cards, prepare_cards

    watches = '[[watch]]\nname = "broad"\nquery = "model* OR data OR learning OR agent*"\n'
    bob = subscriber_with(tmp_path, watches, max_papers=50)
    digest = digest_of(bob, capture_papers())
    forget_cards()
    alone = render_digest(digest)
    forget_cards()
    assert prepare_cards(digest.matches) == len(digest.matches) > 20
    assert prepare_cards(digest.matches) == 0  # made already
    together = render_digest(digest)
    forget_cards()
    assert together == alone


def test_cards_made_in_another_process_render_the_very_digest(tmp_path):
    """A big run's helper takes some of the cards from the run (made_cards, pickled across, then
    keep_cards): it must make none of them again, and render the digest it would render alone."""
    import pickle

    from bot.render import card_key, forget_cards, keep_cards, made_cards, prepare_cards

    watches = '[[watch]]\nname = "broad"\nquery = "model* OR data OR learning OR agent*"\n'
    digest = digest_of(subscriber_with(tmp_path, watches, max_papers=50), capture_papers())
    keys = list(dict.fromkeys(map(card_key, digest.matches)))
    forget_cards()
    alone = render_digest(digest)
    forget_cards()
    handed = pickle.dumps(made_cards(keys[5:]))
    forget_cards()  # as in another process: only the cards handed over
    keep_cards(keys[5:], pickle.loads(handed))
    assert prepare_cards(digest.matches) == 5, "only the cards not handed over are made"
    assert render_digest(digest) == alone
    forget_cards()
    keep_cards(keys[5:], pickle.loads(handed)[::-1])  # what is handed over is what is shown
    assert render_digest(digest) != alone
    forget_cards()
    with pytest.raises(ValueError, match="pass the keys made_cards was given"):
        keep_cards(keys, pickle.loads(handed))


def test_a_card_that_cannot_be_made_is_left_to_the_digests_that_show_it(tmp_path):
    """The run makes some of a big run's cards for its helper (made_cards): one whose template
    fails there is handed over as None, the others as made, and the digest showing it fails
    when it is rendered, saying why, as it would without the helper."""
    import shutil

    from bot.render import card_key, forget_cards, keep_cards, made_cards

    folder = tmp_path / "templates"
    shutil.copytree(templates_dir(), folder)
    card = folder / "card.txt.j2"
    papers = capture_papers()
    broken = papers[0].title
    card.write_text(
        f"{{% if p.title_plain == {broken!r} %}}{{{{ no_such_value.at_all }}}}{{% endif %}}"
        + card.read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    environment = make_environment(folder)
    watches = '[[watch]]\nname = "any"\nquery = "the OR a OR of"\n'
    digest = digest_of(subscriber_with(tmp_path, watches, max_papers=50), papers)
    keys = list(dict.fromkeys(map(card_key, digest.matches)))
    assert any(key[0].title == broken for key in keys) and len(keys) > 5
    forget_cards()
    cards = made_cards(keys, environment)
    assert [key for key, made in zip(keys, cards, strict=True) if made is None] == [
        key for key in keys if key[0].title == broken
    ]
    keep_cards(keys, cards, environment)
    with pytest.raises(jinja2.UndefinedError, match="no_such_value"):
        render_digest(digest, environment)
    forget_cards()


def test_a_frame_template_that_transforms_printed_values_is_inlined_whole_each_time(tmp_path):
    """Holes are filled with values as printed: a frame whose template changes printed output
    (here a filter block) must not be filled from another digest's layout."""
    import shutil

    folder = tmp_path / "templates"
    shutil.copytree(templates_dir(), folder)
    frame = folder / "digest.html.j2"
    source = frame.read_text(encoding="utf-8")
    shown = "{{ subscriber.email or subscriber.name }}"
    assert shown in source
    frame.write_text(
        source.replace(shown, "{% filter title %}" + shown + "{% endfilter %}"), encoding="utf-8"
    )
    environment = make_environment(folder)
    bob = subscriber_with(tmp_path, '[[watch]]\nname = "m"\nquery = "model*"\n', max_papers=2)
    for person in ("Bob", "carol smith"):
        who = dataclasses.replace(bob, name=person, email="")
        digest = build_digest(
            who, match_papers(capture_papers(), WatchIndex([who])), generated_at=NOW, links=LINKS
        )
        html = render_digest(digest, environment).html
        assert html == inlined_whole(digest, environment)
    assert "Carol Smith subscribes" in html


def test_a_title_with_private_use_characters_keeps_them_and_its_rank(tmp_path):
    paper = Paper(id="2606.00001", title="Model \ue002 \ue000 0 \ue001 of rank", abstract="A model.")
    bob = subscriber_with(tmp_path, '[[watch]]\nname = "m"\nquery = "model"\n')
    rendered = render_digest(digest_of(bob, [paper]))
    assert "1. *Model* \ue002 \ue000 0 \ue001 of rank" in rendered.text
    assert "Model</mark> \ue002 \ue000 0 \ue001 of rank" in rendered.html


def test_the_same_digest_renders_the_same_bytes():
    first, second = render_digest(alice_digest()), render_digest(alice_digest())
    assert first == second


def test_the_date_is_the_subscribers_day_not_utc():
    alice = read_subscription(ALICE)
    # 23:30 UTC on the 11th is already the 12th in Berlin.
    assert digest_period(alice, datetime(2026, 6, 11, 23, 30, tzinfo=UTC)) == (
        "2026-06-12",
        "Fri 12 Jun 2026",
    )


# -- what a reader sees of each paper ---------------------------------------------------------


def test_each_paper_shows_links_authors_counts_and_watches():
    rendered = render_digest(alice_digest())
    html, text = rendered.html, rendered.text
    assert '<a class="ta" href="https://huggingface.co/papers/2606.13392"' in html
    for url in (
        "https://arxiv.org/abs/2606.13392",
        "https://arxiv.org/pdf/2606.13392",
        "https://github.com/MiniMax-AI/MSA",
    ):
        assert f'href="{url}"' in html
        assert url in text
    assert "Xunhao Lai, Weiqi Xu, Yufeng Yang et al." in html
    assert "103 upvotes · 251 GitHub stars · 4 comments" in text
    assert re.search(r'<span class="tag"[^>]*>efficient attention</span>', html)
    assert "Watch: efficient attention" in text
    # The footer says why and how to stop, with the signed links.
    assert "You get this because alice@example.org subscribes" in text
    assert "https://paperbot.example.org/unsubscribe/" in html and "Unsubscribe" in html


def test_matched_words_are_highlighted_in_the_title_and_the_summary():
    rendered = render_digest(alice_digest())
    # MiniMax Sparse Attention: matched by "sparse attention", in its title and in HF's summary.
    assert MARK.findall(rendered.html).count("Sparse Attention") == 2
    assert "1. MiniMax *Sparse Attention*" in rendered.text
    assert "HF summary: MiniMax *Sparse Attention* enables" in rendered.text
    # Robust-U1 was matched by "reasoning" in its abstract; its summary says "reasoning" too.
    assert "reasoning" in MARK.findall(rendered.html)


def test_the_abstract_opening_is_the_snippet_without_a_summary_and_folded_words_are_found(tmp_path):
    bob = subscriber_with(tmp_path, '[[watch]]\nname = "distill"\nquery = "distill* model"\n')
    paper = Paper(
        id="2606.00001",
        title="Distilled Models for Everyone",
        abstract="We study knowledge distillation of large models. " + "Filler words here. " * 40,
        authors=("Ada Lovelace",),
        upvotes=3,
    )
    rendered = render_digest(digest_of(bob, [paper]))
    marked = MARK.findall(rendered.html)
    assert marked.count("Distilled") == 1 and marked.count("Models") == 1  # the title
    assert "distillation" in marked and "models" in marked  # the abstract's opening, plural folded
    assert "Abstract: We study knowledge *distillation* of large *models*." in rendered.text
    assert "Filler words here. …" in rendered.text  # an opening, cut at a word


def test_a_matched_author_is_shown_even_past_et_al(tmp_path):
    bob = subscriber_with(tmp_path, '[[watch]]\nname = "people"\nauthors = ["Sergey Levine"]\n')
    authors = ("A One", "B Two", "C Three", "D Four", "E Five", "Sergey Levine", "G Seven")
    paper = Paper(id="2606.00002", title="Robots", abstract="Robots.", authors=authors)
    rendered = render_digest(digest_of(bob, [paper]))
    assert "A One, B Two, C Three, … *Sergey Levine* et al." in rendered.text
    assert "Sergey Levine" in MARK.findall(rendered.html)


def test_a_rising_paper_says_why_now(tmp_path):
    bob = subscriber_with(
        tmp_path, '[[watch]]\nname = "attention, rising"\nquery = "attention"\nrising = 50\n'
    )
    minimax = next(p for p in capture_papers() if p.id == "2606.13392")
    digest = digest_of(bob, [], upvotes_before={minimax.id: 30}, risers=[minimax])
    rendered = render_digest(digest)
    assert "Why now: crossed 50 upvotes (from 30 to 103)" in rendered.text
    assert "<b>Why now:</b> crossed 50 upvotes (from 30 to 103)" in rendered.html


def test_ranked_by_score_one_paper_once_with_every_watch_as_a_badge(tmp_path):
    bob = subscriber_with(tmp_path, "")
    papers = {p.id: p for p in capture_papers()}
    matches = [
        Match(bob.id, papers["2606.08063"], ("vision",), 4.0, ()),
        Match(bob.id, papers["2606.13392"], ("attention",), 9.0, ()),
        Match(bob.id, papers["2606.08063"], ("robustness",), 6.0, ()),
    ]
    digest = build_digest(bob, matches, generated_at=NOW, links=LINKS)
    assert [m.paper.id for m in digest.matches] == ["2606.13392", "2606.08063"]
    assert digest.matches[1].watches == ("vision", "robustness")
    text = render_digest(digest).text
    assert text.index("1. MiniMax") < text.index("2. Robust-U1")
    assert "Watches: vision · robustness" in text  # not a comma: a watch may be "big labs, popular"


def test_an_empty_digest_says_so(tmp_path):
    bob = subscriber_with(tmp_path, "", send_empty="true")
    rendered = render_digest(build_digest(bob, [], generated_at=NOW, links=LINKS))
    assert rendered.subject == "No new papers · Thu 11 Jun 2026"  # 06:00 UTC is still the 11th in LA
    assert "no paper matched your watches" in rendered.text


# -- escaping ------------------------------------------------------------------------------


def hostile_digest(tmp_path, **paper):
    bob = subscriber_with(tmp_path, "")
    values = dict(id="2606.00003", title="<script>alert(1)</script>", abstract="a", upvotes=1)
    values.update(paper)
    match = Match(bob.id, Paper(**values), ('<img src=x onerror="alert(2)">',), 1.0, ())
    return build_digest(bob, [match], generated_at=NOW, links=LINKS)


def test_markup_in_a_paper_is_shown_as_text_and_never_runs(tmp_path):
    digest = hostile_digest(
        tmp_path,
        authors=('"><iframe src=//evil>',),
        ai_summary="<b>bold</b> & <style>body{display:none}</style>",
        github_repo="javascript:alert(3)",
        project_page="https://example.org/ok",
    )
    rendered = render_digest(digest)
    html = rendered.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower() and "<iframe" not in html.lower() and "<img" not in html.lower()
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;style&gt;" in html
    assert "javascript:" not in html  # not an http(s) link: no Code link at all
    assert 'href="https://example.org/ok"' in html
    # The plain text is not HTML: there the title reads as written.
    assert "1. <script>alert(1)</script>" in rendered.text


def test_marked_words_are_shown_as_text_inside_their_mark(tmp_path):
    """The `marked` filter wraps a watch's words: escaped inside <mark> in HTML, between stars
    in the plain text, whatever characters they hold."""
    bob = subscriber_with(tmp_path, "")
    paper = Paper(id="2606.00003", title="<b>x</b> & <i>Attention</i>", abstract="a", upvotes=1)
    match = Match(bob.id, paper, ("w",), 1.0, (Hit("title", "x", 0, 10),))
    rendered = render_digest(build_digest(bob, [match], generated_at=NOW, links=LINKS))
    marked = r'<mark class="hl"[^>]*>&lt;b&gt;x&lt;/b&gt; &amp;</mark> &lt;i&gt;Attention&lt;/i&gt;</a>'
    assert re.search(marked, rendered.html)
    assert "1. *<b>x</b> &* <i>Attention</i>\n" in rendered.text


def test_a_line_break_in_a_title_cannot_leave_the_subject_line(tmp_path):
    digest = hostile_digest(tmp_path, title="Attention\r\nBcc: victim@example.org\n\nbody")
    rendered = render_digest(digest)
    assert "\n" not in rendered.subject and "\r" not in rendered.subject
    assert rendered.subject == "1 paper · Thu 11 Jun 2026 · Attention Bcc: victim@example.org body"
    assert "1. Attention Bcc: victim@example.org body\n" in rendered.text


@pytest.mark.parametrize(
    "title",
    [
        "Tab\there",
        "NUL\x00in\x1fit",
        "next line\x85C1",
        "\x00at the ends\x07",
        "no\u2028break",
        "\u00a0nbsp\u00a0",
    ],
)
def test_control_characters_in_a_title_cannot_reach_the_subject_line(tmp_path, title):
    """Each control character (C0, DEL, C1), like each run of whitespace, is one space in the
    subject; the subject is never cut or joined anywhere else."""
    subject = render_digest(hostile_digest(tmp_path, title=title)).subject
    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in subject)
    shown = " ".join("".join(" " if ord(c) < 32 or 127 <= ord(c) < 160 else c for c in title).split())
    assert subject == f"1 paper · Thu 11 Jun 2026 · {shown}"


def test_a_paper_whose_counts_moved_gets_a_card_of_its_own():
    """Cards are kept by paper, and a paper hashes by its id alone (bot.models.Paper): the same
    paper with more upvotes must still show its new count, not the card of the old one."""
    paper = Paper(id="2606.00001", title="A paper", abstract="About it.", upvotes=3)
    bob = paper_card(Match("bob", paper, ("w",), 1.0, ()), 1)
    moved = paper_card(Match("bob", dataclasses.replace(paper, upvotes=50), ("w",), 1.0, ()), 1)
    assert bob.stats == ("3 upvotes",) and moved.stats == ("50 upvotes",)


def test_each_digest_of_a_run_says_when_it_was_sent_in_its_subscribers_time_zone(tmp_path):
    """One run, one instant, several time zones: each footer shows its own local time (the
    local times of one run are printed once each, and two of them at one instant are equal
    datetimes: they must not share a printing)."""
    papers = capture_papers()
    sent = {}
    for zone in ("America/Los_Angeles", "Europe/Berlin", "Asia/Kolkata", "America/Los_Angeles"):
        (tmp_path / zone).mkdir(parents=True, exist_ok=True)
        subscriber = dataclasses.replace(subscriber_with(tmp_path / zone, ""), timezone=zone)
        rendered = render_digest(digest_of(subscriber, papers))
        sent[zone] = re.search(r"Sent ([^.]+)\.", rendered.text).group(1)
        assert f"Sent {sent[zone]}." in rendered.html
    assert sent == {
        "America/Los_Angeles": "2026-06-11 23:00 PDT",
        "Europe/Berlin": "2026-06-12 08:00 CEST",
        "Asia/Kolkata": "2026-06-12 11:30 IST",
    }


def test_a_digest_made_in_the_repeated_hour_of_a_dst_change_says_its_own_time(tmp_path):
    """02:30 in Berlin on 25 Oct 2026 happens twice: equal datetimes an hour apart. Each digest
    says when it was sent, whichever of the two was printed first."""
    from zoneinfo import ZoneInfo

    papers = capture_papers()
    subscriber = dataclasses.replace(subscriber_with(tmp_path, ""), timezone="UTC")
    matches = match_papers(papers, WatchIndex([subscriber]))
    sent = []
    for fold in (0, 1):
        moment = datetime(2026, 10, 25, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"), fold=fold)
        digest = build_digest(subscriber, matches, generated_at=moment, links=LINKS)
        sent.append(re.search(r"Sent ([^.]+)\.", render_digest(digest).text).group(1))
    assert sent == ["2026-10-25 00:30 UTC", "2026-10-25 01:30 UTC"]


def test_wordwrap_wraps_as_jinjas_own_to_the_character():
    """paperbot wraps a card's snippet itself, faster than textwrap, where the text is words
    between single spaces; every line must break where Jinja's wordwrap breaks it: the real
    summaries and abstracts of a capture at several widths, and made-up text with long words,
    hyphens, runs of spaces, tabs and Unicode spaces (those go to textwrap)."""
    import random

    environment = make_environment()
    ours, jinjas = environment.filters["wordwrap"], jinja2.filters.do_wordwrap
    papers = capture_papers()
    texts = [" ".join(f"{p.ai_summary or ''} {p.abstract}".split()) for p in papers]
    pieces = ["a", "bb", "-", "x" * 12, "é", "*mark*", " ", "  ", "\t", "\u00a0", "\u3000", "\n"]
    chance = random.Random(8)
    texts += ["".join(chance.choice(pieces) for _ in range(chance.randint(0, 30))) for _ in range(5000)]
    texts += [" ".join(chance.choice(pieces[:6]) for _ in range(chance.randint(1, 25))) for _ in range(5000)]
    assert len(papers) > 20
    texts.append("aaa bbb ccc ddd")  # wrapped at 7.0 too: a width a template may write as a float
    for number, text in enumerate(texts):
        width = (69, 40, 79)[number % 3] if number < len(papers) else chance.randint(1, 30)
        width = 7.0 if number == len(texts) - 1 else width
        for options in ({"break_long_words": False, "break_on_hyphens": False}, {}):
            assert ours(environment, text, width, **options) == jinjas(environment, text, width, **options), (
                text,
                width,
            )


@pytest.mark.parametrize(
    "name", ["card.txt.j2", "card.html.j2", "digest.html.j2", "digest.txt.j2", "subject.txt.j2"]
)
def test_a_template_error_points_at_the_template_line(tmp_path, name):
    """An edited template that names a value no digest has fails on its first digest, and the
    traceback shows the template's file and line, as Jinja's own render shows them."""
    import shutil
    import traceback

    folder = tmp_path / "templates"
    shutil.copytree(templates_dir(), folder)
    template = folder / name
    text = template.read_text(encoding="utf-8")
    template.write_text(text + "{{ no_such_value.at_all }}\n", encoding="utf-8")
    line = text.count("\n") + 1
    with pytest.raises(jinja2.UndefinedError) as caught:
        render_digest(alice_digest(), make_environment(folder))
    frames = traceback.extract_tb(caught.value.__traceback__)
    assert any(f.filename == str(template) and f.lineno == line for f in frames), frames[-3:]


def test_templates_are_strict_about_missing_values(tmp_path):
    (tmp_path / "broken.html.j2").write_text("{{ digest.no_such_field }}", encoding="utf-8")
    environment = make_environment(tmp_path)
    with pytest.raises(jinja2.UndefinedError):
        environment.get_template("broken.html.j2").render(digest=alice_digest())


# -- size ------------------------------------------------------------------------------------


def many_matches(subscriber, count: int) -> list[Match]:
    """`count` matches over the real papers of the capture, each its own paper, long abstracts kept."""
    papers = capture_papers()
    matches = []
    for number in range(count):
        paper = papers[number % len(papers)]
        paper = paper.replace(id=f"2606.{90000 + number}", title=f"{paper.title} (variant {number})")
        hit = Hit("title", "x", 0, min(5, len(paper.title)))
        matches.append(Match(subscriber.id, paper, ("w1", "w2"), float(number), (hit,)))
    return matches


def test_a_long_digest_is_cut_at_max_papers_keeping_the_best(tmp_path):
    bob = subscriber_with(tmp_path, "")  # max_papers defaults to 25
    digest = build_digest(bob, many_matches(bob, 200), generated_at=NOW, links=LINKS)
    rendered = render_digest(digest)

    assert (digest.total, len(digest.matches), rendered.shown) == (200, 25, 25)
    shown = re.findall(r"\(variant (\d+)\)</a>", rendered.html)
    assert [int(n) for n in shown] == list(range(199, 174, -1))  # the 25 best scores, best first
    assert f'<a href="{LINKS.list_url}"' in rendered.html and "…and 175 more papers" in rendered.html
    assert f"...and 175 more: {LINKS.list_url}" in rendered.text
    assert rendered.subject.startswith("200 papers · ")
    assert len(rendered.html.encode("utf-8")) < MAX_HTML_BYTES


def test_a_digest_too_big_for_gmail_moves_papers_to_and_n_more(tmp_path):
    bob = subscriber_with(tmp_path, "", max_papers=200)
    digest = build_digest(bob, many_matches(bob, 200), generated_at=NOW, links=LINKS)
    rendered = render_digest(digest)

    size = len(rendered.html.replace("\n", "\r\n").encode("utf-8"))  # as the mail carries it
    assert size < MAX_HTML_BYTES
    assert 25 < rendered.shown < 200
    assert size > MAX_HTML_BYTES * 0.9  # it keeps as many as fit
    assert f"…and {200 - rendered.shown} more papers" in rendered.html
    assert rendered.html.rstrip().endswith("</html>") and "Unsubscribe" in rendered.html[-2000:]


# -- templates after `pip install .` ---------------------------------------------------------


def test_an_installed_paperbot_finds_its_templates(tmp_path):
    """Build a wheel as `pip install .` does, install it elsewhere, and load the templates from there."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (source / name).write_bytes((ROOT / name).read_bytes())
    for folder in ("bot", "templates"):
        for file in (ROOT / folder).rglob("*"):
            if file.is_file() and "__pycache__" not in file.parts:
                target = source / file.relative_to(ROOT)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(file.read_bytes())
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "-w", tmp_path / "dist", source], capture_output=True)
    assert built.returncode == 0, built.stderr.decode()
    wheel = next((tmp_path / "dist").glob("paperbot-*.whl"))
    prefix = tmp_path / "prefix"
    # --ignore-installed: without it pip would first uninstall the paperbot this suite runs from.
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--ignore-installed", "--prefix", prefix, wheel], capture_output=True
    )
    assert installed.returncode == 0, installed.stderr.decode()
    site = next(prefix.glob("lib/python*/site-packages"))
    # The editable install of this checkout hooks imports; drop the hook to see only the wheel.
    script = (
        "import sys\n"
        "sys.meta_path = [f for f in sys.meta_path if not type(f).__module__.startswith('__editable__')]\n"
        "import bot.render\n"
        "print(bot.render.__file__)\n"
        "print(bot.render.templates_dir())\n"
        "bot.render.make_environment().get_template('digest.html.j2')\n"
    )
    environ = dict(os.environ, PYTHONPATH=str(site))
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, cwd=tmp_path, env=environ, text=True
    )
    assert ran.returncode == 0, ran.stderr
    module, found = ran.stdout.splitlines()
    assert Path(module).is_relative_to(site)
    assert Path(found) == (prefix / "share" / "paperbot" / "templates").resolve()


def test_a_checkout_uses_its_own_templates():
    assert templates_dir() == ROOT / "templates"


def test_build_digest_refuses_a_naive_clock(tmp_path):
    bob = subscriber_with(tmp_path, "")
    with pytest.raises(ValueError, match="aware"):
        build_digest(bob, [], generated_at=NOW.replace(tzinfo=None), links=LINKS)
