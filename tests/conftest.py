"""Shared test helpers: real captures, real SQLite files, settings without a config file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.store import open_store

FIXTURES = Path(__file__).parent / "fixtures"
HF = FIXTURES / "hf"
SHARED_HISTORY = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "hf_daily_papers_2024-05-27_2026-03-31.jsonl.gz"
)


def capture_bytes(name: str) -> bytes:
    """A real Hugging Face response from tests/fixtures/hf, as bytes."""
    return (HF / name).read_bytes()


def capture_json(name: str):
    return json.loads(capture_bytes(name))


@pytest.fixture
def history_path() -> Path:
    """The 479-day history in ../shared/data; absent from a user's clone, so tests over it skip."""
    if not SHARED_HISTORY.exists():
        pytest.skip(
            f"the whole-history capture is not here ({SHARED_HISTORY}): it lives in the team's shared/"
        )
    return SHARED_HISTORY


@pytest.fixture
def store(tmp_path):
    """A real SQLite file in a temporary folder."""
    with open_store(tmp_path / "paperbot.db") as opened:
        yield opened


@pytest.fixture
def make_settings(monkeypatch, tmp_path):
    """Settings from defaults plus the given keys, with no config file and no PAPERBOT_ env."""

    def build(**values):
        environ = {f"PAPERBOT_{k.upper()}": str(v) for k, v in values.items()}
        return load_settings(None, environ=environ)

    monkeypatch.chdir(tmp_path)
    return build
