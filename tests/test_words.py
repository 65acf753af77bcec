"""Words: case, accents and plurals fold away; offsets still point into the original text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.words import Token, _folded, fold, normalize, tokenize


@pytest.mark.parametrize(
    ("word", "folded"),
    [
        # case and accents
        ("Transformer", "transformer"),
        ("Schrödinger", "schrodinger"),
        ("Schro\u0308dinger", "schrodinger"),  # the same, decomposed
        ("ÉCOLE", "ecole"),
        ("Straße", "strasse"),
        ("ﬁne", "fine"),  # a ligature
        # a plural is its singular
        ("models", "model"),
        ("GANs", "gan"),
        ("LLMs", "llm"),
        ("policies", "policy"),
        ("studies", "study"),
        ("processes", "process"),
        ("classes", "class"),
        ("patches", "patch"),
        ("boxes", "box"),
        ("images", "image"),
        ("analyses", "analysis"),
        ("hypotheses", "hypothesis"),
        ("ties", "tie"),
        # plurals the suffix rule alone would get wrong
        ("caches", "cache"),
        ("movies", "movie"),
        ("biases", "bias"),
        ("indices", "index"),
        ("GPUs", "gpu"),
        ("APIs", "api"),
        ("IDs", "id"),
        # words that end in s but are not plurals stay whole
        ("analysis", "analysis"),
        ("less", "less"),
        ("bus", "bus"),
        ("this", "this"),
        ("corpus", "corpus"),
        ("bias", "bias"),
        ("news", "news"),
        ("series", "series"),
        ("various", "various"),
        # no other stemming
        ("distillation", "distillation"),
        ("distilled", "distilled"),
        ("learning", "learning"),
    ],
)
def test_fold(word, folded):
    assert fold(word) == folded


def test_a_singular_and_its_plural_fold_alike():
    pairs = [
        ("model", "models"),
        ("GAN", "GANs"),
        ("policy", "policies"),
        ("process", "processes"),
        ("cache", "caches"),
        ("bias", "biases"),
        ("GPU", "GPUs"),
        ("matrix", "matrices"),
    ]
    for singular, plural in pairs:
        assert fold(singular) == fold(plural), (singular, plural)


def test_tokenize_keeps_offsets_into_the_original_text():
    text = "Self-Supervised GANs for Schrödinger's URL_parser (v2)"
    tokens = tokenize(text)
    assert [t.term for t in tokens] == [
        "self",
        "supervised",
        "gan",
        "for",
        "schrodinger",
        "s",
        "url",
        "parser",
        "v2",
    ]
    assert [text[t.start : t.end] for t in tokens] == [
        "Self",
        "Supervised",
        "GANs",
        "for",
        "Schrödinger",
        "s",
        "URL",
        "parser",
        "v2",
    ]
    assert tokens[0] == Token("self", 0, 4)


def test_tokenize_keeps_a_decomposed_accent_in_its_word():
    text = "Schro\u0308dinger bridges"
    assert [(t.term, text[t.start : t.end]) for t in tokenize(text)] == [
        ("schrodinger", "Schro\u0308dinger"),
        ("bridge", "bridges"),
    ]


def test_names_keep_their_plural_when_asked():
    assert [t.term for t in tokenize("Alex Williams", plural=False)] == ["alex", "williams"]
    assert [t.term for t in tokenize("Alex Williams")] == ["alex", "william"]


def test_tokenize_finds_nothing_in_punctuation():
    assert tokenize(" -- ; () ") == []
    assert tokenize("") == []


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_folding_is_stable(text):
    # A query is stored folded and parsed again from its text: folding twice must change nothing.
    for token in tokenize(text):
        assert fold(token.term) == token.term
        assert [t.term for t in tokenize(token.term)] == [token.term]
        assert normalize(normalize(token.term)) == normalize(token.term)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_case_never_matters(text):
    terms = [t.term for t in tokenize(text)]
    assert [t.term for t in tokenize(text.upper())] == terms or _changes_letters(text)
    assert [t.term for t in tokenize(text.swapcase())] == terms or _changes_letters(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_an_ascii_word_folds_as_any_other(text):
    # normalize takes a shortcut for ASCII (most words): it must give what the full folding
    # (decompose, drop accents, casefold, until stable) gives.
    assert normalize(text) == _folded(text)


def test_each_ascii_character_folds_as_any_other():
    assert [normalize(chr(code)) for code in range(128)] == [_folded(chr(code)) for code in range(128)]


def _changes_letters(text: str) -> bool:
    # A handful of characters become other letters when their case changes (Turkish "ı" -> "I",
    # the combining Greek "\u0345" -> "Ι"); casefolding cannot undo that, and no paper is made of them.
    return any(normalize(c.upper()) != normalize(c) or normalize(c.swapcase()) != normalize(c) for c in text)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_offsets_slice_the_word(text):
    for token in tokenize(text):
        piece = text[token.start : token.end]
        assert piece and token.term in [t.term for t in tokenize(piece)]
