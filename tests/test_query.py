"""The watchlist query language: what a query finds, what it refuses, and why it matched."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.errors import QueryError
from bot.models import Paper
from bot.query import (
    And,
    Hit,
    Not,
    Or,
    PaperText,
    Phrase,
    QueryIndex,
    Term,
    anchor_leaves,
    format_query,
    index_paper,
    match_query,
    parse_query,
)
from bot.words import scan, tokenize

CAPTURE = "api_daily_papers_2026-06-12.json"
CAPTURE_PLACES = [
    Path(__file__).parent / "fixtures" / "hf" / CAPTURE,
    Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "hf" / CAPTURE,
]


def paper(
    title="", abstract="", authors=(), keywords=(), org=None, org_fullname=None, id="2401.00001"
) -> Paper:
    return Paper(
        id=id,
        title=title,
        abstract=abstract,
        authors=tuple(authors),
        ai_keywords=tuple(keywords),
        organization=org,
        organization_fullname=org_fullname,
    )


def matches(query: str, found: Paper) -> bool:
    return match_query(parse_query(query), index_paper(found)) is not None


LECUN = {"authors": ["Yann LeCun", "Li Wang"]}
LI_AND_WANG = {"authors": ["Yafu Li", "Wang Ming"]}
CALTECH = {"org": "caltech", "org_fullname": "California Institute of Technology"}

# (query, paper fields, does it match?)
CASES = [
    # case and accents
    ("Self-Supervised", {"title": "self supervised learning"}, True),
    ("self supervised", {"title": "Self-Supervised Learning"}, True),
    ("self-supervised", {"abstract": "We train it SELF SUPERVISED."}, True),
    ("Schrödinger", {"title": "Schrodinger bridges"}, True),
    ("schrodinger", {"title": "Schrödinger Bridges"}, True),
    ("SCHRÖDINGER", {"title": "Schro\u0308dinger Bridges"}, True),
    # singular and plural are one word, and nothing else is stemmed
    ("model", {"title": "World Models"}, True),
    ("models", {"title": "A World Model"}, True),
    ("GAN", {"title": "Training GANs"}, True),
    ("GANs", {"title": "A GAN"}, True),
    ("policy", {"abstract": "learned policies"}, True),
    ("policies", {"abstract": "a learned policy"}, True),
    ("process", {"abstract": "Gaussian processes"}, True),
    ("processes", {"abstract": "a Gaussian process"}, True),
    ("analysis", {"title": "An Analysis of Scaling"}, True),
    ("analysi", {"title": "An Analysis of Scaling"}, False),
    ("les", {"title": "Parameter-less"}, False),
    ("bu", {"title": "bus"}, False),
    ("thi", {"title": "this"}, False),
    ("distill", {"title": "Knowledge Distillation"}, False),
    # wildcards: a prefix of the folded word
    ("distill*", {"title": "Distill the teacher"}, True),
    ("distill*", {"title": "Knowledge Distillation"}, True),
    ("distill*", {"title": "Distilled models"}, True),
    ("distill*", {"title": "undistilled models"}, False),
    ("distill*", {"title": "distinct"}, False),
    ("models*", {"title": "Models"}, True),
    ("polici*", {"title": "policies"}, True),
    ("title:distill*", {"abstract": "distillation"}, False),
    # whole words only
    ("RL", {"title": "Offline RL at scale"}, True),
    ("RL", {"title": "A URL shortener"}, False),
    ("RL", {"title": "world models"}, False),
    ("GAN", {"title": "organ transplants"}, False),
    # a hyphenated query word is a phrase
    ("population", {"title": "Population-Based Training"}, True),
    ("population-based", {"title": "Population-Based Training"}, True),
    ("population-based", {"title": "population based training"}, True),
    ('"population based"', {"title": "Population-Based Training"}, True),
    ("population-based", {"title": "a population of agents"}, False),
    ("population-based", {"title": "based on a population"}, False),
    # bare words are all required, in any field
    ("diffusion transformer", {"title": "Diffusion Transformers"}, True),
    ("diffusion transformer", {"title": "Diffusion models"}, False),
    ("diffusion transformer", {"title": "Transformers", "abstract": "a diffusion loss"}, True),
    ("diffusion transformer", {"title": "Transformers", "keywords": ["latent diffusion"]}, True),
    # phrases: adjacent, in order, within one field
    ('"world model"', {"title": "World Models for Agents"}, True),
    ('"world model"', {"title": "A model of the world"}, False),
    ('"world model"', {"title": "world of a model"}, False),
    ('"world model"', {"title": "Our world", "abstract": "Model-based RL"}, False),
    # OR, AND, NOT and -
    ("diffusion OR flow", {"title": "Flow Matching"}, True),
    ("diffusion OR flow", {"title": "Autoregressive"}, False),
    ("diffusion AND flow", {"title": "Flow Matching"}, False),
    ("diffusion AND flow", {"title": "Flow Matching meets Diffusion"}, True),
    ("diffusion -survey", {"title": "Diffusion: a survey"}, False),
    ("diffusion -survey", {"title": "Diffusion for video"}, True),
    ("diffusion NOT survey", {"title": "Diffusion: a survey"}, False),
    ('diffusion -"video generation"', {"title": "Diffusion for video generation"}, False),
    ('diffusion -"video generation"', {"title": "Generation of video by diffusion"}, True),
    ("generative -(GAN OR VAE)", {"title": "Generative VAEs"}, False),
    ("generative -(GAN OR VAE)", {"title": "Generative flows"}, True),
    # a query that only excludes matches every paper without the word
    ("-survey", {"title": "Diffusion for video"}, True),
    ("-survey", {"title": "A survey of diffusion"}, False),
    ("NOT survey", {"title": "A Survey"}, False),
    ("-title:survey", {"abstract": "unlike the survey of ..."}, True),
    # precedence: NOT and - bind tightest, then AND, then OR
    ("diffusion OR GAN transformer", {"title": "Diffusion"}, True),
    ("diffusion OR GAN transformer", {"title": "GAN"}, False),
    ("diffusion OR GAN transformer", {"title": "GAN transformer"}, True),
    ("diffusion OR GAN AND transformer", {"title": "GAN"}, False),
    ("(diffusion OR GAN) transformer", {"title": "Diffusion"}, False),
    ("-survey OR diffusion", {"title": "a survey of diffusion"}, True),
    ("-survey OR diffusion", {"title": "a survey"}, False),
    ("NOT survey diffusion", {"title": "diffusion"}, True),
    ("NOT survey diffusion", {"title": "survey"}, False),
    ("NOT (survey diffusion)", {"title": "survey"}, True),
    # fields
    ("title:agent", {"title": "Agents that plan"}, True),
    ("title:agent", {"abstract": "an agent"}, False),
    ("abstract:agent", {"abstract": "an agent"}, True),
    ("abstract:agent", {"title": "Agents"}, False),
    ('title:"world model"', {"title": "World Models"}, True),
    ("title:(diffusion OR flow) video", {"title": "Flow", "abstract": "video"}, True),
    ("title:(diffusion OR flow) video", {"title": "Video", "abstract": "flow"}, False),
    ("author:LeCun", LECUN, True),
    ('author:"Yann LeCun"', LECUN, True),
    ('author:"yann lecun"', {"authors": ["Yann Lecun"]}, True),
    ("LeCun", LECUN, False),  # authors are searched only when asked
    ('author:"Li Wang"', LECUN, True),
    ('author:"Li Wang"', LI_AND_WANG, False),  # never across two authors
    ('author:"Wang Li"', LI_AND_WANG, False),
    ("author:William", {"authors": ["Alex Williams"]}, False),  # names keep their plural
    ("author:Williams", {"authors": ["Alex Williams"]}, True),
    ("author:François", {"authors": ["Francois Fleuret"]}, True),
    ("org:nvidia", {"org": "nvidia"}, True),
    ("org:NVIDIA", {"org": "nvidia"}, True),
    ("org:google", {"org": "nvidia"}, False),
    ("org:google", {}, False),
    ("org:deepseek", {"org": "deepseek-ai"}, True),
    ('org:"Institute of Technology"', CALTECH, True),  # the organization's full name counts too
    ("org:caltech", CALTECH, True),
    ("nvidia", {"org": "nvidia"}, False),
    ('keyword:"world model"', {"keywords": ["world models", "planning"]}, True),
    ("keyword:distillation", {"keywords": ["knowledge distillation"]}, True),
    ("keyword:distillation", {"abstract": "distillation"}, False),
    ('keyword:"detection dense"', {"keywords": ["toxicity detection", "dense models"]}, False),
    ("keyword:mixture-of-experts", {"keywords": ["mixture-of-experts models"]}, True),
    ("distillation", {"keywords": ["knowledge distillation"]}, True),  # keywords are a default field
]


@pytest.mark.parametrize(("query", "fields", "expected"), CASES, ids=[f"{q!r}~{f}" for q, f, _ in CASES])
def test_what_a_query_finds(query, fields, expected):
    assert matches(query, paper(**fields)) is expected


# (query, 0-based position of the caret, words the message says)
ERRORS = [
    ("", 0, "empty"),
    ("   ", 0, "empty"),
    ("(diffusion OR flow", 0, "add a )"),
    ("diffusion OR flow)", 17, "no ( before it"),
    ("a (b (c) d", 2, "never closed"),
    ('"world model', 0, 'closing "'),
    ('diffusion "world model', 10, 'closing "'),
    ("diffusion OR", 10, "a OR b"),
    ("OR diffusion", 0, "a OR b"),
    ("diffusion OR OR flow", 10, "a OR b"),
    ("diffusion AND", 10, "a AND b"),
    ("(diffusion AND) flow", 11, "a AND b"),
    ("diffusion NOT", 10, "NOT word"),
    ("diffusion -", 10, "-word"),
    ("diffusion - survey", 10, "-word"),
    ("titel:agent", 0, "did you mean title:"),
    ("diffusion auther:LeCun", 10, "did you mean author:"),
    ("arXiv:2401.00001", 0, 'quotes: "arXiv:'),
    ("title: agent", 5, "no space after the colon"),
    ("agent title:", 6, 'title:"a phrase"'),
    ('""', 0, "empty phrase"),
    ('diffusion " - "', 10, "empty phrase"),
    ("()", 0, "empty parentheses"),
    ("dis*till", 3, "end of a word"),
    ("*", 0, "end of a word"),
    ("distill**", 7, "end of a word"),
    ("distill.*", 8, "end of a word"),
    ("di*", 0, "at least 3 letters"),
    ("diffusion ab*", 10, "at least 3 letters"),
    ("self-sup*", 8, "single word"),
    ('"distill* models"', 8, "inside quotes"),
    ("title:(author:LeCun)", 7, "take it out"),
    ("diffusion &", 10, "no letters or digits"),
]


@pytest.mark.parametrize(("query", "position", "says"), ERRORS, ids=[q or "<empty>" for q, _, _ in ERRORS])
def test_a_malformed_query_shows_where_and_what_to_write(query, position, says):
    with pytest.raises(QueryError) as raised:
        parse_query(query)
    error = raised.value
    assert error.position == position
    assert says in error.reason
    message, shown, caret = str(error).split("\n")
    assert shown == "  " + query and caret == "  " + " " * position + "^"


def test_parse_builds_the_tree_with_folded_words():
    assert parse_query('(RL OR "Reinforcement Learning") -Surveys title:distill*') == And(
        (
            Or((Term("rl"), Phrase(("reinforcement", "learning")))),
            Not(Term("survey")),
            Term("distill", "title", prefix=True),
        )
    )
    assert parse_query('"GANs"') == Term("gan")  # a one-word phrase is a word
    assert parse_query("a (b c)") == parse_query("a b c") == parse_query("a AND b AND c")
    assert parse_query("author:Williams") == Term("williams", "author")


def test_format_query_is_canonical():
    written = '(diffusion   OR Flow) AND -(survey OR review) title:(GANs OR "VAE models")'
    canonical = '(diffusion OR flow) -(survey OR review) (title:gan OR title:"vae model")'
    assert format_query(parse_query(written)) == canonical
    assert format_query(parse_query("a OR (b c)")) == "a OR b c"


def test_hits_say_where_the_words_are():
    found = paper(
        title="Self-Supervised World Models",
        abstract="We distill a world model.",
        authors=["Yann LeCun", "Li Wang"],
        keywords=["world models", "distillation"],
    )
    text = index_paper(found)
    hits = match_query(parse_query('"world model" distill* author:wang -survey'), text)
    assert hits is not None
    shown = {(h.field, h.term, text.texts[h.field][h.start : h.end]) for h in hits}
    assert shown == {
        ("title", "world model", "World Models"),
        ("abstract", "world model", "world model"),
        ("abstract", "distill*", "distill"),
        ("keyword", "world model", "world models"),
        ("keyword", "distill*", "distillation"),
        ("author", "wang", "Wang"),
    }
    assert text.texts["author"] == "Yann LeCun; Li Wang"
    assert match_query(parse_query("-survey"), text) == ()  # matched, with nothing to highlight
    assert match_query(parse_query("survey"), text) is None
    # OR reports every branch that matched, so a digest can highlight all of them
    assert {h.term for h in match_query(parse_query("self OR world OR gan"), text)} == {"self", "world"}
    assert Hit("title", "self", 0, 4) in match_query(parse_query("self"), text)


@pytest.mark.parametrize(
    ("query", "anchors"),
    [
        ("diffusion transformer", {"transformer"}),  # the longer word: rarer
        ("RL OR reinforcement", {"rl", "reinforcement"}),
        ('"world model" planning', {'"world model"'}),  # a phrase beats a word
        ("(RL OR reinforcement) reasoning", {"reasoning"}),  # one word beats two
        ("RL distill*", {"rl"}),  # an exact word beats a prefix
        ("distill*", {"distill*"}),
        ("GAN -survey", {"gan"}),
        ("author:Williams", {"author:williams"}),
        ("-survey", None),
        ("diffusion OR -survey", None),
        ("NOT (a b)", None),
    ],
)
def test_anchor_leaves(query, anchors):
    found = anchor_leaves(parse_query(query))
    assert (found if found is None else {format_query(leaf) for leaf in found}) == anchors


# -- properties ------------------------------------------------------------------------------

VOCABULARY = [
    "model",
    "models",
    "Model",
    "GAN",
    "GANs",
    "organ",
    "policy",
    "policies",
    "process",
    "processes",
    "analysis",
    "RL",
    "URL",
    "world",
    "self-supervised",
    "Schrödinger",
    "schrodinger",
    "distill",
    "distillation",
    "population-based",
    "population",
    "less",
    "bus",
    "this",
    "survey",
]
NAMES = ["Yann LeCun", "Li Wang", "Yafu Li", "Wang Ming", "Alex Williams", "Zoë Müller"]
PREFIXES = ["distill*", "model*", "polic*", "popul*", "surv*"]
FIELD_NAMES = ["title", "abstract", "keyword", "author", "org"]

words = st.sampled_from(VOCABULARY)
phrases = st.lists(words, min_size=1, max_size=3).map(lambda w: '"' + " ".join(w) + '"')
atoms = st.one_of(
    words,
    phrases,
    st.sampled_from(PREFIXES),
    st.builds(lambda f, w: f"{f}:{w}", st.sampled_from(FIELD_NAMES), st.one_of(words, phrases)),
    st.sampled_from(NAMES).map(lambda n: f'author:"{n}"'),
)


def _combine(children):
    return st.one_of(
        st.tuples(children, children).map(" ".join),
        st.tuples(children, children).map(" AND ".join),
        st.tuples(children, children).map(" OR ".join),
        children.map(lambda q: f"-({q})"),
        children.map(lambda q: f"NOT ({q})"),
        children.map(lambda q: f"({q})"),
    )


queries = st.recursive(atoms, _combine, max_leaves=6)
sentences = st.lists(st.one_of(words, st.sampled_from([",", "-", "(", ")", "and"])), max_size=8).map(" ".join)
papers = st.builds(
    paper,
    title=sentences,
    abstract=sentences,
    authors=st.lists(st.sampled_from(NAMES), max_size=3),
    keywords=st.lists(sentences, max_size=3),
    org=st.sampled_from([None, "nvidia", "deepseek-ai", "Schrödinger-lab"]),
)
OPERATORS = ("OR", "AND", "NOT")
FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _swap_words(query: str) -> str:
    """Swap the case of every word but the operators OR, AND, NOT."""
    return re.sub(r"[^\W_]+", lambda m: m.group() if m.group() in OPERATORS else m.group().swapcase(), query)


def _swap_paper(found: Paper) -> Paper:
    return found.replace(
        title=found.title.swapcase(),
        abstract=found.abstract.swapcase(),
        authors=tuple(a.swapcase() for a in found.authors),
        ai_keywords=tuple(k.swapcase() for k in found.ai_keywords),
        organization=found.organization and found.organization.swapcase(),
    )


@FAST
@given(queries, papers)
def test_case_never_changes_the_result(query, found):
    node = parse_query(query)
    assert parse_query(_swap_words(query)) == node
    result = match_query(node, index_paper(found))
    assert match_query(node, index_paper(_swap_paper(found))) == result


def _contains(found: Paper, word: str) -> bool:
    """Whether the default fields hold `word` (a phrase if hyphenated): an oracle apart from bot.query."""
    wanted = [t.term for t in tokenize(word)]
    for text in (found.title, found.abstract, *found.ai_keywords):
        terms = [t.term for t in tokenize(text)]
        if any(terms[i : i + len(wanted)] == wanted for i in range(len(terms))):
            return True
    return False


@FAST
@given(words, words, papers)
def test_a_minus_b_never_finds_b(a, b, found):
    matched = matches(f"{a} -{b}", found)
    assert matched == (_contains(found, a) and not _contains(found, b))


@FAST
@given(queries)
def test_format_then_parse_gives_the_same_query(query):
    node = parse_query(query)
    assert parse_query(format_query(node)) == node


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet='ab -*:()"ORNDTtitle ', max_size=20)))
def test_any_text_is_a_query_or_a_query_error(text):
    try:
        node = parse_query(text)
    except QueryError as error:
        assert 0 <= error.position <= len(text)
        assert text in str(error)
    else:
        assert parse_query(format_query(node)) == node


def _forms(found: Paper) -> set[str]:
    """Every word of the paper in every field, folded and as written: an oracle apart from bot.query."""
    texts = [found.title, found.abstract, *found.ai_keywords, *found.authors, found.organization or ""]
    return {
        form
        for text in texts
        for plural in (True, False)
        for term, plain, _, _ in scan(text, plural)
        for form in (term, plain)
    }


@FAST
@given(queries, papers)
def test_anchor_leaves_are_sound(query, found):
    """A paper the query matches holds one of its anchors: checked with match_query on each
    anchor alone, and for words with the oracle _forms, apart from bot.query."""
    node = parse_query(query)
    anchors = anchor_leaves(node)
    text = index_paper(found)
    if anchors is None or match_query(node, text) is None:
        return
    assert any(match_query(leaf, text) is not None for leaf in anchors)
    words = [leaf for leaf in anchors if isinstance(leaf, Term) and leaf.field is None]
    if len(words) == len(anchors):
        forms = _forms(found)
        assert any(
            any(form.startswith(a.word) for form in forms) if a.prefix else a.word in forms for a in words
        )


def _each_on_its_own(nodes: list, text: PaperText) -> dict:
    return {i: hits for i, node in enumerate(nodes) if (hits := match_query(node, text)) is not None}


@FAST
@given(st.lists(queries, min_size=1, max_size=10), papers)
def test_a_query_index_finds_what_each_query_finds_on_its_own(texts, found):
    nodes = [parse_query(query) for query in texts]
    text = index_paper(found)
    assert QueryIndex(nodes).match(text) == _each_on_its_own(nodes, text)


@FAST
@given(queries, papers)
def test_hits_point_at_the_words_they_name(query, found):
    text = index_paper(found)
    for hit in match_query(parse_query(query), text) or ():
        piece = text.texts[hit.field][hit.start : hit.end]
        folded = [t.term for t in tokenize(piece, plural=hit.field not in ("author", "org"))]
        if hit.term.endswith("*"):
            assert len(folded) == 1 and any(f.startswith(hit.term[:-1]) for f in _forms(paper(title=piece)))
        else:
            assert folded == hit.term.split()


# -- real data -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_papers() -> list[Paper]:
    """The 30 papers Hugging Face featured on 2026-06-12, built minimally from the API capture."""
    place = next((p for p in CAPTURE_PLACES if p.exists()), None)
    if place is None:
        folders = " nor ".join(str(p.parent) for p in CAPTURE_PLACES)
        pytest.skip(f"the capture {CAPTURE} is in neither {folders}")
    built = []
    for item in json.loads(place.read_text(encoding="utf-8")):
        data = item["paper"]
        organization = item.get("organization") or data.get("organization") or {}
        built.append(
            Paper(
                id=data["id"],
                title=data["title"],
                abstract=data.get("summary", ""),
                authors=tuple(a["name"] for a in data.get("authors", [])),
                ai_keywords=tuple(data.get("ai_keywords") or ()),
                organization=organization.get("name"),
                organization_fullname=organization.get("fullname"),
            )
        )
    return built


@pytest.fixture(scope="module")
def real_texts(real_papers) -> dict[str, PaperText]:
    """Each real paper made searchable once, by id, as the matcher does."""
    return {p.id: index_paper(p) for p in real_papers}


def _found(query: str, texts: dict[str, PaperText]) -> set[str]:
    node = parse_query(query)
    return {paper_id for paper_id, text in texts.items() if match_query(node, text) is not None}


def test_real_authors_find_exactly_their_papers(real_papers, real_texts):
    assert _found('author:"Rafal Kocielnik"', real_texts) == {"2606.00467", "2606.12730"}
    assert _found('author:"R. Michael Alvarez"', real_texts) == {"2606.00467", "2606.12730"}
    # 2606.12730 lists "Rafal Kocielnik", "Pengrui Han": a name never runs into the next one
    assert _found('author:"Kocielnik Pengrui"', real_texts) == set()
    names = {name for p in real_papers for name in p.authors}
    assert len(names) > 100
    for name in names:
        listing = {p.id for p in real_papers if name in p.authors}
        assert _found(f'author:"{name}"', real_texts) == listing, name


def test_real_keywords_orgs_and_words(real_papers, real_texts):
    assert _found('keyword:"mixture-of-experts models"', real_texts) == {"2606.00467"}
    assert _found('keyword:"LLM-as-a-judge"', real_texts) >= {"2606.00467"}
    assert _found("org:caltech", real_texts) == {p.id for p in real_papers if p.organization == "caltech"}
    assert _found('"zero-shot errors" -survey', real_texts) == {"2606.00467"}
    assert _found("-zzzunseenzzz", real_texts) == set(real_texts)


def test_real_anchors_never_skip_a_match(real_texts):
    texts = real_texts.values()
    for query in [
        "LLM agent",
        "diffusion OR flow",
        '"language model" -survey',
        "distill* OR reinforc*",
        "author:Li",
        "(RL OR reasoning) benchmark*",
        "org:caltech OR keyword:toxicity",
    ]:
        node = parse_query(query)
        anchors = anchor_leaves(node)
        for text in texts:
            if match_query(node, text) is not None and anchors is not None:
                assert any(match_query(leaf, text) is not None for leaf in anchors), query


def test_real_query_index_finds_what_each_query_finds(real_papers, real_texts):
    """Every shape the index treats apart: words, prefixes, phrases of two, three and more
    words, fields, names, pure negations, ANDs of words and -words, ORs of words, deeper trees,
    and the same query twice."""
    queries = [
        "agent",
        "agent*",
        "reinforc*",
        '"language model"',
        '"large language model"',
        '"mixture of experts models"',
        '"the first large scale"',
        "title:agent",
        "keyword:toxicity",
        "author:Li",
        'author:"R. Michael Alvarez"',
        "org:caltech",
        "LLM agent",
        "LLM -agent",
        "-survey",
        "-survey -benchmark",
        "diffusion OR flow OR agent",
        "(RL OR reasoning) benchmark*",
        "title:agent agent",  # two leaves alike but for their field: the same hits, kept once
        "(title:agent OR agent) LLM",
        '(diffusion -"language model") OR (author:Li -agent)',
        "NOT (agent OR LLM)",
        "agent",
    ]
    keywords = {keyword for p in real_papers for keyword in p.ai_keywords if len(keyword.split()) >= 3}
    queries += [f'"{keyword}"' for keyword in sorted(keywords)[:60] if '"' not in keyword]
    nodes = [parse_query(query) for query in queries]
    index = QueryIndex(nodes)
    found = 0
    for text in real_texts.values():
        expected = _each_on_its_own(nodes, text)
        assert index.match(text) == expected
        found += len(expected)
    assert found > 100
