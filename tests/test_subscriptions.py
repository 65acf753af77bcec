"""Subscription files: strict checking, clear errors, one bad file never stops the others."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot.cli import main
from bot.errors import SubscriptionError
from bot.signup import check_email
from bot.subscriptions import load_subscriptions, read_subscription

EXAMPLES = Path(__file__).parents[1] / "subscriptions"

GOOD = """\
name = "Bob"
email = "bob@example.org"
timezone = "America/Los_Angeles"
schedule = "weekly friday 17:30"

[[watch]]
name = "diffusion"
query = "diffusion -survey"
min_upvotes = 3
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_checked_in_examples_are_valid():
    loaded = load_subscriptions(EXAMPLES)
    assert loaded.errors == ()
    alice = next(s for s in loaded.subscribers if s.id == "example-alice")
    assert alice.timezone == "Europe/Berlin" and alice.schedule.cron == "0 8 * * *"
    assert [w.name for w in alice.watches][:2] == ["efficient attention", "RL for reasoning"]
    assert {c.kind for c in alice.channels} == {"email", "slack", "webhook"}
    assert alice.watches[1].channels == ("email", "lab-slack") and alice.watches[1].delivery == "instant"


def test_a_good_file(tmp_path):
    bob = read_subscription(write(tmp_path, "bob.toml", GOOD))
    assert bob.id == "bob" and bob.email == "bob@example.org"
    assert bob.schedule.cron == "30 17 * * fri"
    assert [c.kind for c in bob.channels] == ["email"]  # email = true is the default with an address
    assert bob.watches[0].min_upvotes == 3


def test_an_address_whose_domain_is_not_ascii_is_written_as_mail_servers_take_it(tmp_path):
    text = GOOD.replace("bob@example.org", "bob@bücher.example") + "\n[channels]\nemail = true\n"
    text += 'work = { kind = "email", to = "bob@münchen.example" }\n'
    bob = read_subscription(write(tmp_path, "bob.toml", text))
    assert bob.email == "bob@xn--bcher-kva.example"
    assert [c.target for c in bob.channels] == ["bob@xn--bcher-kva.example", "bob@xn--mnchen-3ya.example"]
    # The same as the web form makes it (IDNA 2008: "faß" stays "faß", not "fass")
    fass = read_subscription(write(tmp_path, "fass.toml", GOOD.replace("bob@example.org", "bob@faß.de")))
    assert fass.email == check_email("bob@faß.de") == "bob@xn--fa-hia.de"
    # An ASCII address is taken as written, as it always was (an intranet's .local too)
    local = read_subscription(
        write(tmp_path, "jdoe.toml", GOOD.replace("bob@example.org", "JDoe@Corp.local"))
    )
    assert local.email == "JDoe@Corp.local"


@pytest.mark.parametrize(
    ("change", "key", "line", "fix"),
    [
        (GOOD.replace("min_upvotes", "min_upvote"), "watch[0].min_upvote", 9, "did you mean 'min_upvotes'"),
        (GOOD.replace("Los_Angeles", "Los_Angles"), "timezone", 3, "America/Los_Angeles"),
        (GOOD.replace("weekly friday 17:30", "every friday"), "schedule", 4, "daily 08:00"),
        (GOOD.replace("diffusion -survey", "(diffusion"), "watch[0].query", 8, "^"),
        (GOOD.replace("min_upvotes = 3", 'min_upvotes = "three"'), "watch[0].min_upvotes", 9, "whole number"),
        (GOOD.replace('email = "bob@example.org"', 'email = "bob"'), "email", 2, "not an email address"),
        (
            GOOD.replace('email = "bob@example.org"', 'email = "bob@example.org,eve@example.org"'),
            "email",
            2,
            "not an email address",
        ),
        (
            GOOD.replace('email = "bob@example.org"', 'email = "böb@example.org"'),
            "email",
            2,
            "characters before the @-sign are not supported",
        ),
        (
            GOOD + f'\n[channels]\nwork = {{ kind = "email", to = "bob@{"ü" * 64}.example" }}\n',  # too long
            "channels.work",
            12,
            "Label too long",
        ),
        (
            GOOD + '\n[channels]\nslack = "https://hooks.slack.com/services/T0/B0/xyz"\n',
            "channels.slack",
            12,
            "${",
        ),
        (
            GOOD.replace('query = "diffusion -survey"\nmin_upvotes = 3\n', ""),
            "watch[0].query",
            None,
            "match every paper",
        ),
    ],
)
def test_errors_name_the_file_key_line_and_fix(tmp_path, change, key, line, fix):
    path = write(tmp_path, "bob.toml", change)
    with pytest.raises(SubscriptionError) as caught:
        read_subscription(path)
    error = caught.value
    assert error.path == str(path) and error.key == key
    if line:
        assert error.line == line, str(error)
    assert fix in str(error)


@pytest.mark.parametrize(
    ("tail", "line", "fix"),
    [
        ('oops = "unclosed\nname2 = 1\n', 10, "not valid TOML"),
        ("oops = [\n", 10, "ends before"),
    ],
)
def test_invalid_toml_names_the_line(tmp_path, tail, line, fix):
    path = write(tmp_path, "bob.toml", GOOD + tail)
    with pytest.raises(SubscriptionError) as caught:
        read_subscription(path)
    assert caught.value.line == line and fix in str(caught.value)
    assert f"bob.toml:{line}:" in str(caught.value)


def test_one_bad_file_is_skipped_and_the_others_work(tmp_path):
    write(tmp_path, "bob.toml", GOOD)
    write(tmp_path, "carol.toml", GOOD.replace("min_upvotes", "min_upvote"))
    shutil.copy(EXAMPLES / "example-alice.toml", tmp_path / "alice.toml")
    loaded = load_subscriptions(tmp_path)
    assert sorted(s.id for s in loaded.subscribers) == ["alice", "bob"]
    assert [Path(e.path).name for e in loaded.errors] == ["carol.toml"]


def test_cli_check_and_list(tmp_path):
    write(tmp_path, "bob.toml", GOOD)
    write(tmp_path, "carol.toml", GOOD.replace("Los_Angeles", "Nowhere"))
    runner = CliRunner()
    check = runner.invoke(main, ["--subscriptions", str(tmp_path), "subscribers", "check"])
    assert check.exit_code == 2
    assert "carol.toml" in check.output and "timezone" in check.output
    assert "1 valid" in check.output and "1 invalid" in check.output
    listed = runner.invoke(main, ["--subscriptions", str(tmp_path), "subscribers", "list"])
    assert listed.exit_code == 0
    assert "bob" in listed.output and "diffusion" in listed.output and "weekly friday 17:30" in listed.output
