"""The watchlist query language: parse a query into a tree, match it against papers.

    diffusion transformer                   both words, anywhere in title, abstract or HF keywords
    "world model" OR "world models"         a phrase: words adjacent and in order (same here)
    self-supervised                         a hyphenated word is a phrase: "self supervised"
    (RL OR "reinforcement learning") -survey    groups; -word, -"phrase", -(group) exclude; NOT too
    title:agent author:"Yann LeCun" org:nvidia keyword:distillation abstract:(code OR repo)
    distill*                                a word that starts with distill (3 letters at least)

Words are compared folded (case, accents and plurals: see `bot.words`), whole words only. NOT
and - bind tightest, then AND (written or implied by a space), then OR. `author:` and `org:`
compare names, so they keep plurals apart (author:William does not find "Williams").

`parse_query` gives a tree of `Term`, `Phrase`, `And`, `Or`, `Not` and raises `QueryError`
with a caret under the problem. `index_paper` makes a paper searchable once; `match_query`
then says which words made a query match it. `anchor_leaves` and `QueryIndex` let a matcher skip the queries
that cannot match a paper (see bot.match).
"""

from __future__ import annotations

import difflib
from array import array
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from bot.errors import QueryError
from bot.models import Paper
from bot.words import normalize, scan

__all__ = [
    "DEFAULT_FIELDS",
    "FIELDS",
    "And",
    "FieldIndex",
    "Hit",
    "Node",
    "Not",
    "Or",
    "PaperText",
    "Phrase",
    "Term",
    "anchor_leaves",
    "format_query",
    "index_paper",
    "match_query",
    "parse_query",
]

FIELDS = ("title", "abstract", "keyword", "author", "org")
DEFAULT_FIELDS = ("title", "abstract", "keyword")
NAME_FIELDS = frozenset({"author", "org"})  # names: no plural folding
MIN_PREFIX = 3
_OPERATORS = {"OR": "or", "AND": "and", "NOT": "not"}
_SEPARATOR = "; "  # between the items of a list field (authors, keywords) in its text
_FIELD_ORDER = {field: number for number, field in enumerate(FIELDS)}


@dataclass(frozen=True, slots=True)
class Term:
    """One word (folded), or with `prefix` every word that starts with it; `field` None = default fields."""

    word: str
    field: str | None = None
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Phrase:
    """Folded words that must stand next to each other, in this order, in one field."""

    words: tuple[str, ...]
    field: str | None = None


@dataclass(frozen=True, slots=True)
class And:
    """Every child matches."""

    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """At least one child matches."""

    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """The child does not match."""

    child: Node


Node = Term | Phrase | And | Or | Not


class Hit(NamedTuple):
    """Where a query's word or phrase was found: `start`/`end` index `PaperText.texts[field]`.

    A named tuple, not a frozen dataclass as the rest of the data: hits are hashed by the
    million (sets of them when matching, the keys of cards when rendering), and a tuple's hash
    and equality are the interpreter's own, where a dataclass's run Python code each time."""

    field: str
    term: str  # as the query says it: "model", "distill*", "world model"
    start: int
    end: int


# -- parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Lexeme:
    kind: str  # ( ) or and not word phrase field
    text: str
    position: int


_OPERAND_KINDS = frozenset({"(", "not", "word", "phrase", "field"})


def _lex(query: str) -> list[_Lexeme]:
    lexemes: list[_Lexeme] = []
    i, n = 0, len(query)
    while i < n:
        char = query[i]
        if char.isspace():
            i += 1
        elif char in "()":
            lexemes.append(_Lexeme(char, char, i))
            i += 1
        elif char == '"':
            end = query.find('"', i + 1)
            if end < 0:
                raise QueryError('this quote is never closed: add a closing " (or remove this one)', query, i)
            lexemes.append(_Lexeme("phrase", query[i + 1 : end], i))
            i = end + 1
        elif char == "-":
            if i + 1 == n or query[i + 1].isspace() or query[i + 1] == ")":
                raise QueryError(
                    'a - must touch what it excludes: write -word, -"a phrase" or -(a OR b)', query, i
                )
            lexemes.append(_Lexeme("not", char, i))
            i += 1
        else:
            end = i
            while end < n and not query[end].isspace() and query[end] not in '()"':
                end += 1
            chunk = query[i:end]
            colon = chunk.find(":")
            if chunk in _OPERATORS:
                lexemes.append(_Lexeme(_OPERATORS[chunk], chunk, i))
            elif colon > 0:
                lexemes.append(_Lexeme("field", chunk[:colon], i))
                end = i + colon + 1  # what follows the colon is lexed on its own
            else:
                lexemes.append(_Lexeme("word", chunk, i))
            i = end
    return lexemes


def _join(kind: type[And] | type[Or], children: list[Node]) -> Node:
    if len(children) == 1:
        return children[0]
    flat: list[Node] = []
    for child in children:
        flat.extend(child.children if isinstance(child, kind) else (child,))
    return kind(tuple(flat))


class _Parser:
    """Recursive descent: or := and (OR and)*; and := unary (AND? unary)*; unary := (NOT|-) unary | atom."""

    def __init__(self, query: str):
        self.query = query
        self.lexemes = _lex(query)
        self.i = 0

    def fail(self, message: str, position: int) -> QueryError:
        return QueryError(message, self.query, position)

    def peek(self) -> _Lexeme | None:
        return self.lexemes[self.i] if self.i < len(self.lexemes) else None

    def parse(self) -> Node:
        if not self.lexemes:
            raise self.fail("the query is empty: write the words to look for, e.g. diffusion transformer", 0)
        node = self.parse_or(None)
        extra = self.peek()
        if extra is not None:  # only a ) can stop parse_or early
            raise self.fail(
                "this ) has no ( before it: remove it, or add a ( where the group starts", extra.position
            )
        return node

    def operand_after(self, operator: _Lexeme) -> None:
        following = self.peek()
        if following is None or following.kind not in _OPERAND_KINDS:
            if operator.kind == "field":
                name, example = f"{operator.text}:", f'{operator.text}:word or {operator.text}:"a phrase"'
            else:
                name = operator.text
                example = {"OR": "a OR b", "AND": "a AND b", "NOT": "NOT word"}.get(name, "-word")
            raise self.fail(
                f"nothing follows {name} here: write e.g. {example}, or remove it", operator.position
            )

    def parse_or(self, field: str | None) -> Node:
        children = [self.parse_and(field)]
        while (lexeme := self.peek()) is not None and lexeme.kind == "or":
            self.i += 1
            self.operand_after(lexeme)
            children.append(self.parse_and(field))
        return _join(Or, children)

    def parse_and(self, field: str | None) -> Node:
        children = [self.parse_unary(field)]
        while (lexeme := self.peek()) is not None and lexeme.kind not in (")", "or"):
            if lexeme.kind == "and":
                self.i += 1
                self.operand_after(lexeme)
            children.append(self.parse_unary(field))
        return _join(And, children)

    def parse_unary(self, field: str | None) -> Node:
        lexeme = self.peek()
        if lexeme is None:  # callers check for an operand first
            raise self.fail(
                "the query ends too early: finish it or remove the last operator", len(self.query)
            )
        self.i += 1
        kind = lexeme.kind
        if kind == "not":
            self.operand_after(lexeme)
            return Not(self.parse_unary(field))
        if kind == "(":
            following = self.peek()
            if following is None:
                raise self.fail("this ( is never closed: add a ) where the group ends", lexeme.position)
            if following.kind == ")":
                raise self.fail("empty parentheses: put words inside them, or remove them", lexeme.position)
            node = self.parse_or(field)
            following = self.peek()
            if following is None or following.kind != ")":
                raise self.fail("this ( is never closed: add a ) where the group ends", lexeme.position)
            self.i += 1
            return node
        if kind == "field":
            return self.parse_field(lexeme, field)
        if kind == "word":
            return self.parse_word(lexeme, field)
        if kind == "phrase":
            return self.parse_phrase(lexeme, field)
        if kind == ")":
            raise self.fail(
                "this ) has no ( before it: remove it, or add a ( where the group starts", lexeme.position
            )
        raise self.fail(
            f"nothing comes before {lexeme.text}: write e.g. a {lexeme.text} b, or remove it", lexeme.position
        )

    def parse_field(self, lexeme: _Lexeme, outer: str | None) -> Node:
        name = lexeme.text.casefold()
        colon = lexeme.position + len(lexeme.text)
        if name not in FIELDS:
            close = difflib.get_close_matches(name, FIELDS, n=1)
            guess = f"did you mean {close[0]}:? " if close else ""
            raise self.fail(
                f"unknown field {lexeme.text}: ({guess}fields are {', '.join(f + ':' for f in FIELDS)}); "
                f'to search for the text itself, put it in quotes: "{lexeme.text}:..."',
                lexeme.position,
            )
        if outer is not None:
            raise self.fail(
                f"{name}: inside {outer}:(...) cannot work: take it out of the {outer}: group",
                lexeme.position,
            )
        self.operand_after(lexeme)
        if self.lexemes[self.i].position != colon + 1:
            raise self.fail(f"write {name}:word with no space after the colon", colon)
        return self.parse_unary(name)

    def parse_word(self, lexeme: _Lexeme, field: str | None) -> Node:
        text, position = lexeme.text, lexeme.position
        star = text.find("*")
        if star >= 0:
            return self.parse_prefix(lexeme, field, star)
        words = [term for term, _, _, _ in scan(text, plural=field not in NAME_FIELDS)]
        if not words:
            raise self.fail(
                f"{text} has no letters or digits to look for: remove it (or quote it with words)", position
            )
        return Term(words[0], field) if len(words) == 1 else Phrase(tuple(words), field)

    def parse_prefix(self, lexeme: _Lexeme, field: str | None, star: int) -> Node:
        text, position = lexeme.text, lexeme.position
        words = scan(text[:star], plural=False)
        if star != len(text) - 1 or not words or words[-1][3] != star:
            raise self.fail("a * goes only at the very end of a word, like distill*", position + star)
        if len(words) > 1:
            raise self.fail(
                f"a * goes on a single word, not on {text}: write e.g. {' '.join(w[1] for w in words)}* "
                "to require each word",
                position + star,
            )
        stem = words[0][1]
        if len(stem) < MIN_PREFIX:
            raise self.fail(
                f"a * needs at least {MIN_PREFIX} letters before it (like dif*): {text} would match too much",
                position,
            )
        return Term(stem, field, prefix=True)

    def parse_phrase(self, lexeme: _Lexeme, field: str | None) -> Node:
        star = lexeme.text.find("*")
        if star >= 0:
            raise self.fail(
                "a * does not work inside quotes: write the word outside them, like distill*",
                lexeme.position + 1 + star,
            )
        words = tuple(term for term, _, _, _ in scan(lexeme.text, plural=field not in NAME_FIELDS))
        if not words:
            raise self.fail(
                'empty phrase: write words between the quotes, like "world model", or remove them',
                lexeme.position,
            )
        return Term(words[0], field) if len(words) == 1 else Phrase(words, field)


def parse_query(text: str) -> Node:
    """Parse a watch query into its tree; raise QueryError (with a caret under the problem) if malformed."""
    return _Parser(text).parse()


def format_query(node: Node) -> str:
    """The canonical text of a query tree: parse_query(format_query(node)) == node."""
    if isinstance(node, Term):
        return (f"{node.field}:" if node.field else "") + node.word + ("*" if node.prefix else "")
    if isinstance(node, Phrase):
        return (f"{node.field}:" if node.field else "") + '"' + " ".join(node.words) + '"'
    if isinstance(node, Not):
        inner = format_query(node.child)
        return "-" + (f"({inner})" if isinstance(node.child, And | Or) else inner)
    if isinstance(node, And):
        return " ".join(
            f"({format_query(child)})" if isinstance(child, Or) else format_query(child)
            for child in node.children
        )
    if isinstance(node, Or):
        return " OR ".join(format_query(child) for child in node.children)
    raise TypeError(f"not a query node: {node!r}")


# -- matching --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldIndex:
    """One field of a paper, tokenized once.

    Positions count words; list fields (authors, keywords) leave one empty position between
    items, so a phrase never runs from one author or keyword into the next.
    """

    text: str
    terms: tuple[str | None, ...]  # position -> folded term (None between items)
    spans: tuple[tuple[int, int] | None, ...]  # position -> (start, end) in `text`
    positions: Mapping[str, Sequence[int]]  # folded term -> its positions, ascending
    plain_positions: Mapping[str, Sequence[int]]  # plural-kept form -> positions, where not folded alike
    forms: tuple[str, ...]  # every key of both, sorted, for prefix lookups


def _index_field(items: Sequence[str], plural: bool) -> FieldIndex:
    terms: list[str | None] = []
    spans: list[tuple[int, int] | None] = []
    positions: dict[str, list[int]] = {}
    plain_positions: dict[str, list[int]] = {}
    offset = 0
    for number, item in enumerate(items):
        if number:
            terms.append(None)
            spans.append(None)
            offset += len(_SEPARATOR)
        position = len(terms)
        for term, plain, start, end in scan(item, plural):
            terms.append(term)
            spans.append((offset + start, offset + end))
            found = positions.get(term)
            if found is None:
                positions[term] = [position]
            else:
                found.append(position)
            if plain != term:
                plain_positions.setdefault(plain, []).append(position)
            position += 1
        offset += len(item)
    return FieldIndex(
        text=_SEPARATOR.join(items),
        terms=tuple(terms),
        spans=tuple(spans),
        positions=positions,
        plain_positions=plain_positions,
        forms=tuple(sorted(positions.keys() | plain_positions.keys())),
    )


@dataclass(frozen=True, slots=True)
class PaperText:
    """A paper made searchable: each field tokenized once, for any number of queries."""

    fields: Mapping[str, FieldIndex]
    texts: Mapping[str, str]  # field -> the text that Hit offsets index (list items joined by "; ")


def index_paper(paper: Paper) -> PaperText:
    """Tokenize a paper's title, abstract, HF keywords, authors and organization, once."""
    organization = [name for name in (paper.organization, paper.organization_fullname) if name]
    if len(organization) == 2 and normalize(organization[0]) == normalize(organization[1]):
        organization = organization[:1]
    items = {
        "title": [paper.title],
        "abstract": [paper.abstract],
        "keyword": list(paper.ai_keywords),
        "author": list(paper.authors),
        "org": organization,
    }
    fields = {field: _index_field(values, field not in NAME_FIELDS) for field, values in items.items()}
    return PaperText(
        fields=MappingProxyType(fields),
        texts=MappingProxyType({field: index.text for field, index in fields.items()}),
    )


def _field_names(field: str | None) -> tuple[str, ...]:
    return DEFAULT_FIELDS if field is None else (field,)


def _label(leaf: Term | Phrase) -> str:
    """What a leaf's hits say they found (Hit.term): "model", "distill*", "world model"."""
    if isinstance(leaf, Phrase):
        return " ".join(leaf.words)
    return leaf.word + "*" if leaf.prefix else leaf.word


def _label_key(leaf: Term | Phrase) -> object:
    """Equal for leaves of one label (`_label`), made without joining a phrase's words: a
    string per phrase, kept a moment, left 6 MB of holes in the memory of 100,000 subscribers'
    index."""
    if isinstance(leaf, Phrase):
        return leaf.words if len(leaf.words) > 1 else leaf.words[0]
    return ("*", leaf.word) if leaf.prefix else leaf.word


def _match_term(node: Term, text: PaperText) -> list[Hit]:
    hits = []
    label = _label(node)
    for field in _field_names(node.field):
        index = text.fields[field]
        if node.prefix:
            found: set[int] = set()
            forms = index.forms
            at = bisect_left(forms, node.word)
            while at < len(forms) and forms[at].startswith(node.word):
                found.update(index.positions.get(forms[at], ()))
                found.update(index.plain_positions.get(forms[at], ()))
                at += 1
            positions: Sequence[int] = sorted(found)
        else:
            positions = index.positions.get(node.word, ())
        for position in positions:
            start, end = index.spans[position]
            hits.append(Hit(field, label, start, end))
    return hits


def _match_phrase(node: Phrase, text: PaperText) -> list[Hit]:
    hits = []
    words = node.words
    last = len(words) - 1
    label = _label(node)
    for field in _field_names(node.field):
        index = text.fields[field]
        terms = index.terms
        for position in index.positions.get(words[0], ()):
            if position + last < len(terms) and all(
                terms[position + k] == words[k] for k in range(1, last + 1)
            ):
                hits.append(Hit(field, label, index.spans[position][0], index.spans[position + last][1]))
    return hits


def _match_leaf(node: Term | Phrase, text: PaperText) -> list[Hit] | None:
    hits = _match_term(node, text) if isinstance(node, Term) else _match_phrase(node, text)
    return hits or None


def _match(node: Node, leaf_hits: Callable[[Term | Phrase], list[Hit] | None]) -> list[Hit] | None:
    if isinstance(node, Term | Phrase):
        return leaf_hits(node)
    if isinstance(node, Not):
        return None if _match(node.child, leaf_hits) is not None else []
    if isinstance(node, And):
        hits = []
        for child in node.children:
            found = _match(child, leaf_hits)
            if found is None:
                return None
            hits.extend(found)
        return hits
    if isinstance(node, Or):
        matched = False
        hits = []
        for child in node.children:
            found = _match(child, leaf_hits)
            if found is not None:
                matched = True
                hits.extend(found)
        return hits if matched else None
    raise TypeError(f"not a query node: {node!r}")


def _hit_order(hit: Hit) -> tuple[int, int, int, str]:
    return (_FIELD_ORDER[hit.field], hit.start, hit.end, hit.term)


def _sorted_hits(hits: list[Hit], unique: bool = False) -> tuple[Hit, ...]:
    """The hits in _hit_order, without doubles; `unique` if there are none to drop."""
    return tuple(sorted(hits if unique else set(hits), key=_hit_order))


def match_query(node: Node, text: PaperText) -> tuple[Hit, ...] | None:
    """None if the query does not match; else the words that made it match (() for a pure negation)."""
    hits = _match(node, lambda leaf: _match_leaf(leaf, text))
    return None if hits is None else _sorted_hits(hits)


# -- many queries at once: anchors and the index ------------------------------------------

Leaf = Term | Phrase


def _leaves(node: Node) -> Iterator[Leaf]:
    if isinstance(node, Term | Phrase):
        yield node
    elif isinstance(node, Not):
        yield from _leaves(node.child)
    else:
        for child in node.children:
            yield from _leaves(child)


def _commonness(leaf: Leaf) -> float:
    # A guess at how often a leaf is found, to anchor an AND on its rarest part: names are
    # rarer than phrases, phrases than words, words than prefixes; longer ones rarer still.
    if isinstance(leaf, Phrase):
        kind, length = 1, sum(map(len, leaf.words))
    else:
        kind, length = (3 if leaf.prefix else 2), len(leaf.word)
    if leaf.field in NAME_FIELDS:
        kind = 0
    return kind + 1 / (1 + length)


def anchor_leaves(node: Node) -> frozenset[Leaf] | None:
    """Leaves (words, prefixes, phrases) one of which every paper the query matches contains, or
    None for a pure negation: for indexing stored queries (`QueryIndex`), a paper need only be
    tried on the queries anchored on a leaf it holds, plus the unanchored ones. An AND is
    anchored on its rarest-looking part (see `_commonness`)."""
    if isinstance(node, Term | Phrase):
        return frozenset({node})
    if isinstance(node, Not):
        return None
    if isinstance(node, And):
        options = [found for child in node.children if (found := anchor_leaves(child)) is not None]
        return min(options, key=lambda leaves: sum(map(_commonness, leaves))) if options else None
    if isinstance(node, Or):
        union: set[Leaf] = set()
        for child in node.children:
            found = anchor_leaves(child)
            if found is None:
                return None
            union |= found
        return frozenset(union)
    raise TypeError(f"not a query node: {node!r}")


# A query compiled for QueryIndex: a leaf by its number, or (kind, parts) for "and", "or", "not".
_Compiled = int | tuple[str, tuple]


class QueryIndex:
    """Many stored queries, matched against one paper at a time (the percolator trick).

    The words, prefixes and phrases of every query (its leaves) are filed under what a paper
    must hold for them to be found: a word, a prefix, the first two words of a phrase, each
    in the fields it is looked for in. A paper's own words find the leaves it contains; those
    leaves, the queries made of them alone or ORed, which match outright, and the larger
    queries anchored on them (see `anchor_leaves`); only those, and pure negations, are
    evaluated, and each leaf is matched once however many queries share it. `match` gives
    what `match_query` gives.
    """

    def __init__(self, queries: Iterable[Node]):
        self.queries: tuple[Node, ...] = tuple(queries)
        numbers: dict[Leaf, int] = {}
        # Each query's leaves by number, in _leaves's order: a leaf (a dataclass) is hashed
        # by a Python call each time, so once here rather than again below.
        numbered = [
            [numbers.setdefault(leaf, len(numbers)) for leaf in _leaves(query)] for query in self.queries
        ]
        self._leaves = tuple(numbers)
        # Leaves of one label (alike but for their field) can find the same hits; others cannot.
        labels: dict[object, int] = {}
        self._label_of = array("i", (labels.setdefault(_label_key(leaf), len(labels)) for leaf in numbers))
        # A query that is a leaf, or leaves ORed, matches wherever one of them is found: those
        # are found by set operations alone (see `match`), the others are evaluated.
        either: list[list[int]] = [[] for _ in self._leaves]  # leaf -> the queries of leaves ORed with it
        anchored: list[list[int]] = [[] for _ in self._leaves]  # leaf -> larger queries anchored on it
        self._unanchored: list[int] = []
        paired: dict[int, dict[int, list[int]]] = {}  # leaf -> another leaf -> queries requiring both
        self._larger: list[_Larger | None] = [None] * len(self.queries)  # by number; None: a leaf alone
        for number, query in enumerate(self.queries):
            if isinstance(query, Term | Phrase):
                either[numbers[query]].append(number)
                continue
            larger = self._larger[number] = _Larger.of(query, numbers, numbered[number])
            if larger.kind == "any":
                for leaf in larger.leaves:
                    either[leaf].append(number)
                continue
            anchors = anchor_leaves(query)
            if anchors is None:
                self._unanchored.append(number)
            elif larger.kind == "all" and len(larger.required) > 1:
                # Leaves ANDed: filed under their anchor and another of them, so that a paper
                # tries only those whose two leaves it holds, found by one set intersection
                # (two in three of those anchored alone lacked the second leaf).
                (anchor,) = anchors
                first = numbers[anchor]
                partner = min((self._leaves[n] for n in larger.required if n != first), key=_commonness)
                paired.setdefault(first, {}).setdefault(numbers[partner], []).append(number)
                continue
            elif larger.kind == "tree" and larger.required and larger.needs:
                # An AND of leaves and ORs, (a OR b) c: filed under its rarest leaf and each of
                # the rarest OR's, tried only where it holds both (one in forty did otherwise).
                first = min(larger.required, key=lambda n: _commonness(self._leaves[n]))
                need = min(larger.needs, key=lambda ns: sum(_commonness(self._leaves[n]) for n in ns))
                for partner in need:
                    paired.setdefault(first, {}).setdefault(partner, []).append(number)
                continue
            for leaf in anchors or ():
                anchored[numbers[leaf]].append(number)
        self._either = tuple(tuple(found) for found in either)
        self._anchored = tuple(tuple(found) for found in anchored)
        self._paired = {
            first: {partner: tuple(queries) for partner, queries in partners.items()}
            for first, partners in paired.items()
        }
        # Per field, the leaves looked for in it: by word, by prefix, by the first two or three
        # words of a phrase. Found so, a leaf is in the paper, but for a phrase of four words
        # or more, which is checked.
        self._words: dict[str, dict[str, list[int]]] = {field: {} for field in FIELDS}
        self._prefixes: dict[str, dict[str, list[int]]] = {field: {} for field in FIELDS}
        self._phrases: dict[str, dict[tuple[str, ...], list[int]]] = {field: {} for field in FIELDS}
        self._phrase_lengths: dict[str, set[int]] = {field: set() for field in FIELDS}
        self._long_phrases: set[int] = set()
        for leaf, number in numbers.items():
            for field in _field_names(leaf.field):
                if isinstance(leaf, Phrase) and len(leaf.words) > 1:
                    start = leaf.words[:3]
                    self._phrases[field].setdefault(start, []).append(number)
                    self._phrase_lengths[field].add(len(start))
                    if len(leaf.words) > 3:
                        self._long_phrases.add(number)
                elif isinstance(leaf, Phrase):
                    self._words[field].setdefault(leaf.words[0], []).append(number)
                elif leaf.prefix:
                    self._prefixes[field].setdefault(leaf.word, []).append(number)
                else:
                    self._words[field].setdefault(leaf.word, []).append(number)
        # As tuples, one per distinct list: the default fields mostly file the same leaves.
        shared: dict[tuple[int, ...], tuple[int, ...]] = {}
        for table in (self._words, self._prefixes, self._phrases):
            for by_key in table.values():
                for key, numbers_of in by_key.items():
                    found = tuple(numbers_of)
                    by_key[key] = shared.setdefault(found, found)  # type: ignore[assignment]
        # Prefixes by their first letters, as many as the field's shortest prefix has: a word of
        # a paper is looked up once, then tried on the few prefixes that start as it does, not
        # looked up cut at each length of prefix.
        self._prefix_starts: dict[str, tuple[int, dict[str, tuple[tuple[str, tuple[int, ...]], ...]]]] = {}
        for field, by_prefix in self._prefixes.items():
            shortest = min(map(len, by_prefix), default=0)
            starts: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
            for prefix, numbers_of in by_prefix.items():
                starts.setdefault(prefix[:shortest], []).append((prefix, numbers_of))  # type: ignore[arg-type]
            self._prefix_starts[field] = (shortest, {start: tuple(pairs) for start, pairs in starts.items()})
        del self._prefixes

    def __len__(self) -> int:
        return len(self.queries)

    def _found_leaves(self, text: PaperText) -> set[int]:
        """Every leaf the paper contains, and the long phrases whose first three words it contains."""
        found: set[int] = set()
        for field, index in text.fields.items():
            words, phrases = self._words[field], self._phrases[field]
            if words:
                for term in index.positions:
                    if (numbers := words.get(term)) is not None:
                        found.update(numbers)
            shortest, starts = self._prefix_starts[field]
            if starts:
                for form in index.forms:
                    for prefix, numbers in starts.get(form[:shortest], ()):
                        if form.startswith(prefix):
                            found.update(numbers)
            terms = index.terms
            for length in self._phrase_lengths[field]:
                for start in zip(*(terms[i:] for i in range(length)), strict=False):
                    if (numbers := phrases.get(start)) is not None:  # type: ignore[arg-type]
                        found.update(numbers)
        return found

    def match(self, text: PaperText) -> dict[int, tuple[Hit, ...]]:
        """The hits of every query that matches the paper, by its position in `queries`.

        Queries whose hits all come from one leaf share that leaf's tuple of hits (the same
        object), so that a caller can work on it once for all of them.
        """
        leaves = self._leaves
        found = self._found_leaves(text)
        leaf_hits: dict[int, tuple[Hit, ...]] = {}
        for number in found & self._long_phrases:
            hits = _match_leaf(leaves[number], text)
            if hits is None:
                found.discard(number)
            else:
                leaf_hits[number] = tuple(hits)  # in order already: see hits_of
        # `found` now holds exactly the leaves the paper contains: which queries match is set
        # logic; hits are made once per leaf, and only for the queries that match.

        def hits_of(number: int) -> tuple[Hit, ...]:
            # One leaf's hits need no _sorted_hits: _match_term and _match_phrase give them
            # field after field in FIELDS order, in a field by position, one per position, so
            # unique and in _hit_order already.
            hits = leaf_hits.get(number)
            if hits is None:
                hits = leaf_hits[number] = tuple(_match_leaf(leaves[number], text) or ())
            return hits

        joined: dict[frozenset[int], tuple[Hit, ...]] = {}  # the hits of several leaves together

        label_of = self._label_of

        def hits_of_all(sources: Collection[int]) -> tuple[Hit, ...]:
            key = frozenset(sources)
            hits = joined.get(key)
            if hits is None:
                # Each leaf's hits are unique, and leaves of different labels find none alike.
                unique = len(set(map(label_of.__getitem__, key))) == len(key)
                hits = joined[key] = _sorted_hits([hit for leaf in key for hit in hits_of(leaf)], unique)
            return hits

        matched: dict[int, tuple[Hit, ...]] = {}
        candidates = set(self._unanchored)
        either, anchored, paired, larger = self._either, self._anchored, self._paired, self._larger
        seen: set[int] = set()
        several: set[int] = set()  # ORs of which several leaves are found
        for number in found:
            if queries := either[number]:
                if not seen.isdisjoint(queries):
                    several.update(seen.intersection(queries))
                seen.update(queries)
                matched.update(dict.fromkeys(queries, hits_of(number)))
            candidates.update(anchored[number])
            if (partners := paired.get(number)) is not None:
                for partner in partners.keys() & found:
                    candidates.update(partners[partner])
        for number in several:
            matched[number] = hits_of_all(larger[number].sources(found))  # type: ignore[union-attr,arg-type]
        for number in candidates:
            query = larger[number]
            if not found.issuperset(query.required):  # type: ignore[union-attr]
                continue
            sources = query.sources(found)  # type: ignore[union-attr]
            if not sources:
                if sources is not None:  # a pure negation
                    matched[number] = ()
                continue
            if len(sources) == 1:
                matched[number] = hits_of(next(iter(sources)))
                continue
            matched[number] = hits_of_all(sources)
        return matched


@dataclass(frozen=True, slots=True)
class _Larger:
    """A query of more than one leaf, as QueryIndex evaluates it: `required` leaves it cannot
    match without, and the commonest shapes by set operations alone.

    The hits of a query that matches are those of a set of its leaves (`sources`): `_match`
    joins their hits, and `match_query` sorts them and drops doubles, so their order and
    repeats do not matter.
    """

    kind: str  # "all" (leaves and -leaves, ANDed), "any" (leaves ORed), or "tree" (any other)
    # Tuples, not frozensets: a frozenset takes 216 bytes however small, and there are a few
    # hundred thousand of these; set methods take a tuple as well.
    required: tuple[int, ...]  # sorted: a key for the hits of these leaves together
    leaves: tuple[int, ...]  # "all": the leaves it excludes; "any": its leaves
    tree: _Compiled | None = None
    # "tree": sets of leaves it needs one of each of, the anchors of an AND's parts: the tree is
    # evaluated only where they are found (for (a OR b) c, found on c, one time in 40)
    needs: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def of(cls, query: Node, numbers: Mapping[Leaf, int], leaves: Sequence[int]) -> _Larger:
        """`leaves`: the numbers of the query's leaves, as _leaves gives them (QueryIndex has
        them already: a leaf is hashed by a Python call each time)."""
        required = tuple(sorted({numbers[leaf] for leaf in _required_leaves(query)}))
        if isinstance(query, And) and all(
            isinstance(child, Term | Phrase)
            or (isinstance(child, Not) and isinstance(child.child, Term | Phrase))
            for child in query.children
        ):
            excluded = {numbers[child.child] for child in query.children if isinstance(child, Not)}
            return cls("all", required, tuple(sorted(excluded)))
        if isinstance(query, Or) and all(isinstance(child, Term | Phrase) for child in query.children):
            return cls("any", required, tuple(sorted(set(leaves))))  # its children are its leaves
        needs = set()
        for child in query.children if isinstance(query, And) else ():
            anchors = anchor_leaves(child)
            if anchors is not None and len(anchors) > 1:
                needs.add(tuple(sorted(numbers[leaf] for leaf in anchors)))
        return cls("tree", required, (), _compile(query, numbers), tuple(sorted(needs)))

    def sources(self, found: set[int]) -> Collection[int] | None:
        """None if the query does not match a paper that contains the leaves `found` (and the
        required ones); else the leaves whose hits are its hits (none for a pure negation)."""
        if self.kind == "all":
            return self.required if found.isdisjoint(self.leaves) else None
        if self.kind == "any":
            return found.intersection(self.leaves) or None
        for leaves in self.needs:
            if found.isdisjoint(leaves):
                return None
        sources = _sources(self.tree, found)  # type: ignore[arg-type]
        return None if sources is None else frozenset(sources)


def _required_leaves(node: Node) -> set[Leaf]:
    """Leaves that every paper the query matches contains (maybe not all such leaves)."""
    if isinstance(node, Term | Phrase):
        return {node}
    if isinstance(node, And):
        return set().union(*map(_required_leaves, node.children))
    return set()


def _compile(node: Node, numbers: Mapping[Leaf, int]) -> _Compiled:
    if isinstance(node, Term | Phrase):
        return numbers[node]
    if isinstance(node, Not):
        return ("not", (_compile(node.child, numbers),))
    kind = "and" if isinstance(node, And) else "or"
    return (kind, tuple(_compile(child, numbers) for child in node.children))


def _sources(code: _Compiled, found: set[int]) -> list[int] | None:
    """None if the compiled query does not match a paper that contains the leaves `found`; else
    the leaves whose hits `_match` would give (none for a pure negation)."""
    if isinstance(code, int):
        return [code] if code in found else None
    kind, parts = code
    if kind == "not":
        return None if _sources(parts[0], found) is not None else []
    sources: list[int] = []
    if kind == "and":
        for part in parts:
            more = _sources(part, found)
            if more is None:
                return None
            sources.extend(more)
        return sources
    matched = False
    for part in parts:
        more = _sources(part, found)
        if more is not None:
            matched = True
            sources.extend(more)
    return sources if matched else None
