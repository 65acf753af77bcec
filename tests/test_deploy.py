"""The deployment examples in deploy/: every paperbot command in them is one the CLI accepts,
and the files are well-formed for their tools, as far as can be checked here."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import pytest

from bot.cli import main

DEPLOY = Path(__file__).parents[1] / "deploy"
FILES = sorted(p for p in DEPLOY.iterdir() if p.is_file())


def paperbot_commands(text: str) -> list[list[str]]:
    """Each `paperbot ...` invocation in a file, as argument lists (up to a shell operator)."""
    found = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for match in re.finditer(r"(?:/usr/local/bin/)?\bpaperbot\b((?: [^|>&;\n]+)?)", line):
            args = shlex.split(match.group(1))
            if args and not args[0].startswith(("-", "run", "fetch", "status")):
                continue  # the word paperbot in a name or path, not a command
            if args:
                found.append(args)
    return found


def test_there_are_examples_for_systemd_cron_and_github_actions():
    names = {p.name for p in FILES}
    assert {"paperbot.service", "paperbot-once.service", "paperbot-once.timer", "crontab"} <= names
    assert "github-actions.yml" in names


@pytest.mark.parametrize("path", [p for p in FILES if p.suffix != ".timer"], ids=lambda p: p.name)
def test_every_paperbot_command_in_the_examples_is_accepted(path):
    commands = paperbot_commands(path.read_text())
    assert commands, f"no paperbot command found in {path.name}"
    for args in commands:
        # Parse as the CLI would, without running: an unknown command or option raises here.
        context = main.make_context("paperbot", list(args))
        remaining = [*getattr(context, "_protected_args", []), *context.args]
        name, command, rest = main.resolve_command(context, remaining)
        command.make_context(name, rest, parent=context)
        assert name in ("run", "fetch", "status"), path.name


@pytest.mark.parametrize("name", ["paperbot.service", "paperbot-once.service", "paperbot-once.timer"])
def test_systemd_units_have_their_sections(name):
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string((DEPLOY / name).read_text())
    assert "Unit" in unit
    if name.endswith(".timer"):
        assert unit["Timer"]["OnCalendar"] and unit["Timer"]["Persistent"] == "true"
    else:
        assert unit["Service"]["ExecStart"].startswith("/usr/local/bin/paperbot")
    if name == "paperbot.service":
        assert unit["Service"]["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP reloads


def test_the_crontab_line_is_five_fields_and_a_command():
    lines = [
        line for line in (DEPLOY / "crontab").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert len(lines) == 1
    fields = lines[0].split(None, 5)
    assert len(fields) == 6 and fields[0] == "*/30"


def test_the_github_workflow_keeps_the_database_and_takes_secrets_from_secrets():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed; the workflow is checked as text only")
    workflow = yaml.safe_load((DEPLOY / "github-actions.yml").read_text())
    steps = workflow["jobs"]["run"]["steps"]
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("actions/cache/restore") for u in uses)
    assert any(u.startswith("actions/cache/save") for u in uses)
    env = next(s["env"] for s in steps if "env" in s)
    assert all(v.startswith("${{ secrets.") for k, v in env.items() if k != "PAPERBOT_MAIL_TRANSPORT")
