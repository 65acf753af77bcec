"""A digest as chat sees it: Slack Block Kit messages, and the webhook's JSON payload.

The only place these two formats are built. Both are pure: `Digest` in, plain values out;
the pipeline serializes them and the ledger stores the bytes before the first attempt.

**Slack.** `slack_messages` makes one message when the digest fits Slack's limits, else
several numbered ones ("(1/3)"), each a separate post and a separate step in the ledger,
so a failure after the first never posts the first again. Every paper is in exactly one
message: none is silently cut (only an over-long snippet is shortened, with "…"). Limits:

- at most `MAX_BLOCKS` (50) blocks a message: a header, one section per paper, a context;
- at most `MAX_TEXT` (3,000) characters in any text, `MAX_HEADER` (150) in the header;
- at most `MAX_MESSAGE_TEXT` characters in a whole message, under the 40,000 at which Slack
  truncates. Lengths are counted in UTF-16 code units, as Slack's JavaScript counts them,
  so an emoji counts two.

All text from a paper, a subscriber or a watch is escaped for mrkdwn (`&` `<` `>` become
`&amp;` `&lt;` `&gt;`), so a title like `<!channel> <https://evil.example|click>` shows as
those characters: it never mentions anyone, nor forms a link. In a link's label `|` is
shown as "∣" (Slack would end the URL there), and link URLs are percent-encoded. Texts are
`verbatim`, so Slack does not turn bare URLs or names into links either, and "@channel",
"@here" and "@everyone" carry an invisible word joiner so no client can take them for one.

**Webhook.** `webhook_payload` is the documented, versioned body of a webhook POST (type
"paperbot.matches.v1"; see the README): every stored field of each paper, with the
watches, score, matched terms (with offsets) and reasons.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from urllib.parse import quote

from bot.match import Match
from bot.models import Digest, Paper
from bot.render import PaperCard, paper_card

__all__ = [
    "MAX_BLOCKS",
    "MAX_HEADER",
    "MAX_MESSAGE_TEXT",
    "MAX_TEXT",
    "PAYLOAD_TYPE",
    "SlackMessage",
    "escape_mrkdwn",
    "slack_length",
    "slack_messages",
    "webhook_payload",
]

MAX_BLOCKS = 50
MAX_TEXT = 3000
MAX_HEADER = 150
MAX_MESSAGE_TEXT = 30_000
PAYLOAD_TYPE = "paperbot.matches.v1"

# What one paper's section may spend on each part, so that it stays under MAX_TEXT whatever
# the paper holds; the snippet gets what is left.
_TITLE_CHARS = 400
_LINE_CHARS = 400  # authors, the watches line
_URL_CHARS = 250  # a longer link is left out rather than cut
_TERMS_SHOWN = 5
_FALLBACK_CHARS = 1000
_MIN_SNIPPET = 40
_ELLIPSIS = "…"
_MENTION = re.compile(r"@(?=(?:channel|here|everyone)\b)", re.IGNORECASE)
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"  # kept as they are; anything else (| < > " spaces...) is encoded


@dataclass(frozen=True, slots=True)
class SlackMessage:
    """One Slack post: its JSON payload, and the papers it carries (for the ledger)."""

    payload: dict
    paper_ids: tuple[str, ...]


# -- mrkdwn ------------------------------------------------------------------------------------


def slack_length(text: str) -> int:
    """The length Slack measures: UTF-16 code units (an emoji outside the BMP counts two)."""
    return len(text.encode("utf-16-le")) // 2


def escape_mrkdwn(text: str) -> str:
    """`text` safe inside mrkdwn: &, < and > escaped (nothing can form a link or a mention),
    whitespace runs made one space, "@channel"-like words defused with a word joiner."""
    text = " ".join(text.split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MENTION.sub("@\u2060", text)


def _fit(text: str, limit: int, label: bool = False) -> str:
    """`text` escaped (as a link label too, with `label`), shortened with "…" to `limit` units."""

    def escaped(piece: str) -> str:
        out = escape_mrkdwn(piece)
        return out.replace("|", "∣") if label else out

    whole = escaped(text)
    if slack_length(whole) <= limit:
        return whole
    plain = " ".join(text.split())
    cut = plain[:limit]
    while cut and slack_length(escaped(cut) + _ELLIPSIS) > limit:
        excess = slack_length(escaped(cut) + _ELLIPSIS) - limit
        cut = cut[: -max(1, excess // 5)]  # escapes are at most five units a character
    space = cut.rfind(" ")
    if space > len(cut) // 2:  # end on a word when that loses little
        cut = cut[:space]
    return escaped(cut.rstrip(" ,;:.")) + _ELLIPSIS


def _url(url: str) -> str | None:
    """`url` ready for `<url|label>`, or None when it is too long to show."""
    encoded = quote(url, safe=_URL_SAFE).replace("&", "&amp;")
    return encoded if len(encoded) <= _URL_CHARS else None


def _link(url: str | None, label: str) -> str | None:
    target = _url(url) if url else None
    return f"<{target}|{label}>" if target else None


# -- Slack -------------------------------------------------------------------------------------


def _plain(segments) -> str:
    return "".join(segment.text for segment in segments)


def _watch_line(match: Match) -> str:
    """Which watches matched, why now (rising), and the words they found where."""
    names = ", ".join(" ".join(name.split()) for name in match.watches)
    parts = [("Watch: " if len(match.watches) == 1 else "Watches: ") + names]
    parts.extend(match.reasons)
    fields: dict[str, list[str]] = {}
    for hit in match.hits:
        found = fields.setdefault(hit.term, [])
        if hit.field not in found:
            found.append(hit.field)
    terms = [f"“{term}” ({', '.join(where)})" for term, where in list(fields.items())[:_TERMS_SHOWN]]
    if len(fields) > _TERMS_SHOWN:
        terms.append(f"{len(fields) - _TERMS_SHOWN} more")
    if terms:
        parts.append("matched " + ", ".join(terms))
    return _fit(" · ".join(parts), _LINE_CHARS)


def _section_text(match: Match, card: PaperCard) -> str:
    """One paper in mrkdwn, at most MAX_TEXT units: title linked to its Hugging Face page,
    authors, counts, the watches and why, the snippet (shortened if need be), links."""
    title = _fit(card.title_plain or card.hf_url, _TITLE_CHARS, label=True)
    lines = [f"*{card.rank}. {_link(card.hf_url, title) or title}*"]
    people = " · ".join(part for part in (_plain(card.authors), _plain(card.organization)) if part)
    if people:
        lines.append(_fit(people, _LINE_CHARS))
    if card.stats:
        lines.append(escape_mrkdwn(" · ".join(card.stats)))
    lines.append(_watch_line(match))
    links = [
        _link(card.arxiv_url, "arXiv"),
        _link(card.pdf_url, "PDF"),
        _link(card.code_url, "Code"),
        _link(card.project_url, "Project page"),
    ]
    tail = " · ".join(link for link in links if link)
    room = MAX_TEXT - slack_length("\n".join(lines + ([tail] if tail else []))) - len("\n> ")
    snippet = " ".join(_plain(card.snippet).split())
    if snippet and room >= _MIN_SNIPPET:
        lines.append("> " + _fit(snippet, room))
    if tail:
        lines.append(tail)
    return "\n".join(lines)


def _header(digest: Digest, part: int, parts: int) -> str:
    if digest.total == 0:
        count = "no new papers"
    else:
        count = f"{digest.total} paper{'' if digest.total == 1 else 's'}"
    suffix = f" ({part}/{parts})" if parts > 1 else ""
    head = f"paperbot · {count} · "
    label = " ".join(digest.label.split())
    room = MAX_HEADER - slack_length(head + suffix)
    if slack_length(label) > room:
        label = label[: max(0, room - 1)].rstrip() + _ELLIPSIS
    return head + label + suffix


def _context_text(digest: Digest, first: int, last: int, part: int, parts: int) -> str:
    shown = len(digest.matches)
    pieces = []
    if parts > 1:
        pieces.append(f"Papers {first}–{last} of {shown}, ranked by how well they match your watches.")
    more = digest.total - shown
    if more and part == parts:
        where = _link(digest.list_url, "the full list") or escape_mrkdwn(digest.list_url)
        pieces.append(f"And {more} more: {where}.")
    pieces.append(
        " · ".join(
            link
            for link in (
                _link(digest.manage_url, "Manage your watches"),
                _link(digest.unsubscribe_url, "Unsubscribe"),
            )
            if link
        )
    )
    return " ".join(piece for piece in pieces if piece)


def _message(
    digest: Digest, sections: list[tuple[str, str]], first: int, part: int, parts: int
) -> SlackMessage:
    header = _header(digest, part, parts)
    blocks: list[dict] = [{"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}}]
    if sections:
        blocks.extend(
            {"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": True}}
            for _, text in sections
        )
    else:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "No paper matched your watches.", "verbatim": True},
            }
        )
    context = _context_text(digest, first, first + len(sections) - 1, part, parts)
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context, "verbatim": True}]})
    return SlackMessage(
        payload={
            "text": _fallback(digest, header, first),
            "blocks": blocks,
            "unfurl_links": False,
            "unfurl_media": False,
        },
        paper_ids=tuple(paper_id for paper_id, _ in sections),
    )


def _fallback(digest: Digest, header: str, first: int) -> str:
    """The notification text: the header and the first titles of this message."""
    titles = "; ".join(" ".join(match.paper.title.split()) for match in digest.matches[first - 1 : first + 4])
    text = escape_mrkdwn(header)
    if titles:
        text += ": " + _fit(titles, _FALLBACK_CHARS - slack_length(text) - 2)
    return text


def _split(sections: list[tuple[str, str]], most: int) -> list[list[tuple[str, str]]]:
    """Sections packed in order into messages of at most `most` papers and MAX_MESSAGE_TEXT units."""
    # A message's own text besides its sections: the header, context and fallback, at most.
    overhead = MAX_HEADER + MAX_TEXT + _FALLBACK_CHARS
    groups: list[list[tuple[str, str]]] = [[]]
    used = overhead
    for section in sections:
        size = slack_length(section[1])
        if groups[-1] and (len(groups[-1]) >= most or used + size > MAX_MESSAGE_TEXT):
            groups.append([])
            used = overhead
        groups[-1].append(section)
        used += size
    return groups


def slack_messages(digest: Digest) -> list[SlackMessage]:
    """The Slack messages of `digest`, in order: one if it fits Slack's limits, else several,
    numbered, each holding whole papers. Always at least one (an empty digest says so)."""
    sections = [
        (match.paper.id, _section_text(match, paper_card(match, rank)))
        for rank, match in enumerate(digest.matches, 1)
    ]
    groups = _split(sections, MAX_BLOCKS - 2)
    if len(groups) > 1:
        # As many messages as needed, but even: 40, 40, 40 reads better than 48, 48, 24.
        even = _split(sections, -(-len(sections) // len(groups)))
        if len(even) == len(groups):
            groups = even
    messages = []
    first = 1
    for part, group in enumerate(groups, 1):
        messages.append(_message(digest, group, first, part, len(groups)))
        first += len(group)
    return messages


# -- webhook -----------------------------------------------------------------------------------


def _json_value(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    return value


def _paper_fields(paper: Paper) -> dict:
    return {field.name: _json_value(getattr(paper, field.name)) for field in dataclasses.fields(paper)}


def webhook_payload(digest: Digest) -> dict:
    """The JSON body of a webhook POST (`PAYLOAD_TYPE`), documented in the README.

    `papers` are the digest's matches, best first; `total` counts every match of the period,
    also those past the subscriber's `max_papers` (they are on `list_url`). Times are UTC
    ISO 8601; a paper's `terms` give the matched words with offsets into the field's text
    (for the list fields, author, keyword and org, the items joined by "; ").
    """
    papers = []
    for rank, match in enumerate(digest.matches, 1):
        paper = match.paper
        card = paper_card(match, rank)
        papers.append(
            _paper_fields(paper)
            | {
                "rank": rank,
                "url": paper.hf_url,
                "arxiv_url": card.arxiv_url,
                "pdf_url": card.pdf_url,
                "watches": list(match.watches),
                "score": round(float(match.score), 4),
                "terms": [
                    {"field": hit.field, "term": hit.term, "start": hit.start, "end": hit.end}
                    for hit in match.hits
                ],
                "reasons": list(match.reasons),
            }
        )
    return {
        "type": PAYLOAD_TYPE,
        "subscriber": {"id": digest.subscriber.id, "name": digest.subscriber.name},
        "channel": digest.channel,
        "period": digest.period,
        "label": digest.label,
        "generated_at": _json_value(digest.generated_at),
        "total": digest.total,
        "list_url": digest.list_url,
        "papers": papers,
    }
