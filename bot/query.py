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
then says which words made a query match it. `anchor_terms` lets a matcher skip the queries
that cannot match a paper (see bot.match).
"""

from __future__ import annotations

import difflib
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

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
    "anchor_terms",
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


@dataclass(frozen=True, slots=True)
class Hit:
    """Where a query's word or phrase was found: `start`/`end` index `PaperText.texts[field]`."""

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
    terms: frozenset[str]  # every folded and plain form in any field: what anchor_terms are looked up in


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
    terms = frozenset().union(*(index.forms for index in fields.values()))
    return PaperText(
        fields=MappingProxyType(fields),
        texts=MappingProxyType({field: index.text for field, index in fields.items()}),
        terms=terms,
    )


def _field_names(field: str | None) -> tuple[str, ...]:
    return DEFAULT_FIELDS if field is None else (field,)


def _match_term(node: Term, text: PaperText) -> list[Hit]:
    hits = []
    label = node.word + "*" if node.prefix else node.word
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
    label = " ".join(words)
    for field in _field_names(node.field):
        index = text.fields[field]
        terms = index.terms
        for position in index.positions.get(words[0], ()):
            if position + last < len(terms) and all(
                terms[position + k] == words[k] for k in range(1, last + 1)
            ):
                hits.append(Hit(field, label, index.spans[position][0], index.spans[position + last][1]))
    return hits


def _match(node: Node, text: PaperText) -> list[Hit] | None:
    if isinstance(node, Term):
        return _match_term(node, text) or None
    if isinstance(node, Phrase):
        return _match_phrase(node, text) or None
    if isinstance(node, Not):
        return None if _match(node.child, text) is not None else []
    if isinstance(node, And):
        hits = []
        for child in node.children:
            found = _match(child, text)
            if found is None:
                return None
            hits.extend(found)
        return hits
    if isinstance(node, Or):
        matched = False
        hits = []
        for child in node.children:
            found = _match(child, text)
            if found is not None:
                matched = True
                hits.extend(found)
        return hits if matched else None
    raise TypeError(f"not a query node: {node!r}")


def match_query(node: Node, text: PaperText) -> tuple[Hit, ...] | None:
    """None if the query does not match; else the words that made it match (() for a pure negation)."""
    hits = _match(node, text)
    if hits is None:
        return None
    return tuple(sorted(set(hits), key=lambda hit: (FIELDS.index(hit.field), hit.start, hit.end, hit.term)))


# -- anchors ---------------------------------------------------------------------------------


def _rarity(anchors: frozenset[str]) -> tuple[int, int, int]:
    # Fewer entries first, exact words before prefixes, then the longest shortest word.
    return (len(anchors), sum(a.endswith("*") for a in anchors), -min(len(a) for a in anchors))


def anchor_terms(node: Node) -> frozenset[str] | None:
    """Terms one of which every matching paper contains (a prefix ends in *), or None if there are none.

    For indexing stored queries: a paper need only be tested against the queries anchored on
    one of its `PaperText.terms`, plus the unanchored ones.
    """
    if isinstance(node, Term):
        return frozenset({node.word + "*" if node.prefix else node.word})
    if isinstance(node, Phrase):
        return frozenset({max(node.words, key=len)})
    if isinstance(node, Not):
        return None
    if isinstance(node, And):
        options = [found for child in node.children if (found := anchor_terms(child)) is not None]
        return min(options, key=_rarity) if options else None
    if isinstance(node, Or):
        union: set[str] = set()
        for child in node.children:
            found = anchor_terms(child)
            if found is None:
                return None
            union |= found
        return frozenset(union)
    raise TypeError(f"not a query node: {node!r}")
