"""Shared test helpers: real captures, real SQLite files, settings without a config file."""

from __future__ import annotations

import difflib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.store import open_store

FIXTURES = Path(__file__).parent / "fixtures"
HF = FIXTURES / "hf"
GOLDEN = Path(__file__).parent / "golden"
SHARED_HISTORY = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "hf_daily_papers_2024-05-27_2026-03-31.jsonl.gz"
)


LEDGER_T0 = datetime(2026, 6, 12, 8, 0, tzinfo=UTC)  # when the ledger tests' digests are made


def reserve_row(
    store,
    sid="alice",
    period="2026-06-12",
    papers=("2606.1", "2606.2"),
    channel="email",
    message=None,
    packed=None,
):
    """The ledger row of a digest, its papers reserved (as reserve_delivery returns it): no message
    yet, or `message` (bytes, message id, subject) stored with them (`packed` already, maybe)."""
    return store.reserve_delivery(
        subscriber_id=sid,
        channel=channel,
        kind="email",
        period=period,
        recipient=f"{sid}@example.org",
        paper_ids=list(papers),
        window_start=LEDGER_T0 - timedelta(days=1),
        window_end=LEDGER_T0,
        now=LEDGER_T0,
        message=message,
        packed=packed,
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


class SmtpRecorder:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 that records what it accepts.

    `replies` scripts the answers to the next messages' DATA: "451 4.3.0 later", "550 5.1.1
    no such user", or "drop" (close the connection before answering the final dot, as a
    crash mid-DATA does); once they run out, every message gets 250. `rcpt_replies` answers
    RCPT TO for the addresses it names ("451 4.7.1 greylisted"), `mail_reply` every MAIL FROM.
    It offers PIPELINING, as Postfix and the big providers do, unless made with
    `pipelining=False`.
    """

    def __init__(self, pipelining: bool = True):
        self.pipelining = pipelining
        self.rcpt_replies: dict[str, str] = {}
        self.mail_reply = ""  # an answer to every MAIL FROM instead of 250 ("530 5.7.0 ...")
        self.mail_replies: list[str] = []  # answers to the next MAIL FROMs, before mail_reply
        self.replies: list[str] = []
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.sessions = 0
        self.delay = 0.0  # seconds before answering each DATA, like a slow server

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.sessions += 1
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        reply = self.mail_replies.pop(0) if self.mail_replies else self.mail_reply
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            import asyncio

            await asyncio.sleep(self.delay)
        reply = self.replies.pop(0) if self.replies else "250 2.0.0 OK"
        if reply == "drop":
            server.transport.abort()
            return "451 4.3.0 dropped"
        if reply.startswith("250"):
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return reply


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def smtp_server(request):
    """A real SMTP server on 127.0.0.1; `.port`, `.handler.messages`, `.handler.replies`.
    Parametrize it indirectly with "no pipelining" for a server that does not offer PIPELINING."""
    from aiosmtpd.controller import Controller

    handler = SmtpRecorder(pipelining=getattr(request, "param", "pipelining") == "pipelining")
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    controller.handler = handler
    try:
        yield controller
    finally:
        controller.stop()


def check_golden(name: str, actual: str) -> None:
    """Compare with tests/golden/<name>, showing a unified diff; UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(actual, encoding="utf-8", newline="\n")
        return
    if not path.exists():
        pytest.fail(f"{path} is missing: write it with UPDATE_GOLDEN=1 python -m pytest tests")
    expected = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True), actual.splitlines(keepends=True), f"golden/{name}", "now"
            )
        )
        pytest.fail(f"{name} differs from its golden file (UPDATE_GOLDEN=1 accepts the change):\n{diff}")
