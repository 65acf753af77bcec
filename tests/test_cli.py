"""The command line as a user meets it: help, documented options, the quick start."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from bot.cli import main

README = (Path(__file__).parents[1] / "README.md").read_text()


def all_commands():
    yield "", main
    yield from main.commands.items()


@pytest.mark.parametrize(
    ("name", "command"), list(all_commands()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_option_is_documented_in_the_readme(name, command):
    if name:
        assert f"paperbot {name}" in README, f"the README does not mention `paperbot {name}`"
    for param in command.params:
        if isinstance(param, click.Option):
            longest = max(param.opts, key=len)
            assert longest in README, f"`{longest}` of `paperbot {name}` is not in the README"


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_has_help(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0
    assert main.commands[name].help and len(main.commands[name].help) > 20


def test_quick_start_main_job_runs_offline_and_is_idempotent(tmp_path):
    env = {"PAPERBOT_CONFIG": "", "PAPERBOT_DB": ""}
    run = [sys.executable, "-m", "bot", "run", "--once", "--offline"]
    first = subprocess.run(
        run, cwd=tmp_path, capture_output=True, text=True, env={**_env(), **env}, timeout=60
    )
    assert first.returncode == 0, first.stderr
    assert "30 papers" in first.stdout and "30 new" in first.stdout
    assert (tmp_path / "paperbot.db").exists()
    second = subprocess.run(
        run, cwd=tmp_path, capture_output=True, text=True, env={**_env(), **env}, timeout=60
    )
    assert second.returncode == 0 and "0 new" in second.stdout


def _env():
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PAPERBOT_")}


def test_bad_setting_is_one_clear_line(tmp_path):
    (tmp_path / "paperbot.toml").write_text("[hf]\ntimout = 3\n")
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "paperbot.toml"), "status"])
    assert result.exit_code == 2
    assert re.search(r"unknown key 'hf.timout': did you mean 'hf.timeout'", result.output)
    assert "Traceback" not in result.output


def test_bad_database_is_one_clear_line(tmp_path):
    bad = tmp_path / "not-a-db.db"
    bad.write_text("hello, I am not SQLite" * 100)
    result = CliRunner().invoke(main, ["--db", str(bad), "status"])
    assert result.exit_code == 4
    assert "cannot open the database" in result.output


def test_papers_filters_by_day_and_search(tmp_path):
    db = str(tmp_path / "p.db")
    runner = CliRunner()
    fixtures = Path(__file__).parent / "fixtures" / "hf"
    runner.invoke(
        main,
        [
            "--db",
            db,
            "import",
            str(fixtures / "papers_date_2024-08-01.html"),
            str(fixtures / "api_daily_papers_2026-06-12.json"),
        ],
    )
    in_2024 = runner.invoke(main, ["--db", db, "papers", "--until", "2024-12-31"])
    assert "13 papers" in in_2024.output and "The Llama 3 Herd of Models" in in_2024.output
    found = runner.invoke(
        main, ["--db", db, "papers", "--search", "sparse attention", "--since", "2026-01-01"]
    )
    assert "MiniMax Sparse Attention" in found.output and "Llama" not in found.output
    bad = runner.invoke(main, ["--db", db, "papers", "--since", "yesterday"])
    assert bad.exit_code == 2 and "YYYY-MM-DD" in bad.output
