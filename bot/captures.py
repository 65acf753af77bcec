"""Read local captures of Hugging Face responses for `paperbot import`.

Three kinds, told apart by content rather than by name:
- an API JSON array (`/api/daily_papers`, `/api/papers/search`), or one paper object;
- a saved papers page (HTML);
- JSON lines of {"date": "YYYY-MM-DD", "items": [...]}, optionally gzipped, one day a line.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path

from bot.errors import SourceError
from bot.models import Paper
from bot.sources import hf_api, hf_page

__all__ = ["Capture", "read_capture"]


@dataclass(frozen=True, slots=True)
class Capture:
    """The papers of one listing found in a file, and the day it lists."""

    papers: tuple[Paper, ...]
    day: date | None
    origin: str  # "file.jsonl.gz:12" for error messages and logs

    @property
    def seen_at(self) -> datetime:
        """Captures do not record the hour: the listing day at 00:00 UTC stands for it."""
        if self.day is None:  # only an empty listing has no day (see _dated)
            return datetime(1970, 1, 1, tzinfo=UTC)
        return datetime.combine(self.day, time(0), tzinfo=UTC)

    @property
    def source(self) -> str:
        return f"import:date={self.day.isoformat()}" if self.day else "import"


def _usual_day(papers: list[Paper]) -> date | None:
    days = Counter(p.featured_on for p in papers if p.featured_on)
    return days.most_common(1)[0][0] if days else None


_DAY_IN_NAME = re.compile(r"(?<!\d)(\d{4}-\d{2}-\d{2})(?!\d)")


def _dated(path: Path, papers: tuple[Paper, ...], day: date | None) -> Capture:
    """A capture of papers whose listing day the content may not say (old API responses lack
    submittedOnDailyAt): then the day in the file's name is the requested day."""
    if day is None and papers:
        found = _DAY_IN_NAME.search(path.name)
        try:
            day = date.fromisoformat(found.group(1)) if found else None
        except ValueError:
            day = None
        if day is None:
            raise SourceError(
                f"{path}: cannot tell which day this capture lists (its papers carry no "
                "submittedOnDailyAt): put the day in the file name, e.g. daily_papers_2024-05-27.json"
            )
        papers = tuple(p if p.featured_on else p.replace(featured_on=day) for p in papers)
    return Capture(papers, day, str(path))


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SourceError(f"cannot read {path}: {error.strerror}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:  # zlib.error: a corrupted deflate stream
            raise SourceError(f"{path} is a damaged gzip file: {error}") from None
    return data


def _json_lines(path: Path, text: str) -> Iterator[Capture]:
    # split("\n"), not splitlines(): JSON text may hold a raw U+2028 or U+0085, which
    # splitlines() would take for line ends, cutting a good line in two.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        origin = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise SourceError(f"{origin}: not a JSON line ({error})") from None
        if not isinstance(record, dict) or "items" not in record:
            raise SourceError(f'{origin}: expected {{"date": "YYYY-MM-DD", "items": [...]}}')
        try:
            day = date.fromisoformat(str(record.get("date")))
        except ValueError:
            raise SourceError(f"{origin}: 'date' is not YYYY-MM-DD") from None
        papers = hf_api.parse_items(record["items"], origin, day)
        yield Capture(tuple(papers), day, origin)


# The start of a JSON-lines record, to recognise one even when its first line is broken.
_JSON_LINE_START = re.compile(r'^\{\s*"(?:date|items)"\s*:')


def _is_json_lines(text: str) -> bool:
    first_line = text.lstrip().split("\n", 1)[0]
    try:
        record = json.loads(first_line)
    except json.JSONDecodeError:
        # A pretty-printed paper object starts with a lone "{"; a cut-short first record
        # must still be reported by file and line.
        return bool(_JSON_LINE_START.match(first_line))
    return isinstance(record, dict) and "items" in record


def read_capture(path: str | Path) -> list[Capture]:
    """Every listing in the file at `path`. Raises SourceError naming the file (and line)."""
    path = Path(path)
    data = _read_bytes(path)
    text = data.decode("utf-8", "replace")
    head = text.lstrip()[:1]
    if head == "<":
        listing = hf_page.parse_page(text, str(path))
        return [_dated(path, tuple(listing.papers), listing.day or _usual_day(list(listing.papers)))]
    if head == "[":
        papers = hf_api.parse_daily_papers(data, str(path))
        return [_dated(path, tuple(papers), _usual_day(papers))]
    if head == "{":
        if _is_json_lines(text):
            return list(_json_lines(path, text))
        paper = hf_api.parse_single_paper(data, str(path))
        return [_dated(path, (paper,), paper.featured_on)]
    raise SourceError(
        f"{path}: not a capture paperbot knows (an API JSON array, a papers page, "
        'or JSON lines of {"date", "items"})'
    )
