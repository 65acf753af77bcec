"""Words as paperbot compares them: case, accents and plurals folded away.

`tokenize` splits a text on anything that is not a letter or a digit and folds each word,
keeping where it stood in the original text so a digest can highlight it:

    >>> [(t.term, t.start, t.end) for t in tokenize("Self-Supervised GANs")]
    [('self', 0, 4), ('supervised', 5, 15), ('gan', 16, 20)]

Folding is deliberately shallow: a word and its plural are one word (model/models,
policy/policies, process/processes) but nothing else is stemmed, so "distill" does not find
"distillation" unless a query asks for it with a wildcard.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["Token", "fold", "forget_folds", "normalize", "scan", "tokenize"]

# A run of letters or digits, with any combining marks after its first character, so a
# decomposed "Schro\u0308dinger" stays one word.
_MARKS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_WORD = re.compile(rf"[^\W_]+(?:[{_MARKS}]+[^\W_]*)*")
_PLAIN_WORD = re.compile(r"[^\W_]+")

# Words ending in s that are not plurals, where dropping the s would make another word or
# break a plural rule below (the endings -ss, -us, -is are kept anyway: less, corpus, analysis).
_NOT_PLURAL = frozenset(
    "alias atlas bias canvas chaos cosmos diabetes ethos kudos lens means news pancreas pathos "
    "series species whereas".split()
)


def _with_s(words: str) -> dict[str, str]:
    return {word + "s": word for word in words.split()}


def _pairs(pairs: str) -> dict[str, str]:
    return dict(pair.split(">") for pair in pairs.split())


# Plurals the suffix rule below would get wrong, mapped to their singular.
_SINGULAR = {
    # -ches after a word that ends in e (the rule drops "es": patches -> patch)
    **_with_s("ache avalanche cache cliche headache niche psyche"),
    # -ies after a word that ends in ie (the rule makes -y: policies -> policy)
    **_with_s("brownie calorie cookie genie goalie movie newbie rookie selfie zombie"),
    # plurals that end like a kept word (-us, -is), or are short
    **_with_s(
        "ai api cpu dpu emoji fpu gpu gru id imu kpi lpu menu mri npu qpu relu roi sku tpu ui uri wiki"
    ),
    # -ses, -ices, -xes whose singular is not the rule's
    **_pairs(
        "aliases>alias atlases>atlas biases>bias canvases>canvas gases>gas lenses>lens buses>bus "
        "bonuses>bonus campuses>campus censuses>census consensuses>consensus corpuses>corpus "
        "focuses>focus minuses>minus radiuses>radius statuses>status surpluses>surplus viruses>virus "
        "appendices>appendix apices>apex cortices>cortex indices>index matrices>matrix "
        "simplices>simplex vertices>vertex axes>axis quizzes>quiz"
    ),
}


@dataclass(frozen=True, slots=True)
class Token:
    """One word of a text: its folded form and where it stands in the original text."""

    term: str
    start: int
    end: int


def normalize(word: str) -> str:
    """Fold case and accents: "Schrödinger" -> "schrodinger", "ÉCOLE" -> "ecole"."""
    if word.isascii():  # most words: no accents, and casefold is lower (what _folded gives them)
        return word.lower()
    return _folded(word)


def _folded(word: str) -> str:
    previous = None
    # Repeat until stable: casefolding can expose accents (and NFKD can expose capitals).
    while word != previous:
        previous = word
        decomposed = unicodedata.normalize("NFKD", word)
        word = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return word


def _singular(word: str) -> str:
    known = _SINGULAR.get(word)
    if known is not None:
        return known
    if len(word) <= 3 or word[-1] != "s" or word in _NOT_PLURAL or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y" if len(word) > 4 else word[:-1]  # policies -> policy; ties -> tie
    if word.endswith(("yses", "theses")):
        return word[:-2] + "is"  # analyses -> analysis, hypotheses -> hypothesis
    if word.endswith(("sses", "shes", "ches", "xes", "zzes")):
        return word[:-2]  # processes -> process, patches -> patch, boxes -> box
    return word[:-1]


def fold(word: str) -> str:
    """Fold case, accents and plural of one word: "GANs" -> "gan", "Policies" -> "policy"."""
    return _singular(normalize(word))


@lru_cache(maxsize=1 << 16)
def _fold_parts(raw: str, plural: bool) -> tuple[tuple[str, str], ...]:
    # Normalizing can turn one word into several ("½" -> "1⁄2"): split again so every term
    # is itself a word, which a query can spell and which folds to itself.
    parts = _PLAIN_WORD.findall(normalize(raw))
    return tuple((_singular(part) if plural else part, part) for part in parts)


def forget_folds() -> None:
    """Drop every word kept folded, as in a fresh process (see bot.deliver.forget_planning)."""
    _fold_parts.cache_clear()


def scan(text: str, plural: bool = True) -> list[tuple[str, str, int, int]]:
    """Every word of `text` as (folded term, term with case and accents folded only, start, end)."""
    found: list[tuple[str, str, int, int]] = []
    append = found.append
    parts_of = _fold_parts
    for match in _WORD.finditer(text):
        parts = parts_of(match.group(), plural)
        if len(parts) == 1:  # nearly always: one tuple made, not unpacked and packed again
            append(parts[0] + match.span())
            continue
        start, end = match.span()
        for term, plain in parts:
            append((term, plain, start, end))
    return found


def tokenize(text: str, plural: bool = True) -> list[Token]:
    """The folded words of `text`, with their offsets in `text`; `plural=False` keeps plurals (names)."""
    return [Token(term, start, end) for term, _, start, end in scan(text, plural)]
